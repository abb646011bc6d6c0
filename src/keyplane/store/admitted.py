"""Admission Control's live sessions in the store (table ``admitted_sessions``).

Admission Control keeps its sessions in memory and mirrors each admitted one here, so a
restarted control plane recovers them (docs/control.md, "Controller restart"). Functions
take a :class:`~keyplane.store.db.Database` and exchange :class:`AdmittedSession` records,
never ORM rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane.store.db import Database
from keyplane.store.models import AdmittedSessionRow

__all__ = [
    "AdmittedSession",
    "AdmittedWrite",
    "delete_admitted_session",
    "load_admitted_sessions",
    "save_admitted_session",
    "touch_admitted_session",
    "write_admitted_sessions",
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
    async with db.session() as s:
        await _save(s, rec, wall)


async def _save(s: AsyncSession, rec: AdmittedSession, wall: float) -> None:
    figures = {name: getattr(rec, name) for name in _FIGURES}
    figures["path"] = list(rec.path)
    row = await s.get(AdmittedSessionRow, rec.session_id)
    if row is None:
        s.add(AdmittedSessionRow(session_id=rec.session_id, created_wall=wall,
                                 updated_wall=wall, last_keepalive_wall=wall, **figures))
        await s.flush()  # a later change of this batch finds the row
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
        await _touch(s, session_id, wall)


async def _touch(s: AsyncSession, session_id: str, wall: float) -> None:
    row = await s.get(AdmittedSessionRow, session_id)
    if row is not None:
        row.last_keepalive_wall = max(row.last_keepalive_wall, wall)


async def delete_admitted_session(db: Database, session_id: str) -> None:
    """Forget a session (no-op if unknown).

    Raises:
        StoreError: the database failed.
    """
    async with db.session() as s:
        await _delete(s, session_id)


async def _delete(s: AsyncSession, session_id: str) -> None:
    row = await s.get(AdmittedSessionRow, session_id)
    if row is not None:
        await s.delete(row)
        await s.flush()  # a later save of this batch inserts it again


AdmittedWrite = tuple[Literal["save"], AdmittedSession, float] | tuple[
    Literal["touch"], str, float] | tuple[Literal["delete"], str, float]
"""One change: ``("save", record, wall)``, ``("touch", session_id, wall)`` or
``("delete", session_id, wall)``; ``wall`` is when the change was decided."""


async def write_admitted_sessions(db: Database, writes: Sequence[AdmittedWrite]) -> None:
    """Apply ``writes`` in order in one transaction (Admission Control's writer: one commit
    for many sessions' changes instead of one each, so the store keeps pace with thousands
    of sessions opened at once).

    Raises:
        StoreError: the database failed (none of ``writes`` is applied).
    """
    async with db.session() as s:
        for w in writes:
            if w[0] == "save":
                await _save(s, w[1], w[2])
            elif w[0] == "touch":
                await _touch(s, w[1], w[2])
            else:
                await _delete(s, w[1])


async def load_admitted_sessions(db: Database) -> list[AdmittedSession]:
    """Every stored session, oldest first.

    Raises:
        StoreError: the database failed.
    """
    async with db.session() as s:
        rows = (await s.execute(select(AdmittedSessionRow).order_by(
            AdmittedSessionRow.created_wall, AdmittedSessionRow.session_id))).scalars().all()
        return [_record(r) for r in rows]
