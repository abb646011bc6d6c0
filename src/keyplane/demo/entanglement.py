"""The demo's entanglement demands: packets of entangled pairs beside the key streams.

When the topology has an ``entanglement`` section, ``keyplane demo`` asks, for each pair of
applications of one owner at two different memory nodes, its node's entanglement API
(:class:`~keyplane.api.entanglement.NodeEntanglementAgent`, in process as the key streams
call their KMs in process) for packets of pairs while the key streams run, and reports
what was served: pairs with EIDs at both end nodes, their worst fidelity, the path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from keyplane.api.entanglement import NodeEntanglementAgent
from keyplane.api.errors import ApiRequestError
from keyplane.config import Topology

__all__ = ["EntanglementAsk", "entanglement_asks", "entanglement_lines",
           "entanglement_problems", "run_entanglement_asks"]


@dataclass(frozen=True)
class EntanglementAsk:
    """One demand the demo makes (the API's bounds apply)."""

    app: str
    peer_app: str
    packets: int = 20
    packet_size: int = 2
    min_fidelity: float = 0.8
    deadline_s: float = 10.0


def entanglement_asks(topo: Topology) -> list[EntanglementAsk]:
    """One demand per owner with applications at two different memory nodes."""
    if topo.entanglement is None:
        return []
    memories = topo.entanglement.memories
    asks: list[EntanglementAsk] = []
    seen: set[str] = set()
    apps = [a for a in topo.applications if a.node in memories]
    for a in apps:
        if a.owner in seen:
            continue
        peer = next((b for b in apps if b.owner == a.owner and b.node != a.node), None)
        if peer is not None:
            seen.add(a.owner)
            asks.append(EntanglementAsk(a.sae_id, peer.sae_id))
    return asks


async def _one(topo: Topology, agents: Mapping[str, NodeEntanglementAgent | None],
               ask: EntanglementAsk, timeout_s: float) -> dict[str, Any]:
    out: dict[str, Any] = {"app": ask.app, "peer_app": ask.peer_app, "packets": ask.packets,
                           "packet_size": ask.packet_size, "min_fidelity": ask.min_fidelity,
                           "deadline_s": ask.deadline_s}
    here = agents.get(topo.application(ask.app).node)
    there = agents.get(topo.application(ask.peer_app).node)
    if here is None or there is None:
        return {**out, "state": "refused", "reason": "no entanglement API at an end node"}
    try:
        rec = await here.submit(ask.app, ask.peer_app, packets=ask.packets,
                                packet_size=ask.packet_size, min_fidelity=ask.min_fidelity,
                                deadline_s=ask.deadline_s, priority=0)
        rec = await here.wait_ended(ask.app, rec.demand_id, timeout_s)
        peer = await there.wait_ended(ask.peer_app, rec.demand_id, timeout_s)
    except ApiRequestError as exc:
        reason = (exc.details or [{}])[0].get("reason", exc.message)
        return {**out, "state": "refused", "reason": str(reason)}
    except TimeoutError:
        return {**out, "state": "timeout", "reason": f"not ended within {timeout_s:g} s"}
    eids = [p.eid for p in rec.pairs]
    return {**out, "demand_id": rec.demand_id, "state": rec.state.value,
            "reason": rec.reason, "path": rec.path,
            "delivered_packets": rec.delivered_packets, "pairs": len(eids),
            "same_eids_at_both_ends": eids == [p.eid for p in peer.pairs],
            "min_pair_fidelity": min((p.fidelity for p in rec.pairs), default=None),
            "first_eids": eids[:2]}


async def run_entanglement_asks(topo: Topology,
                                agents: Mapping[str, NodeEntanglementAgent | None],
                                asks: list[EntanglementAsk], *, timeout_s: float
                                ) -> list[dict[str, Any]]:
    """Make every demand at once; what each one got (summary.json's ``entanglement``)."""
    return list(await asyncio.gather(*(_one(topo, agents, a, timeout_s) for a in asks)))


def entanglement_problems(summary: Mapping[str, Any]) -> list[str]:
    """Demands the demo made and that were not served in full, identical at both ends."""
    problems = []
    for d in summary.get("entanglement", []):
        if d.get("state") == "served" and d.get("same_eids_at_both_ends") and \
                d.get("pairs") == d["packets"] * d["packet_size"]:
            continue
        problems.append(f"entanglement {d['app']}-{d['peer_app']}: {d.get('state')} "
                        f"{d.get('reason') or ''}".rstrip())
    return problems


def entanglement_lines(summary: Mapping[str, Any]) -> list[str]:
    """What ``keyplane demo`` prints about each demand (rich markup)."""
    lines = []
    for d in summary.get("entanglement", []):
        colour = "green" if d["state"] == "served" else "red"
        head = f"[{colour}]entanglement {d['app']}-{d['peer_app']}[/{colour}] {d['state']}"
        if d["state"] != "served":
            lines.append(f"{head} {d.get('reason', '')}")
            continue
        lines.append(f"{head} path {' -> '.join(d['path'])}: {d['pairs']} pairs in "
                     f"{d['delivered_packets']} packets of {d['packet_size']}, EIDs identical "
                     f"at both ends: {d['same_eids_at_both_ends']}, worst fidelity "
                     f"{d['min_pair_fidelity']:.3f} (min {d['min_fidelity']})")
    return lines
