"""Store contract: runs on SQLite and on a real PostgreSQL server."""

import dataclasses
from pathlib import Path

import pytest
from sqlalchemy import inspect, select

from keyplane.config import load_topology
from keyplane.errors import StoreError
from keyplane.store import Database, normalize_url
from keyplane.store.admitted import (
    AdmittedSession,
    delete_admitted_session,
    load_admitted_sessions,
    save_admitted_session,
    touch_admitted_session,
)
from keyplane.store.models import Base, LinkKeyBlockRow, NodeRow
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
