"""Key vault: bookkeeping against a full scan, batch rows, bounded memory, restart, failures."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select, text
from tests.support.deadlines import DEADLINE_S

from keyplane.errors import CommitFailed
from keyplane.keymanager import vault as vault_module
from keyplane.keymanager.indexranges import add_index, add_indexes
from keyplane.keymanager.journal import Journal
from keyplane.keymanager.vault import HeldKey, KeyVault, new_key_id, new_key_ids
from keyplane.store import Database
from keyplane.store.models import KeyBatchRow, KeyStreamRow


def _key(sid: str, index: int, state: str = "ready", *, n: int = 32) -> HeldKey:
    return HeldKey(str(uuid.uuid4()), sid, index, 8 * n, random.randbytes(n),
                   state)  # type: ignore[arg-type]


async def _rows(db: Database, table: type[KeyBatchRow] | type[KeyStreamRow]) -> int:
    async with db.session() as s:
        return int((await s.execute(select(func.count()).select_from(table))).scalar_one())


async def test_vault_ready_count_matches_a_scan_after_random_changes(db: Database) -> None:
    journal = Journal(db)
    journal.start()
    vault = KeyVault("km0", journal)
    rng = random.Random(73)
    sessions = ["s1", "s2", "s3"]
    next_index = dict.fromkeys(sessions, 0)
    delivered: dict[str, set[int]] = {s: set() for s in sessions}
    for step in range(400):
        sid = rng.choice(sessions)
        op = rng.randrange(6)
        keys = vault.of_session(sid)
        if op <= 2 or not keys:
            state = rng.choice(["pending", "ready"])
            vault.add_all([HeldKey(f"k{step}.{j}", sid, next_index[sid] + j, 256,
                                   bytes([step % 256]) * 32, state)  # type: ignore[arg-type]
                           for j in range(rng.randrange(1, 4))])
            next_index[sid] += 3
        elif op <= 4:
            # one key, or several at once (a bulk delivery takes the batched path)
            some = rng.sample(keys, min(len(keys), rng.choice([1, 1, 2, 5])))
            state = rng.choice(["pending", "ready", "delivered"])
            vault.set_states(some, state)  # type: ignore[arg-type]
            if state == "delivered":
                delivered[sid].update(k.index for k in some)
        else:
            vault.drop_session(sid)
            delivered[sid].clear()
            vault.set_state(rng.choice(keys), "ready")  # a late change to a dropped key
        if step % 50 == 0:
            await journal.sync()
        for s in sessions:
            scan = [k for k in vault.by_id.values() if k.session_id == s
                    and k.state != "delivered"]
            assert sorted(k.key_id for k in vault.of_session(s)) == sorted(
                k.key_id for k in scan)
            assert vault.ready_count(s) == sum(1 for k in scan if k.state == "ready")
            assert all(vault.get(s, i).state == "delivered"  # type: ignore[union-attr]
                       for i in delivered[s])
            assert vault.delivered_end(s) == 1 + max(delivered[s], default=-1)
            probe = [*range(next_index[s] + 2)]
            assert vault.get_many(s, probe) == [vault.get(s, i) for i in probe]
    await journal.sync()
    # a restarted KM (a new vault on the same database) finds exactly the same state
    again = KeyVault("km0", Journal(db))
    await again.load(db)
    for s in sessions:
        held = {k.key_id: (k.index, k.state, k.material) for k in vault.of_session(s)}
        assert {k.key_id: (k.index, k.state, k.material) for k in again.of_session(s)} == held
        assert again.ready_count(s) == vault.ready_count(s)
        assert again.delivered_ranges(s) == vault.delivered_ranges(s)
    await journal.close()


async def test_vault_writes_one_row_per_batch_and_deletes_it_when_handed_out(
        db: Database) -> None:
    journal = Journal(db)
    journal.start()
    vault = KeyVault("km0", journal)
    keys = [_key("s1", i) for i in range(100)]
    await journal.flushed(vault.add_all(keys))
    assert (await _rows(db, KeyBatchRow), journal.commits) == (1, 1)
    for k in keys[:60]:
        vault.set_state(k, "delivered")  # one key per request, 60 requests
    await journal.sync()
    assert (await _rows(db, KeyBatchRow), journal.commits) == (1, 2)  # one row rewritten
    await journal.flushed(vault.set_states(keys[60:], "delivered"))
    assert await _rows(db, KeyBatchRow) == 0  # nothing left to hand out: the row is gone
    assert vault.delivered_ranges("s1") == [(0, 100)]
    again = KeyVault("km0", Journal(db))
    await again.load(db)
    assert again.of_session("s1") == [] and again.delivered_end("s1") == 100
    assert again.get("s1", 42) is not None and again.get("s1", 42).state == "delivered"  # type: ignore[union-attr]
    assert again.get("s1", 100) is None
    vault.drop_session("s1")
    await journal.sync()
    assert await _rows(db, KeyStreamRow) == 0
    await journal.close()


async def _batch_row(db: Database) -> tuple[str, bytes, bytes, object]:
    async with db.session() as s:
        (row,) = (await s.execute(select(KeyBatchRow))).scalars().all()
        return row.states, row.material, row.lengths, row.provenance


async def test_vault_state_change_writes_states_only_and_a_delivery_the_whole_row(
        db: Database) -> None:
    """pending -> ready (and a provenance) leaves the row's sealed columns as they were; a
    key handed out rewrites them (fewer bytes held); a restart reads each state back."""
    journal = Journal(db)
    journal.start()
    vault = KeyVault("km0", journal)
    keys = [_key("s1", i, "pending") for i in range(10)]
    await journal.flushed(vault.add_all(keys))
    states, sealed, lengths, _ = await _batch_row(db)
    assert states == "p" * 10
    shared = [{"hop": "km0-km1", "source": "qkd"}]
    for k in keys:
        k.provenance = shared
    await journal.flushed(vault.set_states(keys, "ready", provenance_changed=True))
    assert await _batch_row(db) == ("r" * 10, sealed, lengths, [[10, shared]])
    await journal.flushed(vault.set_states(keys[:3], "delivered"))
    states, sealed2, lengths2, _ = await _batch_row(db)
    assert states == "ddd" + "r" * 7 and sealed2 != sealed and lengths2 != lengths
    await journal.flushed(vault.set_states(keys[3:5], "pending"))  # states only again
    assert (await _batch_row(db))[:3] == ("ddd" + "pp" + "r" * 5, sealed2, lengths2)
    again = KeyVault("km0", Journal(db))
    await again.load(db)
    assert [(k.index, k.state, k.material, k.provenance) for k in again.of_session("s1")] == [
        (k.index, k.state, k.material, shared) for k in keys[3:]]
    await journal.close()


async def test_vault_memory_per_session_is_bounded_by_held_keys(km_db: Database) -> None:
    journal = Journal(km_db)
    journal.start()
    vault = KeyVault("km0", journal, spent_memory=64)
    for start in range(0, 5000, 100):
        batch = [_key("s1", i, n=8) for i in range(start, start + 100)]
        vault.add_all(batch)
        vault.set_states(batch, "delivered")
    await journal.sync()
    assert vault.of_session("s1") == [] and len(vault.by_id) == 64
    # the index holds no key but the 64 remembered delivered ones
    assert sum(map(len, vault._at.values())) == 64 == vault._spent
    assert all(k.state == "delivered" for k in vault._at["s1"].values())
    assert vault.delivered_ranges("s1") == [(0, 5000)]
    assert vault.get("s1", 3).state == "delivered"  # type: ignore[union-attr]  # forgotten id, known index
    assert await _rows(km_db, KeyBatchRow) == 0
    await journal.close()


async def _refuse_stream_inserts(db: Database, on: bool) -> None:
    """Make the database itself refuse (or take again) inserts into ``key_streams``."""
    pg = db.dialect == "postgresql"
    if on:
        sql = (["CREATE FUNCTION refuse_insert() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'refused by the test'; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER refuse BEFORE INSERT ON key_streams FOR EACH ROW "
                "EXECUTE FUNCTION refuse_insert()"] if pg else
               ["CREATE TRIGGER refuse BEFORE INSERT ON key_streams "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"])
    else:
        sql = (["DROP TRIGGER refuse ON key_streams", "DROP FUNCTION refuse_insert()"] if pg
               else ["DROP TRIGGER refuse"])
    async with db.session() as s:
        for stmt in sql:
            await s.execute(text(stmt))


async def test_vault_commit_failure_reaches_waiters_and_the_journal_retries(
        db: Database) -> None:
    journal = Journal(db, retry_s=0.01, retry_max_s=0.05)
    journal.start()
    vault = KeyVault("km0", journal)
    k = _key("s1", 0)
    await journal.flushed(vault.add(k))
    # the database refuses the stream's first insert (a trigger): the commit fails there
    # (a row in the way no longer does: the store's inserts are upserts)
    await _refuse_stream_inserts(db, True)
    gen = vault.set_state(k, "delivered")
    with pytest.raises(CommitFailed):
        await journal.flushed(gen)
    await _refuse_stream_inserts(db, False)
    # no new mark and nobody waking it: the journal retries on its own (a retry may still
    # meet the trigger if it ran before the drop) and the lost changes are written
    async with asyncio.timeout(DEADLINE_S):
        while True:
            try:
                await journal.flushed(gen, wake=False)
                break
            except CommitFailed:
                continue
    assert await _rows(db, KeyBatchRow) == 0
    async with db.session() as s:
        (row,) = (await s.execute(select(KeyStreamRow))).scalars().all()
    assert row.delivered == [[0, 1]]
    await journal.close()


_RUNS = st.builds(lambda a, n: list(range(a, a + n)), st.integers(0, 40), st.integers(1, 12))
"""Ascending runs of indexes (a bulk delivery as made: add_indexes' fast path)."""


@given(st.lists(st.one_of(st.lists(st.integers(0, 40), min_size=1, max_size=12), _RUNS),
                max_size=8))
def test_vault_add_indexes_in_bulk_equals_one_at_a_time(batches: list[list[int]]) -> None:
    one: list[list[int]] = []
    bulk: list[list[int]] = []
    for batch in batches:
        new_one = False
        for i in batch:
            new_one = add_index(one, i) or new_one
        assert add_indexes(bulk, batch) == new_one
        assert bulk == one


def test_new_key_id_is_a_version_7_uuid_ordered_by_time() -> None:
    ids = [new_key_id(1_700_000_000.0 + i / 100) for i in range(50)]
    for key_id in ids:
        u = uuid.UUID(key_id)
        assert (u.version, u.variant) == (7, uuid.RFC_4122)
        assert str(u) == key_id  # canonical lower-case text, as ETSI 014 key_IDs
    assert ids == sorted(ids)  # one id per 10 ms: the time part orders them
    assert len({new_key_id(1_700_000_000.0) for _ in range(1000)}) == 1000


def test_new_key_ids_batch_are_distinct_version_7_uuids_of_one_millisecond() -> None:
    ids = new_key_ids(1_700_000_000.123, 500)
    assert len(set(ids)) == 500
    for key_id in ids:
        u = uuid.UUID(key_id)
        assert (u.version, u.variant) == (7, uuid.RFC_4122)
        assert str(u) == key_id
        assert u.int >> 80 == 1_700_000_000_123  # the 48-bit Unix millisecond prefix
    assert new_key_ids(1_700_000_000.0, 0) == []


@pytest.mark.parametrize("n", [1, 2, 15, 16, 17, 100, 513])
def test_new_key_ids_place_each_random_byte_as_rfc_9562_says(
        n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch form (strided slices, from 16 ids) and the per-id form give the ids
    uuid.UUID builds from the same bytes: 48 bits of ms, version 7, variant 0b10 and every
    random bit where the RFC puts it."""
    import keyplane.keymanager.keyids as keyids
    rand = random.Random(n).randbytes(10 * n)
    monkeypatch.setattr(keyids.secrets, "token_bytes", lambda size: rand[:size])
    ms = (1_700_000_000_123).to_bytes(6, "big")
    want = [str(uuid.UUID(bytes=ms + bytes((0x70 | (r[0] & 0x0F), r[1], 0x80 | (r[2] & 0x3F)))
                          + r[3:])) for r in (rand[i:i + 10] for i in range(0, 10 * n, 10))]
    assert keyids.new_key_ids(1_700_000_000.1234, n) == want
    assert keyids._ids_of(ms, rand, n) == want


async def test_vault_spent_memory_is_the_last_delivered_keys_and_goes_with_its_session(
        km_db: Database) -> None:
    """Bulk deliveries of two sessions interleaved, some undone: the vault remembers
    exactly the last ``spent_memory`` delivered keys by id (its per-session index of them
    holds those and no more), and dropping a session forgets its remembered keys only."""
    journal = Journal(km_db)
    journal.start()
    vault = KeyVault("km0", journal, spent_memory=50)
    rng = random.Random(1511)
    order: list[HeldKey] = []  # delivered and still delivered, oldest first
    nxt = {"s1": 0, "s2": 0}
    undone = False
    for _ in range(60):
        sid = rng.choice(["s1", "s2"])
        batch = [_key(sid, nxt[sid] + i, n=8) for i in range(rng.randrange(1, 30))]
        nxt[sid] += len(batch)
        vault.add_all(batch)
        vault.set_states(batch, "delivered")
        order += batch
        if rng.random() < 0.2:  # a delivery whose commit failed: held again
            back = [k for k in batch[:3] if vault.by_id.get(k.key_id) is k]
            vault.undeliver(back, [b"\x01" * 8] * len(back))
            order = [k for k in order if k not in back]
            undone = undone or bool(back)
        remembered = [k for k in order if vault.by_id.get(k.key_id) is k]
        # the newest ones; an undone delivery leaves its place empty (nothing older returns)
        assert remembered == order[len(order) - len(remembered):] and len(remembered) <= 50
        assert undone or len(remembered) == min(50, len(order))
        # bounded: the index holds the held keys (the undelivered) and the remembered ones
        held = [k for at in vault._at.values() for k in at.values() if k.state != "delivered"]
        assert sum(map(len, vault._at.values())) == vault._spent + len(held) == len(vault.by_id)
        assert vault._spent == len(remembered)
    await journal.sync()
    kept = [k for k in order if vault.by_id.get(k.key_id) is k]
    s2 = [k.key_id for k in kept if k.session_id == "s2"]
    vault.drop_session("s1")
    assert s2 and [k for k in kept if k.session_id == "s1"]  # the seed leaves some of each
    assert all(vault.by_id.get(k.key_id) is None for k in order if k.session_id == "s1")
    assert [i for i in s2 if vault.by_id.get(i) is not None] == s2
    await journal.close()


async def test_vault_hand_out_from_a_stored_batch_rewrites_no_ids(km_db: Database) -> None:
    """A key handed out of a stored batch (an ETSI 014 stock key, #15) updates the row's
    states, lengths and sealed bytes without its ids and indexes; after a failed commit the
    next write is the whole row again; the row opens with exactly the keys still held."""
    from tests.support.km_drive import FailingStore

    from keyplane.store.rowwriter import RowWrites

    failing = FailingStore()
    updates: list[set[str]] = []

    def observe(writes: list[RowWrites]) -> bool:
        updates.extend(set(r) for w in writes if w.table.name == "key_batches"
                       for r in w.updates)
        return False
    with failing.install():
        journal = Journal(km_db)
        journal.start()
        vault = KeyVault("km0", journal)
        keys = [HeldKey(i, "s1", n, 256, random.randbytes(32), "ready", "sae_b", "sae_a")
                for n, i in enumerate(new_key_ids(1.7e9, 4))]
        await journal.flushed(vault.add_all(keys))
        failing.refuse_if = observe
        await journal.flushed(vault.set_states([keys[0]], "delivered"))
        assert updates[-1] >= {"states", "lengths", "material"}
        assert not updates[-1] & {"key_ids", "indexes", "layout"}
        failing.fail({0: "ack_lost"})  # written, but the journal cannot know: retried whole
        with pytest.raises(CommitFailed):
            await journal.flushed(vault.set_states([keys[1]], "delivered"))
        failing.heal()
        failing.refuse_if = observe
        await asyncio.wait_for(journal.sync(), DEADLINE_S)
        assert updates[-1] >= {"key_ids", "indexes", "layout", "material"}
        await journal.flushed(vault.set_states([keys[2]], "delivered"))
        assert not updates[-1] & {"key_ids", "indexes", "layout"}
        await journal.close()
    again = KeyVault("km0", Journal(km_db))
    await again.load(km_db)
    assert [(k.key_id, k.material) for k in again.of_session("s1")] == [
        (keys[3].key_id, keys[3].material)]
    assert [again.by_id[k.key_id].state for k in keys[:3]] == ["delivered"] * 3


async def test_vault_batch_loaded_after_a_restart_keeps_its_other_keys(km_db: Database
                                                                       ) -> None:
    """A key handed out of a batch loaded at a KM's start leaves the batch's other keys
    stored: a second restart still holds them (the loaded batch counted no key, so the first
    hand-out deleted its row)."""
    journal = Journal(km_db)
    journal.start()
    vault = KeyVault("km0", journal)
    keys = [_key("s1", i) for i in range(4)]
    await journal.flushed(vault.add_all(keys))
    await journal.close()
    journal = Journal(km_db)
    journal.start()
    again = KeyVault("km0", journal)
    await again.load(km_db)
    await journal.flushed(again.set_states([again.by_id[keys[0].key_id]], "delivered"))
    await journal.close()
    third = KeyVault("km0", Journal(km_db))
    await third.load(km_db)
    assert [(k.key_id, k.material) for k in third.of_session("s1")] == [
        (k.key_id, k.material) for k in keys[1:]]
    assert third.get("s1", 0).state == "delivered"  # type: ignore[union-attr]
    assert third.delivered_ranges("s1") == [(0, 1)]


async def test_vault_hand_outs_from_a_living_batch_write_one_row_and_survive_restart(
        km_db: Database) -> None:
    """Keys handed out of a batch that still holds others write the batch row only (the
    stream's delivered ranges are written when a batch row goes); a restarted KM knows
    every handed-out index from the rows, and the ranges row is written with the last."""
    from tests.support.km_drive import FailingStore

    from keyplane.store.rowwriter import RowWrites

    failing = FailingStore()
    tables: list[set[str]] = []

    def observe(writes: list[RowWrites]) -> bool:
        tables.append({w.table.name for w in writes if w.inserts or w.updates or w.deletes})
        return False
    with failing.install():
        journal = Journal(km_db)
        journal.start()
        vault = KeyVault("km0", journal)
        first, second = [_key("s1", i) for i in range(3)], [_key("s1", i) for i in range(3, 5)]
        await journal.flushed(vault.add_all(first))
        await journal.flushed(vault.add_all(second))
        failing.refuse_if = observe
        await journal.flushed(vault.set_states([first[0]], "delivered"))
        await journal.flushed(vault.set_states([second[0]], "delivered"))
        assert tables == [{"key_batches"}, {"key_batches"}]
        await journal.close()
    again = KeyVault("km0", Journal(km_db))
    await again.load(km_db)
    assert again.delivered_ranges("s1") == [(0, 1), (3, 4)]
    assert [again.get("s1", i).state for i in range(5)] == [  # type: ignore[union-attr]
        "delivered", "ready", "ready", "delivered", "ready"]
    with failing.install():
        journal = Journal(km_db)
        journal.start()
        again = KeyVault("km0", journal)
        await again.load(km_db)
        tables.clear()
        failing.refuse_if = observe
        await journal.flushed(again.set_states(
            [again.by_id[k.key_id] for k in second[1:]], "delivered"))  # its batch goes
        assert tables == [{"key_batches", "key_streams"}]
        await journal.close()
    third = KeyVault("km0", Journal(km_db))
    await third.load(km_db)
    assert third.delivered_ranges("s1") == [(0, 1), (3, 5)]
    assert [k.index for k in third.of_session("s1")] == [1, 2]
    assert await _rows(km_db, KeyStreamRow) == 1


async def test_vault_indexes_go_with_their_session_and_the_shared_empty_is_never_written(
        db: Database) -> None:
    # held and remembered keys are indexed per session: a dropped session leaves no index,
    # an undelivery of its keys brings nothing back, and the read-only default stays empty
    journal = Journal(db)
    journal.start()
    vault = KeyVault("km0", journal, spent_memory=4)
    gone: list[HeldKey] = []
    for sid in ("s2", "s1"):
        keys = [_key(sid, i) for i in range(6)]
        vault.add_all(keys)
        vault.set_states(keys[:5], "delivered")
        gone = [k for k in keys[:5] if vault.by_id.get(k.key_id) is k]  # remembered
    assert len(gone) == 4
    vault.drop_session("s1")
    assert vault.get("s1", 5) is None and vault.of_session("s1") == []
    assert "s1" not in vault._at  # no dict per ended session
    assert vault.undeliver(gone, [b"x" * 32] * len(gone)) == 0
    assert vault.get("s1", gone[0].index) is None
    vault.set_states(vault.of_session("s2"), "delivered")
    assert vault.get_many("s3", [0, 1]) == [None, None] and vault.get("s3", 0) is None
    assert len(vault.by_id) <= 4
    assert vault_module._EMPTY == {}
    await journal.close()
