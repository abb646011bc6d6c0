"""Admission Control's live sessions in the store (table ``admitted_sessions``).

Admission Control keeps its sessions in memory and mirrors each admitted one here, so a
restarted control plane recovers them (docs/control.md, "Controller restart"). Functions
take a :class:`~keyplane.store.db.Database` and exchange :class:`AdmittedSession` records,
never ORM rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select

from keyplane.store.db import Database
from keyplane.store.models import AdmittedSessionRow

__all__ = [
    "AdmittedSession",
    "delete_admitted_session",
    "load_admitted_sessions",
    "save_admitted_session",
    "touch_admitted_session",
]

_FIGURES = ("state", "interface", "source_sae", "destination_sae", "source_node",
            "destination_node", "initiator", "responder", "path", "epoch", "route_epoch",
            "min_bps", "rate_bps", "priority", "idle_timeout_s", "key_chunk_size",
            "bucket_size_bits", "hybrid_policy")


@dataclass(frozen=True)
class AdmittedSession:
    """One admitted session as stored (see :class:`~keyplane.store.models.AdmittedSessionRow`).

    ``initiator`` / ``responder`` are JSON objects with the keys ``node``, ``user_id``,
    ``sae_id``, ``peer_sae``, ``qos``, ``opened_as`` and ``sla``. The ``*_wall`` times are
    set by the store (0 in a record not read from it).
    """

    session_id: str
    interface: str
    source_sae: str
    destination_sae: str
    source_node: str
    destination_node: str
    initiator: dict[str, Any]
    path: tuple[str, ...]
    epoch: int
    route_epoch: int
    min_bps: float
    rate_bps: float
    priority: int
    idle_timeout_s: float
    key_chunk_size: int
    bucket_size_bits: int
    hybrid_policy: str
    responder: dict[str, Any] | None = None
    state: Literal["active", "terminated"] = "active"
    created_wall: float = 0.0
    updated_wall: float = 0.0
    last_keepalive_wall: float = 0.0


def _record(row: AdmittedSessionRow) -> AdmittedSession:
    return AdmittedSession(
        session_id=row.session_id, interface=row.interface, source_sae=row.source_sae,
        destination_sae=row.destination_sae, source_node=row.source_node,
        destination_node=row.destination_node, initiator=dict(row.initiator),
        responder=dict(row.responder) if row.responder else None, path=tuple(row.path),
        epoch=row.epoch, route_epoch=row.route_epoch, min_bps=row.min_bps,
        rate_bps=row.rate_bps, priority=row.priority, idle_timeout_s=row.idle_timeout_s,
        key_chunk_size=row.key_chunk_size, bucket_size_bits=row.bucket_size_bits,
        hybrid_policy=row.hybrid_policy,
        state="terminated" if row.state == "terminated" else "active",
        created_wall=row.created_wall, updated_wall=row.updated_wall,
        last_keepalive_wall=row.last_keepalive_wall)


async def save_admitted_session(db: Database, rec: AdmittedSession, *, wall: float) -> None:
    """Insert or update ``rec`` (stamped ``wall``; a new row's keep-alive time is ``wall``).

    Raises:
        StoreError: the database failed.
    """
    figures = {name: getattr(rec, name) for name in _FIGURES}
    figures["path"] = list(rec.path)
    async with db.session() as s:
        row = await s.get(AdmittedSessionRow, rec.session_id)
        if row is None:
            s.add(AdmittedSessionRow(session_id=rec.session_id, created_wall=wall,
                                     updated_wall=wall, last_keepalive_wall=wall, **figures))
            return
        for name, value in figures.items():
            setattr(row, name, value)
        row.updated_wall = wall


async def touch_admitted_session(db: Database, session_id: str, *, wall: float) -> None:
    """Record a keep-alive at ``wall`` (no-op for an unknown session).

    Raises:
        StoreError: the database failed.
    """
    async with db.session() as s:
        row = await s.get(AdmittedSessionRow, session_id)
        if row is not None:
            row.last_keepalive_wall = max(row.last_keepalive_wall, wall)


async def delete_admitted_session(db: Database, session_id: str) -> None:
    """Forget a session (no-op if unknown).

    Raises:
        StoreError: the database failed.
    """
    async with db.session() as s:
        row = await s.get(AdmittedSessionRow, session_id)
        if row is not None:
            await s.delete(row)


async def load_admitted_sessions(db: Database) -> list[AdmittedSession]:
    """Every stored session, oldest first.

    Raises:
        StoreError: the database failed.
    """
    async with db.session() as s:
        rows = (await s.execute(select(AdmittedSessionRow).order_by(
            AdmittedSessionRow.created_wall, AdmittedSessionRow.session_id))).scalars().all()
        return [_record(r) for r in rows]
