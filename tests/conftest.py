"""Fixtures shared by every test tier: clocks, buses on both backends, databases on both.

``bus`` and ``db`` are parametrized so one contract suite runs against the in-memory bus
and a real nats-server, and against SQLite and a real PostgreSQL. The servers are started
once per test session on free ports (keyplane.services) and stopped at the end. The
nats-server is the secured one (TLS, client certificates, per-element permissions; see
tests/support/bus.py); buses of the fixtures below connect as the test harness.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from keyplane.bus import Bus, MemoryBus
from keyplane.clock import VirtualClock
from keyplane.config import Topology, load_topology
from keyplane.services import NatsServer, PostgresServer
from keyplane.store import Database, sqlite_url
from keyplane.store.sealing import KeyRing
from tests.support.bus import harness_security, start_secured_nats


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """A command invoked in-process (typer's CliRunner) sets up logging for a whole process
    (keyplane.logsetup): put the root handlers and every logger's level back afterwards, so
    the next test's caplog and log assertions see the defaults."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: lg.level for name, lg in logging.root.manager.loggerDict.items()
              if isinstance(lg, logging.Logger)}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
    for name, lg in logging.root.manager.loggerDict.items():
        if isinstance(lg, logging.Logger):
            lg.setLevel(levels.get(name, logging.NOTSET))


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    srv = start_secured_nats(tmp_path_factory.mktemp("nats") / "certs")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def topology_nats() -> Iterator[Callable[..., NatsServer]]:
    """Start a secured nats-server for a topology (file or model) whose certificates are (or
    are made) in a state's ``certs`` directory: exactly what ``keyplane nats-config``
    writes, so controller and node processes connect with their own credentials."""
    started: list[NatsServer] = []

    def start(topology: Topology | str | Path, certs_dir: Path) -> NatsServer:
        topo = topology if isinstance(topology, Topology) else load_topology(topology)
        srv = start_secured_nats(certs_dir, topo)
        started.append(srv)
        return srv

    try:
        yield start
    finally:
        for srv in started:
            srv.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    srv = PostgresServer.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
async def nats_bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    from keyplane.bus.nats import NatsBus

    bus = await NatsBus.connect(nats_server.url, security=harness_security(nats_server))
    try:
        yield bus
    finally:
        await bus.close()


@pytest.fixture
async def memory_bus() -> AsyncIterator[MemoryBus]:
    """An in-memory bus (for tests whose subject is not the bus)."""
    bus = MemoryBus()
    try:
        yield bus
    finally:
        await bus.close()


@pytest.fixture(params=["memory", pytest.param("nats", marks=pytest.mark.nats)])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    """A bus of each kind; tests using it form the bus contract suite."""
    if request.param == "memory":
        b: Bus = MemoryBus()
    else:
        from keyplane.bus.nats import NatsBus

        srv: NatsServer = request.getfixturevalue("nats_server")
        b = await NatsBus.connect(srv.url, security=harness_security(srv))
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:  # type: ignore[no-untyped-def]
    """A fresh, empty database URL of each backend."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "keyplane.db")
    srv: PostgresServer = request.getfixturevalue("postgres_server")
    return srv.create_database("t_" + uuid.uuid4().hex[:12])


@pytest.fixture
async def db(db_url: str, tmp_path) -> AsyncIterator[Database]:  # type: ignore[no-untyped-def]
    """An opened, migrated database of each backend (nodes' KEKs in ``tmp_path/kek``)."""
    database = await Database.open(db_url, keyring=KeyRing(tmp_path / "kek"))
    try:
        yield database
    finally:
        await database.close()
