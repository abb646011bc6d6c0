"""The SQLite group commit runs on the event loop when the write lock is free, and in a
worker thread that waits for the lock when another connection holds it (issue #15): the
loop never waits on another writer, and a commit behind a held lock is neither lost nor
reported before it is written."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from keyplane.store import Database, sqlite_url
from keyplane.store.kmstate import BlockRecord, BlockWrites, KmStateStore
from keyplane.store.sealing import KeyRing
from tests.support.deadlines import DEADLINE_S


def block(block_id: int) -> BlockWrites:
    return BlockWrites("km0", "l1", [BlockRecord(block_id, 64, 0, [], bytes(range(64)),
                                                 new=True)])


async def test_a_free_lock_commits_inline_and_a_held_one_in_a_thread(tmp_path: Path) -> None:
    path = tmp_path / "km.db"
    db = await Database.open(sqlite_url(path), keyring=KeyRing(tmp_path / "k"))
    store = KmStateStore(db)
    writer = store._writer
    other = sqlite3.connect(path, isolation_level=None)
    try:
        await store.commit([block(1)])
        assert writer.inline_commits == 1

        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        pending = asyncio.create_task(store.commit([block(2)]))
        # a few loop turns while the commit waits for the lock in its thread (a commit
        # that waited on the loop would hold the loop here)
        for _ in range(3):
            done, _ = await asyncio.wait({pending}, timeout=0)
            assert not done
        other.execute("COMMIT")
        await asyncio.wait_for(pending, DEADLINE_S)
        assert writer.inline_commits == 1  # the second one went through the thread

        assert [b.block_id for b in await store.load_blocks("km0", "l1")] == [1, 2]
        await store.commit([block(3)])
        assert writer.inline_commits == 2
    finally:
        other.close()
        await store.close()
        await db.close()
