"""Admission Control's store writes: many sessions' changes in one transaction, in order,
and a change that fails costs only itself (issue #15: the writer kept pace with 10,000
sessions opened at once only once it stopped committing each change alone)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from keyplane.bus import MemoryBus
from keyplane.clock import VirtualClock
from keyplane.control.admission import AdmissionControl
from keyplane.errors import StoreError
from keyplane.events import EventStream
from keyplane.store import Database
from keyplane.store.admitted import (
    AdmittedSession,
    load_admitted_sessions,
    write_admitted_sessions,
)


def _admitted(session_id: str, **changes: object) -> AdmittedSession:
    base = AdmittedSession(
        session_id=session_id, interface="etsi004", source_sae="sae0", destination_sae="sae1",
        source_node="km0", destination_node="km1",
        initiator={"node": "km0", "user_id": "alice", "sae_id": "sae0", "peer_sae": "sae1",
                   "opened_as": session_id, "qos": {}, "sla": {}},
        path=("km0", "km1"), epoch=0, route_epoch=0, min_bps=100.0, rate_bps=1000.0,
        priority=3, idle_timeout_s=20.0, key_chunk_size=32, bucket_size_bits=1000,
        hybrid_policy="qkd-only")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


BAD = _admitted("bad", initiator={"not json": object()})


async def test_admitted_writes_apply_in_order_in_one_batch(sqlite_db: Database) -> None:
    await write_admitted_sessions(sqlite_db, [
        ("save", _admitted("s1"), 100.0), ("save", _admitted("s2"), 101.0),
        ("touch", "s1", 103.0), ("save", _admitted("s1", epoch=1), 104.0),
        ("delete", "s2", 105.0), ("save", _admitted("s2", epoch=7), 106.0),
        ("save", _admitted("s3"), 107.0), ("delete", "s3", 108.0), ("touch", "s3", 109.0)])
    s1, s2 = await load_admitted_sessions(sqlite_db)
    assert s1 == _admitted("s1", epoch=1, created_wall=100.0, updated_wall=104.0,
                           last_keepalive_wall=103.0)
    assert s2 == _admitted("s2", epoch=7, created_wall=106.0, updated_wall=106.0,
                           last_keepalive_wall=106.0)  # deleted, then a new row


async def test_admitted_writes_batch_that_fails_changes_nothing(sqlite_db: Database) -> None:
    with pytest.raises(StoreError):
        await write_admitted_sessions(sqlite_db, [("save", _admitted("s1"), 100.0),
                                                  ("save", BAD, 101.0)])
    assert await load_admitted_sessions(sqlite_db) == []


async def test_admission_writer_loses_only_the_change_that_fails(
        sqlite_db: Database, clock: VirtualClock, events: EventStream) -> None:
    bus = MemoryBus()
    ac = AdmissionControl(bus, sqlite_db, clock, events)
    for w in (("save", _admitted("s1"), 1.0), ("save", BAD, 2.0),
              ("save", _admitted("s2"), 3.0), ("delete", "s1", 4.0)):
        ac._writes.put_nowait(w)  # type: ignore[arg-type]
    writer = asyncio.create_task(ac._write_loop())
    try:
        await ac._writes.join()
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await bus.close()
    assert [r.session_id for r in await load_admitted_sessions(sqlite_db)] == ["s2"]
