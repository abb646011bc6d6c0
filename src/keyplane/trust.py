"""Trust in the topology: untrusted nodes, trusted relays, who could have learned a key.

ITU-T Y Suppl. 98 (clause 9) orders QKD networks by what their intermediate nodes must be
trusted with. keyplane's key managers are *trusted* nodes: a key relayed through one is in
the clear there. Measurement stations (MDI-QKD, TF-QKD), entanglement sources (BBM92) and
repeaters are *untrusted* nodes: they sit in the middle of a link, hold no key and cannot
learn it, so a link through one still joins its two key managers directly.

Decisions:

* Untrusted nodes are listed apart from ``nodes`` (``untrusted_nodes`` in the topology file):
  every consumer of ``nodes`` starts a key manager, certificates and a bus account for each
  one, and an untrusted node must have none of them.
* A path's *trusted relays* are its intermediate key managers; an SLA's
  ``max_trusted_relays`` caps their number (0: end-to-end keys only over single links,
  point-to-point, measurement-assisted or entanglement-based).
* The nodes that *could have learned* a key are exactly the key managers of the hops its
  provenance records (``"<sender>-><receiver>"``): the endpoints and every trusted relay.
  A link's station never appears there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from keyplane.config import Topology

__all__ = ["STATION_ROLE", "UntrustedNode", "exposed_nodes", "trust_problems",
           "trusted_relays"]

STATION_ROLE = {"mdi-qkd": "measurement-station", "tf-qkd": "measurement-station",
                "bbm92": "entanglement-source"}
"""The untrusted node each measured protocol puts in the middle of its link."""


class UntrustedNode(BaseModel):
    """A node in the middle of a link that never holds key.

    A link names it with ``station`` (:class:`keyplane.config.QuantumLink`); routing never
    counts it as a trusted relay, and it is never among the nodes a key is exposed to.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    """Node id, unique among all nodes (trusted and untrusted)."""
    name: str = ""
    """Free-text display name."""
    role: Literal["measurement-station", "entanglement-source", "repeater"]
    """What it does: the Bell-state measurement of MDI-QKD / TF-QKD, the pair source of
    BBM92, or a quantum repeater."""


def trusted_relays(path: Sequence[str]) -> tuple[str, ...]:
    """The trusted relays of a key-manager path: every node but the two ends."""
    return tuple(path[1:-1])


def exposed_nodes(provenance: Iterable[Mapping[str, str]]) -> list[str]:
    """The key managers that could have learned a key, in path order.

    Args:
        provenance: the key's hop records (``{"hop": "a->b", "source": …}``), as
            :mod:`keyplane.keymanager.hybrid` describes them; malformed records are skipped.
    """
    out: dict[str, None] = {}
    for record in provenance:
        hop = record.get("hop") if isinstance(record, Mapping) else None
        if not isinstance(hop, str) or "->" not in hop:
            continue
        sender, _, receiver = hop.partition("->")
        out.setdefault(sender)
        out.setdefault(receiver)
    return list(out)


def trust_problems(topology: Topology, node_ids: set[str]) -> list[str]:
    """The topology's trust cross-reference errors, each prefixed with the field's path:
    untrusted ids that clash with trusted ones, unknown or ill-suited link stations, and
    entanglement memories or links on unknown nodes."""
    problems: list[str] = []
    untrusted = {u.id: u for u in topology.untrusted_nodes}
    for i, u in enumerate(topology.untrusted_nodes):
        if u.id in node_ids:
            problems.append(f"untrusted_nodes[{i}].id: {u.id!r} is also a trusted node")
    for i, link in enumerate(topology.links):
        if link.station is None:
            continue
        if link.station not in untrusted:
            problems.append(f"links[{i}].station: unknown untrusted node {link.station!r}")
            continue
        need = STATION_ROLE[link.protocol.removesuffix("-analytic")]
        if untrusted[link.station].role != need:
            problems.append(f"links[{i}].station: {link.station!r} is a "
                            f"{untrusted[link.station].role}, protocol {link.protocol} "
                            f"needs a {need}")
    if topology.entanglement is not None:
        known = node_ids | set(untrusted)
        for node in topology.entanglement.memories:
            if node not in known:
                problems.append(f"entanglement.memories: unknown node {node!r}")
        for i, elink in enumerate(topology.entanglement.links):
            for end in elink.endpoints:
                if end not in known:
                    problems.append(f"entanglement.links[{i}].endpoints: unknown node {end!r}")
    return problems
