"""The paper's two control-plane databases: users/SLA profiles and topology + link metrics.

Functions take a :class:`~keyplane.store.db.Database` and return plain pydantic/config
objects, never ORM rows, so callers cannot mutate the database by accident.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from keyplane.config import Application, SlaProfile, Topology, User
from keyplane.store.db import Database
from keyplane.store.models import ApplicationRow, LinkMetricRow, LinkRow, NodeRow, UserRow

__all__ = [
    "LinkMetrics",
    "StoredLink",
    "delete_link",
    "get_application",
    "get_link_metrics",
    "get_user",
    "get_user_by_subject",
    "get_user_by_token",
    "load_node_endpoints",
    "load_registered_links",
    "load_topology_into",
    "save_link",
    "save_node_endpoints",
    "token_digest",
    "upsert_link_metrics",
    "upsert_link_metrics_many",
]


def token_digest(token: str) -> str:
    """SHA-256 hex of an access token: the database never holds tokens in clear."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class LinkMetrics:
    """Latest monitored figures of a link (``None``: never measured)."""

    link_id: str
    t: float = 0.0
    state: str = "up"
    skr_bps: float | None = None
    qber: float | None = None
    sessions: int = 0
    buffer_bits: int = 0
    reserved_bps: float = 0.0


async def load_topology_into(db: Database, topo: Topology) -> None:
    """Replace nodes, links, users and applications with the topology file's.

    Link metrics of links that still exist are kept.
    """
    async with db.session() as s:
        await s.execute(delete(ApplicationRow))
        await s.execute(delete(UserRow))
        link_ids = [link.link_id for link in topo.links]
        await s.execute(delete(LinkMetricRow).where(LinkMetricRow.link_id.not_in(link_ids)))
        await s.execute(delete(LinkRow).where(LinkRow.id.not_in(link_ids)))
        await s.execute(delete(NodeRow).where(NodeRow.id.not_in([n.id for n in topo.nodes])))
        for n in topo.nodes:
            await s.merge(NodeRow(id=n.id, name=n.name, address=n.address))
        await s.flush()
        for link in topo.links:
            params = link.model_dump(mode="json", exclude={"id", "endpoints", "enabled"})
            await s.merge(LinkRow(id=link.link_id, node_a=link.endpoints[0],
                                  node_b=link.endpoints[1], kind="PHYS", enabled=link.enabled,
                                  params=params))
        for u in topo.users:
            s.add(UserRow(id=u.id, certificate_subject=u.certificate_subject,
                          token_sha256=token_digest(u.token) if u.token else None,
                          sla=u.sla.model_dump(mode="json")))
        await s.flush()
        for a in topo.applications:
            s.add(ApplicationRow(sae_id=a.sae_id, owner=a.owner, node=a.node))


def _user(row: UserRow) -> User:
    return User(id=row.id, certificate_subject=row.certificate_subject,
                sla=SlaProfile.model_validate(row.sla))


async def get_user(db: Database, user_id: str) -> User | None:
    """The user with ``user_id``, or None."""
    async with db.session() as s:
        row = await s.get(UserRow, user_id)
        return _user(row) if row else None


async def get_user_by_subject(db: Database, subject: str) -> User | None:
    """The user whose certificate subject is ``subject``, or None."""
    async with db.session() as s:
        row = (await s.execute(select(UserRow).where(UserRow.certificate_subject == subject))
               ).scalar_one_or_none()
        return _user(row) if row else None


async def get_user_by_token(db: Database, token: str) -> User | None:
    """The user holding access token ``token``, or None."""
    async with db.session() as s:
        row = (await s.execute(select(UserRow).where(UserRow.token_sha256 == token_digest(token)))
               ).scalar_one_or_none()
        return _user(row) if row else None


async def get_application(db: Database, sae_id: str) -> Application | None:
    """The application with ``sae_id``, or None."""
    async with db.session() as s:
        row = await s.get(ApplicationRow, sae_id)
        return Application(sae_id=row.sae_id, owner=row.owner, node=row.node) if row else None


async def upsert_link_metrics(db: Database, m: LinkMetrics) -> None:
    """Write the latest figures of a link."""
    async with db.session() as s:
        await s.merge(LinkMetricRow(link_id=m.link_id, t=m.t, state=m.state, skr_bps=m.skr_bps,
                                    qber=m.qber, sessions=m.sessions, buffer_bits=m.buffer_bits,
                                    reserved_bps=m.reserved_bps))


async def upsert_link_metrics_many(db: Database, metrics: Iterable[LinkMetrics]) -> None:
    """Write the latest figures of several links in one statement and one transaction.

    Raises:
        StoreError: the database failed (nothing written).
    """
    values = [{"link_id": m.link_id, "t": m.t, "state": m.state, "skr_bps": m.skr_bps,
               "qber": m.qber, "sessions": m.sessions, "buffer_bits": m.buffer_bits,
               "reserved_bps": m.reserved_bps} for m in metrics]
    if not values:
        return
    ins = (pg_insert if db.dialect == "postgresql" else sqlite_insert)(LinkMetricRow)
    stmt = ins.on_conflict_do_update(
        index_elements=[LinkMetricRow.link_id],
        set_={k: ins.excluded[k] for k in values[0] if k != "link_id"})
    async with db.session() as s:
        await s.execute(stmt, values)


async def get_link_metrics(db: Database) -> dict[str, LinkMetrics]:
    """Latest figures of every measured link."""
    async with db.session() as s:
        rows = (await s.execute(select(LinkMetricRow))).scalars().all()
        return {r.link_id: LinkMetrics(link_id=r.link_id, t=r.t, state=r.state, skr_bps=r.skr_bps,
                                       qber=r.qber, sessions=r.sessions,
                                       buffer_bits=r.buffer_bits, reserved_bps=r.reserved_bps)
                for r in rows}


@dataclass(frozen=True)
class StoredLink:
    """A link row of the topology database (the SDN Controller's registry)."""

    link_id: str
    node_a: str
    node_b: str
    kind: str = "PHYS"
    enabled: bool = True
    params: dict[str, Any] = field(default_factory=dict)


async def save_link(db: Database, link: StoredLink) -> None:
    """Insert or replace a link.

    Raises:
        StoreError: the database failed (e.g. an endpoint is not a known node).
    """
    async with db.session() as s:
        await s.merge(LinkRow(id=link.link_id, node_a=link.node_a, node_b=link.node_b,
                              kind=link.kind, enabled=link.enabled, params=dict(link.params)))


async def delete_link(db: Database, link_id: str) -> None:
    """Forget a link (no-op if unknown).

    Raises:
        StoreError: the database failed.
    """
    async with db.session() as s:
        row = await s.get(LinkRow, link_id)
        if row is not None:
            await s.delete(row)


async def load_registered_links(db: Database) -> list[StoredLink]:
    """PHYS links registered at run time (``params.registered``), not from the topology file.

    Raises:
        StoreError: the database failed.
    """
    async with db.session() as s:
        rows = (await s.execute(select(LinkRow).where(LinkRow.kind == "PHYS"))).scalars().all()
        return [StoredLink(r.id, r.node_a, r.node_b, r.kind, r.enabled, dict(r.params or {}))
                for r in rows if (r.params or {}).get("registered")]


async def load_node_endpoints(db: Database) -> dict[str, dict[str, str]]:
    """The interface URLs each node last announced (nodes that announced any).

    Raises:
        StoreError: the database failed.
    """
    async with db.session() as s:
        return {r.id: dict(r.endpoints) for r in
                (await s.execute(select(NodeRow))).scalars().all() if r.endpoints}


async def save_node_endpoints(db: Database, node: str, endpoints: Mapping[str, str]) -> bool:
    """Record the interface URLs ``node`` announced; False if the node is not stored.

    Raises:
        StoreError: the database failed.
    """
    async with db.session() as s:
        row = await s.get(NodeRow, node)
        if row is None:
            return False
        row.endpoints = dict(endpoints)
        return True
