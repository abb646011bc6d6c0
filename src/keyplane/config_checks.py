"""The topology's cross-reference checks, kept apart from the models they check.

:class:`keyplane.config.Topology` calls :func:`topology_problems` on load and reports every
problem at once (a file with two errors names both), so ``keyplane validate`` catches what
would fail at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keyplane.trust import trust_problems

if TYPE_CHECKING:
    from keyplane.config import Topology

__all__ = ["topology_problems"]


def topology_problems(topo: Topology) -> list[str]:
    """Every broken cross-reference of ``topo`` (empty: none), each with its field path."""
    problems: list[str] = []
    node_ids = _unique("nodes", [n.id for n in topo.nodes], problems)
    _unique("untrusted_nodes", [u.id for u in topo.untrusted_nodes], problems)
    problems += trust_problems(topo, node_ids)
    _unique("links", [link.link_id for link in topo.links], problems)
    user_ids = _unique("users", [u.id for u in topo.users], problems)
    _unique("applications", [a.sae_id for a in topo.applications], problems)
    pairs: set[frozenset[str]] = set()
    for i, link in enumerate(topo.links):
        for end in link.endpoints:
            if end not in node_ids:
                problems.append(f"links[{i}].endpoints: unknown node {end!r}")
        pair = frozenset(link.endpoints)
        if pair in pairs:
            problems.append(f"links[{i}].endpoints: a second link between the same nodes")
        pairs.add(pair)
    taken: dict[tuple[str, int], str] = {}
    for i, node in enumerate(topo.nodes):
        for server, port in node.ports.model_dump().items():
            if port is None:
                continue
            where = f"nodes[{i}].ports.{server}"
            other = taken.setdefault((node.address, port), where)
            if other != where:
                problems.append(f"{where}: port {port} on {node.address} is also {other}")
    sae_ids = {a.sae_id for a in topo.applications}
    owners = {a.owner for a in topo.applications}
    for i, app in enumerate(topo.applications):
        if app.node not in node_ids:
            problems.append(f"applications[{i}].node: unknown node {app.node!r}")
        if app.owner not in user_ids:
            problems.append(f"applications[{i}].owner: unknown user {app.owner!r}")
    if topo.etsi015.teraflowsdn is not None:
        for tfs_node in topo.etsi015.teraflowsdn.ports:
            if tfs_node not in node_ids:
                problems.append(f"etsi015.teraflowsdn.ports: unknown node {tfs_node!r}")
    for i, user in enumerate(topo.users):
        for peer in user.sla.allowed_peers:
            if peer != "*" and peer not in sae_ids:
                problems.append(
                    f"users[{i}].sla.allowed_peers: unknown application {peer!r}")
        owned = {a.sae_id for a in topo.applications if a.owner == user.id}
        for sae in user.sla.applications:
            if sae not in owned:
                problems.append(f"users[{i}].sla.applications: {sae!r} is not an "
                                f"application of {user.id!r}")
        if user.id in owners and not user.certificate_subject:
            problems.append(
                f"users[{i}].certificate_subject: user {user.id!r} owns applications but "
                "has no certificate_subject; the subject of a verified TLS client "
                "certificate is the only identity a key manager accepts")
    return problems


def _unique(what: str, ids: list[str], problems: list[str]) -> set[str]:
    seen: set[str] = set()
    for i, x in enumerate(ids):
        if x in seen:
            problems.append(f"{what}[{i}]: duplicate id {x!r}")
        seen.add(x)
    return seen
