"""Key batches and a commit whose outcome was lost, a batch emptied by a re-layout, ready
spares with the ETSI 014 stock off: no key handed out twice, no key bytes left at rest, no
handed-out index forgotten across a restart (each test failed before its fix, wave 11
review)."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest
from tests.support.deadlines import DEADLINE_S
from tests.support.km_drive import FailingStore
from tests.support.km_net import CALLER_A, line_topology, start_net

from keyplane.bus.memory import MemoryBus
from keyplane.clock import VirtualClock
from keyplane.errors import CommitFailed, KeyplaneError, StoreError
from keyplane.keymanager import KmSettings
from keyplane.keymanager.journal import Journal
from keyplane.keymanager.vault import HeldKey, KeyVault
from keyplane.store import Database


def _key(sid: str, index: int, state: str = "ready", key_id: str | None = None) -> HeldKey:
    return HeldKey(key_id or str(uuid.uuid4()), sid, index, 256, random.randbytes(32),
                   state)  # type: ignore[arg-type]


async def test_relayout_that_empties_a_batch_keeps_its_handed_out_indexes(km_db: Database
                                                                          ) -> None:
    """A batch whose last held key leaves it (another key object with its id) has its row
    deleted; the indexes handed out of it, recorded in that row, go to the stream's ranges
    row in the same commit, so a restarted KM still knows they were handed out."""
    journal = Journal(km_db)
    journal.start()
    vault = KeyVault("km0", journal)
    k0, k1 = _key("s1", 0), _key("s1", 1)
    await journal.flushed(vault.add_all([k0, k1]))
    await journal.flushed(vault.set_states([k0], "delivered"))  # row: "dr", no ranges row
    # a key with k1's id arrives (e.g. a frame of another session naming the same key_ID)
    await journal.flushed(vault.add_all([_key("s2", 0, "pending", key_id=k1.key_id)]))
    assert vault.delivered_ranges("s1") == [(0, 1)]  # memory knows
    await journal.close()
    again = KeyVault("km0", Journal(km_db))
    await again.load(km_db)
    assert again.delivered_ranges("s1") == [(0, 1)]
    assert again.get("s1", 0) is not None


async def test_stock_off_ready_spares_are_still_handed_out(km_db: Database) -> None:
    """With the stock off (etsi014_stock_keys=0) a ready spare (here: a 2-key enc_keys
    whose delivery commit failed) is handed out by the next requests, not moved into a
    stock nobody reads (held at both ends until the session ended)."""
    net = await start_net(line_topology(2), MemoryBus(), km_db, VirtualClock(),
                          settings=KmSettings.model_validate({"etsi014_stock_keys": 0}),
                          seed=15, blocks=8, block_bytes=4096)
    failing = FailingStore()
    try:
        km0 = net.kms["km0"]

        async def enc(n: int) -> list[str]:
            async with asyncio.timeout(DEADLINE_S):
                return [k.key_id for k in await km0.enc_keys(CALLER_A, "sa", "sb", n, 256)]
        await enc(1)
        s = km0.core.streams[km0.core.pairs[("sa", "sb")]]
        with failing.install():
            # the delivery commit of both keys (their batch row goes, the ranges row comes)
            failing.refuse_if = lambda writes: any(
                w.table.name == "key_batches" and (w.deletes or any(
                    "d" in r.get("states", "") for r in w.updates)) for w in writes)
            with pytest.raises((KeyplaneError, StoreError)):
                await enc(2)
            failing.heal()
        spares = [i for i in s.spare
                  if (k := km0.vault.get(s.session_id, i)) is not None and k.state == "ready"]
        assert len(spares) == 2, [(i, km0.vault.get(s.session_id, i)) for i in s.spare]
        spare_ids = {km0.vault.get(s.session_id, i).key_id for i in spares}  # type: ignore[union-attr]
        got = set(await enc(1)) | set(await enc(1))
        assert spare_ids <= got, (s.spare, s.stock)
    finally:
        await net.close()
        await net.bus.close()


async def test_batch_whose_insert_outcome_was_lost_is_deleted_when_it_dies(km_db: Database
                                                                           ) -> None:
    """A batch whose insert commit failed with its outcome lost (the row IS stored), every
    key of which is handed out before the journal's retry: its row is deleted (it stayed,
    with the keys' sealed bytes and state 'r', and a restarted KM held them ready again: a
    second hand-out)."""

    failing = FailingStore()
    with failing.install():
        journal = Journal(km_db)
        journal.start()
        vault = KeyVault("km0", journal)
        keys = [_key("s1", 0), _key("s1", 1)]
        failing.fail({0: "ack_lost"})  # the row is written; the journal cannot know
        with pytest.raises(CommitFailed):
            await journal.flushed(vault.add_all(keys))
        failing.heal()
        # handed out before the journal's retry (e.g. a batch undeliver() revived)
        await journal.flushed(vault.set_states(keys, "delivered"))
        await journal.close()
    again = KeyVault("km0", Journal(km_db))
    await again.load(km_db)
    assert again.of_session("s1") == [], [(k.index, k.state) for k in again.of_session("s1")]


async def test_session_dropped_after_a_lost_insert_outcome_leaves_no_row(km_db: Database
                                                                         ) -> None:
    """The same in drop_session: a batch whose insert outcome was lost and whose session
    ends before the retry leaves no row (sealed key bytes at rest for a session that no
    longer exists, held again by a restarted KM)."""

    failing = FailingStore()
    with failing.install():
        journal = Journal(km_db)
        journal.start()
        vault = KeyVault("km0", journal)
        failing.fail({0: "ack_lost"})
        with pytest.raises(CommitFailed):
            await journal.flushed(vault.add_all([_key("s1", 0), _key("s1", 1)]))
        failing.heal()
        _, gen = vault.drop_session("s1")
        await journal.flushed(gen)
        await journal.close()
    again = KeyVault("km0", Journal(km_db))
    await again.load(km_db)
    assert again.of_session("s1") == []
