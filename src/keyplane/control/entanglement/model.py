"""The entanglement service's vocabulary: demands, packets of entanglement, EIDs, resources.

A **demand** (QIA prototype, Beauchamp et al., arXiv:2503.12582) asks for ``packets``
packets of entanglement between two end nodes, each packet ``packet_size`` entangled pairs
that coexist, every pair of fidelity at least ``min_fidelity`` when the packet is complete,
all packets before ``deadline_s`` after submission. Each delivered pair carries an
**entanglement identifier** (EID, ITU-T Y Suppl. 98 §8.3) beside the classical identifiers
(demand id, nodes), so applications and operators can track a pair and its quality.

**Resources** are what the scheduler grants: each quantum link able to distribute
entanglement (an elementary link of a repeater chain), exclusively, and each node's quantum
memories, by count. A path through a repeater holds two of its memories; an end node holds
``packet_size`` (the pairs of a packet coexist).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from keyplane.physical.repeater import ElementaryLink

__all__ = [
    "DemandOutcome",
    "DemandState",
    "EntangledPair",
    "EntanglementDemand",
    "EntanglementLink",
    "EntanglementNetwork",
    "new_eid",
]


class EntanglementDemand(BaseModel):
    """An application's request for packets of entanglement (the wire and API model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    demand_id: Annotated[str, Field(min_length=1, max_length=128)]
    node_a: Annotated[str, Field(min_length=1)]
    node_b: Annotated[str, Field(min_length=1)]
    packets: Annotated[int, Field(ge=1, le=100_000)] = 1
    packet_size: Annotated[int, Field(ge=1, le=64)] = 1
    min_fidelity: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.8
    deadline_s: Annotated[float, Field(gt=0.0)] = 10.0
    priority: Annotated[int, Field(ge=0, le=7)] = 0
    app_a: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    """The application (SAE id) at ``node_a`` that asked, when a node's API submitted it
    for one (its verified identity); None for demands of control-plane elements."""
    app_b: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    """The peer application at ``node_b`` its pairs are for (None: any at that node)."""


class DemandState(StrEnum):
    """Where a demand is: ``admitted`` (scheduled), then ``served`` or ``missed``; or
    ``refused`` at submission."""

    admitted = "admitted"
    refused = "refused"
    served = "served"
    missed = "missed"


@dataclass(frozen=True)
class EntangledPair:
    """One delivered entangled pair, as both end nodes' applications see it."""

    eid: str
    demand_id: str
    packet: int
    node_a: str
    node_b: str
    fidelity: float
    delivered_t: float


def new_eid() -> str:
    """A fresh entanglement identifier (time-ordered UUID text, prefixed ``eid-``)."""
    return f"eid-{uuid.uuid4()}"


@dataclass(frozen=True)
class DemandOutcome:
    """How a demand ended (or why it was refused)."""

    demand_id: str
    state: DemandState
    reason: str = ""
    delivered_packets: int = 0


@dataclass(frozen=True)
class EntanglementLink:
    """A link able to distribute entanglement, with its physics."""

    link_id: str
    node_a: str
    node_b: str
    physics: ElementaryLink


@dataclass
class EntanglementNetwork:
    """The resources the scheduler may grant: links and per-node memory counts.

    Args:
        links: entanglement-capable links by id.
        memories: quantum memories per node (nodes absent: none, so they are unusable).
        coherence_time_s: memory coherence time, per node (default for absent nodes).
        swap_probability, swap_gate_werner: repeater node swap parameters.
    """

    links: dict[str, EntanglementLink] = field(default_factory=dict)
    memories: dict[str, int] = field(default_factory=dict)
    coherence_time_s: float = 1.0
    swap_probability: float = 1.0
    swap_gate_werner: float = 0.99
    down: set[str] = field(default_factory=set)
    """Links out of service (alarms from the Monitoring Element, cuts)."""
    shared: frozenset[str] = frozenset()
    """Links whose fibre also carries a key stream (a QKD link of the same id)."""
    key_share: dict[str, float] = field(default_factory=dict)
    """Per shared link, the share of its time the key streams' reservations need."""
    key_share_min: float = 0.0
    """The share of every shared fibre the key streams keep in any case."""

    def entanglement_window(self, link_id: str, period_slots: int) -> int:
        """How many leading slots of every period entanglement may use on ``link_id``
        (time-division of a shared fibre: the key streams keep the rest; every slot
        of an unshared link)."""
        if link_id not in self.shared:
            return period_slots
        keys = min(1.0, max(self.key_share_min, self.key_share.get(link_id, 0.0), 0.0))
        return max(0, math.floor((1.0 - keys) * period_slots + 1e-9))

    def fibre_slot(self, link_id: str, t: float, slot_s: float, period_slots: int) -> bool:
        """Whether the slot starting at ``t`` of ``link_id`` belongs to entanglement.

        Slots are numbered on absolute time (``round(t / slot_s)``), so a re-planned
        schedule keeps the same division and never hands a key-stream slot out."""
        if link_id not in self.shared:
            return True
        k = math.floor(t / slot_s + 0.5)
        return k % period_slots < self.entanglement_window(link_id, period_slots)
