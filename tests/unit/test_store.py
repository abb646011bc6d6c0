"""Store contract: runs on SQLite and on a real PostgreSQL server."""

import asyncio
import dataclasses
import stat
from pathlib import Path

import pytest
from sqlalchemy import inspect, select

from keyplane.clock import VirtualClock, settle
from keyplane.config import load_topology
from keyplane.errors import SealedDataError, StoreError
from keyplane.events import EventStream
from keyplane.keymanager import KmSettings, LinkKeyStore
from keyplane.keymanager.journal import Journal
from keyplane.keymanager.vault import KeyVault
from keyplane.store import Database, normalize_url, sqlite_url
from keyplane.store.admitted import (
    AdmittedSession,
    delete_admitted_session,
    load_admitted_sessions,
    save_admitted_session,
    touch_admitted_session,
)
from keyplane.store.kmstate import BlockRecord, BlockWrites, KmStateStore
from keyplane.store.models import Base, KeyBatchRow, LinkKeyBlockRow, NodeRow
from keyplane.store.sealing import KeyRing, ensure_kek_file, read_kek_file
from keyplane.store.topology import (
    LinkMetrics,
    get_application,
    get_link_metrics,
    get_user,
    get_user_by_subject,
    get_user_by_token,
    load_topology_into,
    upsert_link_metrics,
)
from tests.support.deadlines import DEADLINE_S

ROOT = Path(__file__).resolve().parents[2]


async def test_store_migrations_create_every_model_table(db: Database) -> None:
    async with db.engine.connect() as conn:
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables


async def test_store_migration_matches_models(db: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    async with db.engine.connect() as conn:
        diff = await conn.run_sync(
            lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))
    assert diff == []


async def test_store_topology_roundtrip_users_apps_and_metrics(db: Database) -> None:
    topo = load_topology(ROOT / "examples" / "paper_poc.yaml")
    await load_topology_into(db, topo)
    await load_topology_into(db, topo)  # idempotent
    alice = await get_user_by_subject(db, "CN=alice,O=keyplane-demo")
    assert alice is not None and alice.id == "alice" and alice.sla.priority == 5
    assert (await get_user(db, "nobody")) is None
    app = await get_application(db, "sae3")
    assert app is not None and app.node == "km3" and app.owner == "dave"
    await upsert_link_metrics(db, LinkMetrics(link_id="km0-km1", t=1.0, skr_bps=1e4, qber=0.02))
    await upsert_link_metrics(db, LinkMetrics(link_id="km0-km1", t=2.0, skr_bps=2e4, qber=0.03))
    m = await get_link_metrics(db)
    assert m["km0-km1"].skr_bps == 2e4 and m["km0-km1"].t == 2.0
    async with db.session() as s:
        assert len((await s.execute(select(NodeRow))).scalars().all()) == 6


async def test_store_tokens_are_kept_as_digests(db: Database) -> None:
    from keyplane.config import parse_topology

    topo = parse_topology("nodes: [{id: a}]\nusers: [{id: u, token: s3cret}]\n")
    await load_topology_into(db, topo)
    assert (await get_user_by_token(db, "s3cret")).id == "u"  # type: ignore[union-attr]
    assert await get_user_by_token(db, "wrong") is None
    async with db.engine.connect() as conn:
        raw = (await conn.exec_driver_sql("SELECT token_sha256 FROM users")).scalar_one()
    assert raw != "s3cret" and len(raw) == 64


async def test_store_failed_transaction_rolls_back_and_raises_store_error(db: Database) -> None:
    with pytest.raises(StoreError):
        async with db.session() as s:
            s.add(LinkKeyBlockRow(node="a", link_id="l", block_id=1, size_bytes=1,
                                  material=b"\x00"))
            s.add(LinkKeyBlockRow(node="a", link_id="l", block_id=1, size_bytes=1,
                                  material=b"\x00"))
    async with db.session() as s:
        assert (await s.execute(select(LinkKeyBlockRow))).scalars().all() == []


async def test_store_reopen_keeps_data(db_url: str) -> None:
    db = await Database.open(db_url)
    async with db.session() as s:
        s.add(NodeRow(id="n1", name="one"))
    await db.close()
    db = await Database.open(db_url)
    async with db.session() as s:
        assert (await s.get(NodeRow, "n1")).name == "one"  # type: ignore[union-attr]
    await db.close()


async def test_store_unreachable_database_raises_store_error() -> None:
    with pytest.raises(StoreError):
        await Database.open("postgresql://nobody@127.0.0.1:1/none")


def test_normalize_url_maps_plain_urls_to_async_drivers() -> None:
    assert normalize_url("postgresql://u@h/d") == "postgresql+asyncpg://u@h/d"
    assert normalize_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"


def _admitted(session_id: str, **changes: object) -> AdmittedSession:
    base = AdmittedSession(
        session_id=session_id, interface="etsi004", source_sae="sae0", destination_sae="sae1",
        source_node="km0", destination_node="km1",
        initiator={"node": "km0", "user_id": "alice", "sae_id": "sae0", "peer_sae": "sae1",
                   "opened_as": session_id, "qos": {"min_bps": 100}, "sla": {}},
        path=("km0", "km1"), epoch=0, route_epoch=0, min_bps=100.0, rate_bps=1000.0,
        priority=3, idle_timeout_s=20.0, key_chunk_size=32, bucket_size_bits=1000,
        hybrid_policy="qkd-only")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


async def test_store_admitted_sessions_saved_updated_touched_and_deleted(db: Database) -> None:
    await save_admitted_session(db, _admitted("s1"), wall=100.0)
    await save_admitted_session(db, _admitted("s0"), wall=101.0)
    await save_admitted_session(db, _admitted("s1", path=("km0", "km2", "km1"), epoch=1,
                                              route_epoch=1), wall=105.0)
    await touch_admitted_session(db, "s1", wall=107.0)
    await touch_admitted_session(db, "s1", wall=106.0)  # late: never moves back
    await touch_admitted_session(db, "nobody", wall=107.0)
    s1, s0 = await load_admitted_sessions(db)  # oldest first
    assert (s1.session_id, s0.session_id) == ("s1", "s0")
    assert s1 == _admitted("s1", path=("km0", "km2", "km1"), epoch=1, route_epoch=1,
                           created_wall=100.0, updated_wall=105.0, last_keepalive_wall=107.0)
    await save_admitted_session(db, _admitted("s1", state="terminated"), wall=110.0)
    assert [r.state for r in await load_admitted_sessions(db)] == ["terminated", "active"]
    await delete_admitted_session(db, "s1")
    await delete_admitted_session(db, "s1")  # idempotent
    assert [r.session_id for r in await load_admitted_sessions(db)] == ["s0"]


async def test_store_node_endpoints_survive_reloading_the_topology(db: Database) -> None:
    topo = load_topology(ROOT / "examples" / "paper_poc.yaml")
    await load_topology_into(db, topo)
    async with db.session() as s:
        row = await s.get(NodeRow, "km0")
        assert row is not None and row.endpoints == {}
        row.endpoints = {"etsi015": "https://127.0.0.1:4443"}
    await load_topology_into(db, topo)
    async with db.session() as s:
        row = await s.get(NodeRow, "km0")
        assert row is not None and row.endpoints == {"etsi015": "https://127.0.0.1:4443"}


# ---- keys at rest ---------------------------------------------------------------------

def test_sealer_binds_each_value_to_its_node_table_and_row(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "kek")
    a, b = ring.sealer("km0"), ring.sealer("km1")
    secret = bytes(range(32))
    sealed = a.seal("key_batches", "row1", secret)
    assert secret not in sealed and a.open("key_batches", "row1", sealed) == secret
    assert a.seal("key_batches", "row1", secret) != sealed  # a fresh nonce per seal
    for opener, table, row in ((a, "key_batches", "row2"), (a, "link_key_blocks", "row1"),
                               (b, "key_batches", "row1")):
        with pytest.raises(SealedDataError):
            opener.open(table, row, sealed)
    tampered = bytearray(sealed)
    tampered[-20] ^= 1
    with pytest.raises(SealedDataError):
        a.open("key_batches", "row1", bytes(tampered))
    # rotation: a row sealed under the retired KEK still opens, and asks to be rewritten
    (tmp_path / "kek" / "km0.kek").rename(tmp_path / "km0.old")
    rotated = KeyRing(tmp_path / "kek")
    rotated.use_file("km0", tmp_path / "kek" / "km0.kek", retired=(tmp_path / "km0.old",))
    new = rotated.sealer("km0")
    assert new.kek_id != a.kek_id and new.needs_reseal(sealed)
    assert new.open("key_batches", "row1", sealed) == secret


def test_kek_files_are_private_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "km0.kek"
    kek = ensure_kek_file(path)
    assert ensure_kek_file(path) == kek and len(kek) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    path.chmod(0o644)
    with pytest.raises(StoreError, match="mode 0644"):
        read_kek_file(path)
    path.chmod(0o400)
    assert read_kek_file(path) == kek  # a mounted secret (defaultMode 0400)
    raw = tmp_path / "raw.kek"
    raw.write_bytes(kek)
    raw.chmod(0o600)
    assert read_kek_file(raw) == kek
    raw.write_bytes(b"short")
    with pytest.raises(StoreError, match="32 bytes"):
        read_kek_file(raw)
    with pytest.raises(StoreError, match="no key-encryption key"):
        KeyRing(None).sealer("km0")
    with pytest.raises(StoreError, match="cannot read"):
        KeyRing(tmp_path / "none", create=False).sealer("km0")


async def test_store_link_blocks_are_sealed_and_rows_cannot_be_swapped(db: Database) -> None:
    store = KmStateStore(db)
    m1, m2 = bytes(range(64)), bytes(range(64, 128))
    await store.commit([BlockWrites("km0", "l1", [
        BlockRecord(1, 64, 0, [], m1, new=True), BlockRecord(2, 64, 0, [], m2, new=True)])])
    async with db.session() as s:
        rows = {r.block_id: r for r in (await s.execute(select(LinkKeyBlockRow))).scalars()}
        assert all(r.sealed and m1 not in r.material and m2 not in r.material
                   for r in rows.values())
        rows[1].material, rows[2].material = rows[2].material, rows[1].material
    with pytest.raises(SealedDataError):
        await store.load_blocks("km0", "l1")
    await store.close()


async def test_store_migration_0002_moves_keys_into_batches_and_reseals_plaintext(
        db_url: str, tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location",
                        str(ROOT / "src" / "keyplane" / "store" / "migrations"))
    link_key, held = bytes(range(100, 164)), bytes(range(32))

    def upgrade_to_0001(conn: object) -> None:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")

    async with engine.begin() as conn:
        await conn.run_sync(upgrade_to_0001)
        await conn.execute(text(
            "INSERT INTO link_key_blocks (node, link_id, block_id, size_bytes, "
            "tx_reserved_bytes, rx_consumed, material, created_t) "
            "VALUES ('km0', 'l1', 7, 64, 0, '[]', :m, 0)"), {"m": link_key})
        for key_id, index, state, material in (("k0", 0, "delivered", None),
                                               ("k1", 1, "delivered", None),
                                               ("k2", 2, "ready", held),
                                               ("k3", 3, "pending", held)):
            await conn.execute(text(
                'INSERT INTO delivered_keys (node, key_id, session_id, "index", delivered, t, '
                "state, size_bits, sae_id, peer_sae, material, provenance) VALUES ('km1', "
                ":k, 's1', :i, :d, 0, :st, 256, 'sae1', 'sae0', :m, '[]')"),
                {"k": key_id, "i": index, "d": state == "delivered", "st": state,
                 "m": material})
    await engine.dispose()
    db = await Database.open(db_url, keyring=KeyRing(tmp_path / "kek"))
    try:
        journal = Journal(db)
        journal.start()
        vault = KeyVault("km1", journal)
        await vault.load(db)
        assert [(k.key_id, k.state, k.material) for k in vault.of_session("s1")] == [
            ("k2", "ready", held), ("k3", "pending", held)]
        assert vault.delivered_ranges("s1") == [(0, 2)] and vault.delivered_end("s1") == 2
        store = LinkKeyStore("km0", "l1", "km9", journal, EventStream(VirtualClock()),
                             VirtualClock(), KmSettings())
        await store.load(db)
        assert store.stored_bits == 8 * 64
        await journal.sync()  # the legacy rows are written again, sealed
        async with db.session() as s:
            block = (await s.execute(select(LinkKeyBlockRow))).scalar_one()
            batch = (await s.execute(select(KeyBatchRow))).scalar_one()
        assert block.sealed and link_key not in block.material
        assert batch.sealed and held not in batch.material
        assert (await journal.store.load_blocks("km0", "l1"))[0].material == link_key
        await journal.close()
    finally:
        await db.close()


async def test_store_sqlite_files_are_private_and_secure_delete_is_on(tmp_path: Path) -> None:
    db = await Database.open(sqlite_url(tmp_path / "state" / "k.db"))
    try:
        async with db.engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA secure_delete")).scalar_one() == 1
        store = KmStateStore(db, scrub_interval_s=0.0)
        await store.commit([BlockWrites("km0", "l1", [
            BlockRecord(1, 64, 0, [], bytes(64), new=True)])])
        await store.commit([BlockWrites("km0", "l1", deletes=[1])])
        assert store.checkpoints >= 1
        await store.close()
    finally:
        await db.close()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "state").rglob("*")}
    assert modes.pop("kek") == 0o700
    assert modes and set(modes.values()) == {0o600}, modes
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700


async def test_store_close_lets_a_transaction_in_flight_end_and_refuses_new_ones(
        db: Database) -> None:
    # disposing of the engine under another task's transaction left that connection to
    # the garbage collector; a SQLite one then finished in its thread after the loop closed
    inside, release = asyncio.Event(), asyncio.Event()

    async def writer() -> None:
        async with db.session() as s:
            await s.execute(select(NodeRow))
            inside.set()
            await release.wait()
            await s.execute(select(NodeRow))

    task = asyncio.create_task(writer())
    await asyncio.wait_for(inside.wait(), DEADLINE_S)
    closing = asyncio.create_task(db.close())
    await settle()
    assert not closing.done() and db.closed  # waits for the writer's transaction
    with pytest.raises(StoreError, match="is closed"):
        async with db.session():
            pass
    assert not await db.ping()
    release.set()
    await asyncio.wait_for(closing, DEADLINE_S)
    await asyncio.wait_for(task, DEADLINE_S)  # its transaction ended without an error
