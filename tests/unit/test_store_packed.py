"""Packed key batch rows (migration 0003): round trip, the migration of rows sealed over the
JSON layout, and a clear error for what cannot be packed. SQLite and PostgreSQL."""

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from keyplane.errors import CommitFailed, StoreError
from keyplane.keymanager.journal import Journal
from keyplane.keymanager.vault import KeyVault
from keyplane.store import Database
from keyplane.store.kmstate import KeyBatchRecord, KeyWrites, KmStateStore, _batch_row
from keyplane.store.models import KeyBatchRow
from keyplane.store.sealing import KeyRing

ROOT = Path(__file__).resolve().parents[2]
_P1 = [{"hop": "km0->km1", "source": "qkd"}]
_P2 = [{"hop": "km0->km1", "source": "pqc"}]


async def test_store_packed_batch_round_trip_keeps_every_column(db: Database) -> None:
    store = KmStateStore(db)
    ids = [f"0190c0de-0000-7000-8000-{i:012d}" for i in range(5)]
    provenance = [_P1, _P1, _P2, [], _P1]
    material = bytes(range(32)) * 4
    await store.commit([KeyWrites("km0", batches=[KeyBatchRecord(
        "b1", "s1", "sae0", "sae1", 1.5, ids, [7, 8, 2**40, 10, 11], [256, 256, 256, 0, 256],
        "prrdr", [32, 32, 32, 0, 32], provenance, material, new=True)])])
    (got,) = await store.load_key_batches("km0")
    assert (got.key_ids, got.indexes, got.size_bits, got.states, got.lengths) == (
        ids, [7, 8, 2**40, 10, 11], [256, 256, 256, 0, 256], "prrdr", [32, 32, 32, 0, 32])
    assert got.provenance == provenance and got.material == material and not got.reseal
    async with db.session() as s:
        row = (await s.execute(select(KeyBatchRow))).scalar_one()
    assert row.layout == 2 and row.provenance == [[2, _P1], [1, _P2], [1, []], [1, _P1]]
    assert row.key_ids == b"u" + bytes.fromhex("".join(ids).replace("-", ""))
    assert len(row.indexes) == 8 * 5
    assert material not in row.material  # sealed
    await store.close()


async def test_store_packed_batch_refuses_a_key_id_with_a_comma(db: Database) -> None:
    store = KmStateStore(db)
    with pytest.raises((StoreError, CommitFailed), match="comma"):
        await store.commit([KeyWrites("km0", batches=[KeyBatchRecord(
            "b1", "s1", None, None, 0.0, ["a,b"], [0], [256], "r", [32], [[]], bytes(32),
            new=True)])])
    assert await store.load_key_batches("km0") == []
    u = "0190c0de-0000-7000-8000-00000000000a"
    for i, ids in enumerate((["K1", u, ""], [u.upper()], [u[:8] + " " + u[9:]],  # no UUIDs
                             [u[:35] + " "], [u.replace("-", "0", 1) + "-"])):
        await store.commit([KeyWrites("km0", batches=[KeyBatchRecord(
            f"b{i}", "s1", None, None, 0.0, ids, list(range(len(ids))), [256] * len(ids),
            "r" * len(ids), [32] * len(ids), [[]] * len(ids), bytes(32 * len(ids)),
            new=True)])])
        assert [b.key_ids for b in await store.load_key_batches("km0")] == [ids]
        await store.commit([KeyWrites("km0", batch_deletes=[f"b{i}"])])
    await store.close()


async def test_store_migration_0003_packs_rows_sealed_over_the_json_layout(
        db_url: str, tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location",
                        str(ROOT / "src" / "keyplane" / "store" / "migrations"))

    def upgrade_to_0002(conn: object) -> None:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")

    ring = KeyRing(tmp_path / "kek")
    ids, indexes, lengths = ["k0", "k1", "k2"], [4, 5, 6], [32, 0, 32]
    held = bytes(range(32)) + bytes(range(100, 132))
    sealed = ring.sealer("km1").seal("key_batches", _batch_row("b1", "s1", ids, indexes,
                                                               lengths), held)
    async with engine.begin() as conn:
        await conn.run_sync(upgrade_to_0002)
        await conn.execute(text(
            "INSERT INTO key_batches (node, batch_id, session_id, sae_id, peer_sae, t, "
            "key_ids, indexes, size_bits, states, lengths, provenance, material, sealed) "
            "VALUES ('km1', 'b1', 's1', 'sae1', 'sae0', 0, :ids, :ix, :sb, 'rdp', :ln, :pv, "
            ":m, :sealed)"),
            {"ids": json.dumps(ids), "ix": json.dumps(indexes), "sb": json.dumps([256] * 3),
             "ln": json.dumps(lengths), "pv": json.dumps([_P1, _P1, _P1]), "m": sealed,
             "sealed": True})
    await engine.dispose()
    db = await Database.open(db_url, keyring=KeyRing(tmp_path / "kek"))
    try:
        async with db.session() as s:
            row = (await s.execute(select(KeyBatchRow))).scalar_one()
        assert (row.layout, row.key_ids, row.provenance) == (1, b"tk0,k1,k2", [[3, _P1]])
        journal = Journal(db)
        journal.start()
        vault = KeyVault("km1", journal)
        await vault.load(db)
        assert [(k.key_id, k.index, k.state, k.material, k.provenance)
                for k in vault.of_session("s1")] == [
            ("k0", 4, "ready", held[:32], _P1), ("k2", 6, "pending", held[32:], _P1)]
        await journal.sync()  # the layout-1 row is written again, bound to the packed one
        async with db.session() as s:
            row = (await s.execute(select(KeyBatchRow))).scalar_one()
        assert row.layout == 2 and row.sealed and held[:32] not in row.material
        again = KeyVault("km1", Journal(db))
        await again.load(db)
        assert [(k.key_id, k.material) for k in again.of_session("s1")] == [
            ("k0", held[:32]), ("k2", held[32:])]
        await journal.close()
    finally:
        await db.close()
