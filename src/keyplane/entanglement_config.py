"""The topology file's ``entanglement`` section: repeater-chain links and quantum memories.

Entanglement is the second network resource (docs/quantum-networking.md): the same topology
file that describes the key-stream network names which nodes hold quantum memories (trusted
nodes as end nodes, untrusted ``repeater`` nodes in between) and which fibres distribute
entanglement. A link whose id is also a key link's shares that fibre: an alarm the
Monitoring Element raises on it takes it out of both services.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["EntanglementLinkConfig", "EntanglementSection"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class EntanglementLinkConfig(_Model):
    """A heralded elementary link between two memory nodes (midpoint station)."""

    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] | None \
        = None
    """Link id (default ``<a>-<b>``); a key link's id when the fibre is shared."""
    endpoints: tuple[str, str]
    """The two memory nodes (trusted nodes or untrusted repeaters)."""
    length_km: Annotated[float, Field(gt=0.0, le=1000.0)]
    """Fibre length between the two memories, km."""
    attenuation_db_per_km: Annotated[float, Field(ge=0.0)] = 0.2
    """Fibre loss, dB/km."""
    detector_efficiency: Annotated[float, Field(gt=0.0, le=1.0)] = 0.9
    """Heralding detector efficiency (each arm)."""
    repetition_rate_hz: Annotated[float, Field(gt=0.0)] = 1e6
    """Attempt rate of the sources, Hz."""
    initial_fidelity: Annotated[float, Field(gt=0.5, le=1.0)] = 0.97
    """Fidelity of a freshly heralded pair."""

    @property
    def link_id(self) -> str:
        """The given ``id`` or ``"<a>-<b>"``."""
        return self.id or f"{self.endpoints[0]}-{self.endpoints[1]}"

    @model_validator(mode="after")
    def _check(self) -> EntanglementLinkConfig:
        if self.endpoints[0] == self.endpoints[1]:
            raise ValueError("a link needs two different endpoints")
        return self


class EntanglementSection(_Model):
    """Where the entanglement service may generate, store and swap pairs."""

    memories: dict[str, Annotated[int, Field(ge=1, le=1024)]]
    """Quantum memories per node (nodes absent hold none and are unusable)."""
    links: list[EntanglementLinkConfig] = Field(default_factory=list)
    """The elementary links."""
    coherence_time_s: Annotated[float, Field(gt=0.0)] = 1.0
    """Memory coherence time (depolarizing), s."""
    swap_probability: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    """Success probability of an entanglement swap at a repeater."""
    slot_s: Annotated[float, Field(gt=0.0)] = 0.01
    """Length of one schedule slot, s."""
    period_slots: Annotated[int, Field(ge=1)] = 100
    """Slots per computed schedule (one period)."""
    fibre_key_share_min: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    """Share of every period a fibre shared with a key link always keeps for the key
    streams, whatever their reservations (docs/quantum-networking.md, "Shared fibre")."""
