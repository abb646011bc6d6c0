"""A database that cannot be reached fails as the store's own error, never as a driver's
(issue #14.6, the PostgreSQL outage of the fault matrix).

A refused connection comes out of asyncpg as a bare ``ConnectionRefusedError``, which
SQLAlchemy does not wrap. It used to leave ``store/`` as it was and end the loops of every
caller that expects :class:`~keyplane.errors.StoreError`: the Monitoring Element's figures
loop died at the first write of the outage, so the Routing Element kept the last figures it
had (a link with no rate and no buffer: "no route ... able to carry 0 bps") for good.

A PostgreSQL server of its own (the session's shared one must not go down), halted as a
crash would and started again on the same port and data.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keyplane.bus import MemoryBus
from keyplane.clock import VirtualClock
from keyplane.config import parse_topology
from keyplane.control import MonitoringElement
from keyplane.control.wire import MONITORING_METRICS, LinkMetricsReport
from keyplane.errors import CommitFailed, StoreError
from keyplane.events import EventStream, MemorySink
from keyplane.messages import LinkTelemetry
from keyplane.services import PostgresServer
from keyplane.store import Database
from keyplane.store.kmstate import KmStateStore, SessionRecord, SessionWrites
from keyplane.store.sealing import KeyRing
from keyplane.store.topology import get_link_metrics, get_user, load_topology_into
from tests.support.control import TOPOLOGY

pytestmark = pytest.mark.postgres


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    srv = PostgresServer.start()
    try:
        yield srv
    finally:
        srv.stop()


def telemetry(link_id: str, skr_bps: float) -> LinkTelemetry:
    return LinkTelemetry(link_id=link_id, node="a", block_id=1, sifted_bits=1000,
                         secret_bits=500, qber=0.01, skr_bps=skr_bps, t=1.0)


async def test_an_unreachable_database_fails_as_store_errors_and_callers_carry_on(
        own_postgres: PostgresServer, tmp_path: Path) -> None:
    topo = parse_topology(TOPOLOGY, "control-test")
    db = await Database.open(own_postgres.create_database("outage"),
                             keyring=KeyRing(tmp_path / "kek"))
    bus = MemoryBus()
    clock = VirtualClock()
    reports: list[LinkMetricsReport] = []

    async def on_report(_topic: str, msg: object) -> None:
        if isinstance(msg, LinkMetricsReport):
            reports.append(msg)
    mon = MonitoringElement(topo, bus, clock, EventStream(clock, [MemorySink()]), db=db)
    try:
        await load_topology_into(db, topo)
        await bus.subscribe(MONITORING_METRICS, on_report)
        link = topo.links[0].link_id
        own_postgres.halt()
        with pytest.raises(StoreError):
            await get_user(db, "alice")
        with pytest.raises(CommitFailed):
            await KmStateStore(db).commit([SessionWrites("a", [
                SessionRecord("s", "operative", {}, 0.0, new=True)])])
        # the Monitoring Element's figures still reach the Routing Element
        mon.core.on_link_telemetry(telemetry(link, 1000.0), clock.now())
        assert [m.link_id for m in await mon.flush()] == [link]
        assert reports[-1].links[0].skr_bps == 1000.0
        own_postgres.restart()
        # and once the database is back, they are written again
        mon.core.on_link_telemetry(telemetry(link, 2000.0), clock.now())
        await mon.flush()
        assert (await get_link_metrics(db))[link].skr_bps == 2000.0
        assert (await get_user(db, "alice")) is not None
    finally:
        await mon.close()
        await bus.close()
        await db.close()
