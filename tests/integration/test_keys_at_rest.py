"""Keys at rest (issue #13): after an embedded network delivered 1,000 keys through the real
KMs, relay and emulated BB84 links, none of the delivered, held or link key bytes is in the
state folder (database, WAL, events, logs, certificates) nor in PostgreSQL's WAL, every
file there is 0600 and every folder 0700, and the SQLite files keep no sealed value beyond
the live rows (spent keys leave no ciphertext either).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import sqlite3
import stat
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from keyplane.bus import MemoryBus
from keyplane.clock import RealClock
from keyplane.config import Topology, parse_topology
from keyplane.errors import InsufficientKeyMaterial, QosNotMet, RelayError
from keyplane.events import EventStream, EventType, JsonlSink, MemorySink
from keyplane.fileperms import private_file
from keyplane.keymanager import KmSettings
from keyplane.keymanager.interface import Caller
from keyplane.keymanager.keystore import LinkKeyStore
from keyplane.runtime import Embedded, RuntimeContext
from keyplane.services import PostgresServer
from keyplane.store import Database, sqlite_url
from tests.support.keyscan import needles_of, scan_files

pytestmark = [pytest.mark.slow]

TOPOLOGY = """
version: 1
name: at-rest
nodes: [{id: km0}, {id: km1}, {id: km2}]
links:
  - {endpoints: [km0, km1], length_km: 5}
  - {endpoints: [km1, km2], length_km: 5}
users:
  - {id: ua, certificate_subject: "CN=ua,O=at-rest", sla: {max_bps: 100000000}}
  - {id: ub, certificate_subject: "CN=ub,O=at-rest", sla: {max_bps: 100000000}}
applications:
  - {sae_id: sa, owner: ua, node: km0}
  - {sae_id: sb, owner: ub, node: km2}
  - {sae_id: sc, owner: ub, node: km1}
"""
DELIVERED = 1000
HELD = 20
PER_REQUEST = 50
WAIT_FOR_LINK_KEY_S = 600.0  # a deadline on a loaded machine, not a pace


@dataclass
class Run:
    """What one run produced: every key's bytes and where the state is."""

    state: Path
    delivered: list[bytes] = field(default_factory=list)
    held: list[bytes] = field(default_factory=list)
    link_blocks: list[bytes] = field(default_factory=list)
    kek_ids: list[str] = field(default_factory=list)


async def _keys(emb: Embedded, sink: MemorySink, master: str, slave: str, number: int,
                *, fetch: bool) -> list[bytes]:
    """``number`` keys for ``master`` -> ``slave`` (fetched by the slave too if ``fetch``),
    waiting for the links' next block whenever they have too little key."""
    topo = emb.ctx.topology
    km_m = emb.km(topo.application(master).node)
    km_s = emb.km(topo.application(slave).node)
    a = Caller(topo.user(topo.application(master).owner).certificate_subject or "")
    b = Caller(topo.user(topo.application(slave).owner).certificate_subject or "")
    async with asyncio.timeout(WAIT_FOR_LINK_KEY_S):
        while True:
            seen = len(sink.of_type(EventType.link_block))
            try:
                keys = await km_m.enc_keys(a, master, slave, number, 256)
                break
            except (InsufficientKeyMaterial, RelayError, QosNotMet):
                # not enough link key yet (or, at the start on a busy machine, no link has
                # reported a block to Routing: "no route"): wait for the links' next block,
                # then try again
                await sink.wait_for(lambda e, seen=seen: e.type is EventType.link_block
                                    and len(sink.of_type(EventType.link_block)) > seen)
    if fetch:
        got = await km_s.dec_keys(b, slave, master, [k.key_id for k in keys])
        assert [g.key for g in got] == [k.key for k in keys]
    return [k.key for k in keys]


async def _run(state: Path, db: Database, monkeypatch: pytest.MonkeyPatch) -> Run:
    run = Run(state)
    real_put = LinkKeyStore.put_block

    async def recording_put(self: LinkKeyStore, link_id: str, block_id: int,
                            material: bytes) -> None:
        run.link_blocks.append(bytes(material))
        await real_put(self, link_id, block_id, material)

    monkeypatch.setattr(LinkKeyStore, "put_block", recording_put)
    topo: Topology = parse_topology(TOPOLOGY)
    clock = RealClock()
    sink = MemorySink()
    jsonl = JsonlSink(state / "events.jsonl")
    log = logging.FileHandler(private_file(state / "keyplane.log"))
    log.setLevel(logging.DEBUG)
    root = logging.getLogger("keyplane")
    old_level = root.level
    root.addHandler(log)
    root.setLevel(logging.DEBUG)  # per-key DEBUG lines included: none may carry key bytes
    bus = MemoryBus()
    ctx = RuntimeContext(topology=topo, bus=bus, db=db, clock=clock,
                         events=EventStream(clock, [sink, jsonl]), state_dir=state)
    try:
        async with Embedded(ctx, km_settings=KmSettings(link_reserve_bytes=1024)) as emb:
            for i in range(DELIVERED // PER_REQUEST):
                master, slave = ("sa", "sb") if i % 4 else ("sa", "sc")  # 2 hops / adjacent
                run.delivered += await _keys(emb, sink, master, slave, PER_REQUEST,
                                             fetch=True)
            run.held += await _keys(emb, sink, "sa", "sb", HELD, fetch=False)
            run.kek_ids = [db.keyring.sealer(n.id).kek_id for n in topo.nodes]
    finally:
        root.removeHandler(log)
        root.setLevel(old_level)
        log.close()
        jsonl.close()
        await bus.close()
    assert len(run.delivered) == DELIVERED and len(set(run.delivered)) == DELIVERED
    assert run.link_blocks
    return run


def _check_state_folder(run: Run) -> list[Path]:
    files = [p for p in run.state.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"events.jsonl", "keyplane.log", "endpoints.json"}
    for p in [run.state, *run.state.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), f"{p}: {mode:04o}"
    return files


def _needles(run: Run) -> dict[bytes, str]:
    out: dict[bytes, str] = {}
    for secret in (*run.delivered, *run.held, *run.link_blocks):
        out.update(needles_of(secret))
    return out


def test_keyscan_finds_key_bytes_in_every_encoding(tmp_path: Path) -> None:
    """The scanner is able to fail: it finds a key and a slice of a block, encoded."""
    key, block = bytes(range(7, 39)), bytes((i * 37 + 11) % 256 for i in range(4096))
    needles = {**needles_of(key), **needles_of(block)}
    for name, text in (("raw", b"xx" + block[1001:1100] + b"yy"),
                       ("hex", b"k=" + key.hex().encode()),
                       ("base64", b"{" + base64.b64encode(block[2000:2100]) + b"}"),
                       ("b64key", b"[" + base64.urlsafe_b64encode(key) + b"]")):
        (tmp_path / name).write_bytes(text)
        assert scan_files([tmp_path / name], needles), name
    (tmp_path / "none").write_bytes(bytes(5000))
    assert scan_files([tmp_path / "none"], needles) == []


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = await Database.open(sqlite_url(tmp_path / "state" / "keyplane.db"))
    try:
        yield db
    finally:
        await db.close()


async def test_no_key_bytes_at_rest_in_the_state_folder_with_sqlite(
        tmp_path: Path, sqlite_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    run = await _run(state, sqlite_db, monkeypatch)
    await sqlite_db.close()
    files = _check_state_folder(run)
    assert {p.name for p in files} >= {"keyplane.db"}
    assert scan_files(files, _needles(run)) == []
    # no sealed value beyond the live rows: spent keys left no ciphertext in the files
    conn = sqlite3.connect(f"file:{state / 'keyplane.db'}?mode=ro", uri=True)
    try:
        live = sum(conn.execute(f"SELECT count(*) FROM {t} WHERE sealed").fetchone()[0]
                   for t in ("link_key_blocks", "key_batches"))
        batches = conn.execute("SELECT count(*) FROM key_batches").fetchone()[0]
    finally:
        conn.close()
    assert batches >= 1  # the held keys' batch: sealed, so not found above
    raw = b"".join(p.read_bytes() for p in state.glob("keyplane.db*"))
    headers = sum(raw.count(b"\x01" + bytes.fromhex(k)) for k in set(run.kek_ids))
    assert headers == live


@pytest.mark.postgres
async def test_no_key_bytes_at_rest_in_postgresql_wal(
        tmp_path: Path, postgres_server: PostgresServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    url = postgres_server.create_database("at_rest_" + uuid.uuid4().hex[:12])
    db = await Database.open(url)
    try:
        run = await _run(state, db, monkeypatch)
        async with db.engine.connect() as conn:
            await conn.exec_driver_sql("CHECKPOINT")
    finally:
        await db.close()
    files = _check_state_folder(run)
    wal = [p for p in (postgres_server.datadir / "pg_wal").iterdir() if p.is_file()]
    assert wal
    assert scan_files([*files, *wal], _needles(run)) == []
    kek_files = [p for p in files if p.suffix == ".kek"]
    assert len(kek_files) == 3
    assert scan_files(wal, {bytes.fromhex(p.read_text().strip()).hex().encode(): "kek"
                            for p in kek_files}
                      | {bytes.fromhex(p.read_text().strip()): "kek-raw"
                         for p in kek_files}) == []  # the KEK never reaches PostgreSQL
