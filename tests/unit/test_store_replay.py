"""A commit replayed after its acknowledgement was lost (issue #14.6): the database wrote
it, the caller saw :class:`~keyplane.errors.CommitFailed` and retries the same rows. The
store's writes are idempotent, so the retry succeeds and leaves the state it asks for (it
used to fail on the rows already there for good: the journal retried the INSERT forever
and the KM's writes stuck). On SQLite (the writer's own connection), on PostgreSQL, and on
SQLite through SQLAlchemy (an in-memory database)."""

from __future__ import annotations

from pathlib import Path

from keyplane.store import Database
from keyplane.store.kmstate import (
    BlockRecord,
    BlockWrites,
    KeyBatchRecord,
    KeyWrites,
    KmStateStore,
    SessionRecord,
    SessionWrites,
    StreamRecord,
)
from keyplane.store.sealing import KeyRing


def batch(states: str, *, new: bool) -> KeyBatchRecord:
    return KeyBatchRecord("b1", "s1", "sae1", "sae2", 1.0, ["k1", "k2"], [0, 1], [256, 256],
                          states, [32, 32], [[], []], bytes(range(64)), new=new)


def first_commit() -> list[BlockWrites | KeyWrites | SessionWrites]:
    return [
        BlockWrites("km0", "l1", [BlockRecord(1, 64, 0, [], bytes(range(64)), new=True),
                                  BlockRecord(2, 64, 0, [], bytes(range(64, 128)), new=True)]),
        KeyWrites("km0", [batch("rr", new=True)],
                  streams=[StreamRecord("s1", [], 1.0, new=True)]),
        SessionWrites("km0", [SessionRecord("s1", "operative", {"hop": 1}, 1.0, new=True)]),
    ]


async def check_replays(db: Database) -> None:
    store = KmStateStore(db)
    try:
        await store.commit(first_commit())
        # the acknowledgement was lost: the very same rows again
        await store.commit(first_commit())
        assert [(b.block_id, b.material) for b in await store.load_blocks("km0", "l1")] == [
            (1, bytes(range(64))), (2, bytes(range(64, 128)))]
        # a replay that carries a later state of a row it inserts (the journal re-marks
        # what a failed commit carried; a rollback may have changed it meanwhile) ends in
        # that later state, and a replayed delete of a row already gone is no error
        later = first_commit()
        later[0] = BlockWrites("km0", "l1", [BlockRecord(1, 64, 32, [[0, 32]],
                                                         bytes(32) + bytes(range(32, 64)),
                                                         new=True)], deletes=[2])
        later[1] = KeyWrites("km0", [batch("dr", new=True)],
                             streams=[StreamRecord("s1", [[0, 1]], 2.0, new=True)])
        await store.commit(later)
        await store.commit(later)
        (b1,) = await store.load_blocks("km0", "l1")
        assert (b1.block_id, b1.tx_reserved_bytes, b1.rx_consumed, b1.material) == (
            1, 32, [[0, 32]], bytes(32) + bytes(range(32, 64)))
        (kb,) = await store.load_key_batches("km0")
        assert (kb.batch_id, kb.states, kb.material) == ("b1", "dr", bytes(range(64)))
        (st,) = await store.load_streams("km0")
        assert st.delivered == [[0, 1]]
    finally:
        await store.close()


async def test_store_commit_replayed_after_a_lost_acknowledgement_succeeds(
        db: Database) -> None:
    await check_replays(db)


async def test_store_commit_replay_on_sqlite_through_sqlalchemy(tmp_path: Path) -> None:
    db = await Database.open("sqlite+aiosqlite:///:memory:", keyring=KeyRing(tmp_path / "k"))
    try:
        await check_replays(db)
    finally:
        await db.close()
