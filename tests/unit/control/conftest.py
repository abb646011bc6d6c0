"""Fixtures of the control-plane tests (topology in tests/support/control.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from keyplane.clock import VirtualClock
from keyplane.config import Topology, parse_topology
from keyplane.events import EventStream, MemorySink
from keyplane.store import Database, sqlite_url
from tests.support.control import TOPOLOGY


@pytest.fixture
def topology() -> Topology:
    return parse_topology(TOPOLOGY, "control-test")


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
def events(clock: VirtualClock, sink: MemorySink) -> EventStream:
    return EventStream(clock, [sink])


@pytest.fixture
async def sqlite_db(tmp_path) -> AsyncIterator[Database]:  # type: ignore[no-untyped-def]
    """A SQLite store for tests whose subject is not the store (the bus-facing ones)."""
    database = await Database.open(sqlite_url(tmp_path / "control.db"))
    try:
        yield database
    finally:
        await database.close()
