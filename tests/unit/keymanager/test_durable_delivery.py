"""Durable before delivered (#14.1): with the store failing at any commit, each key is
delivered at both ends or at neither, and none twice.

Real KMs (a source, an intermediate and a destination) on one in-memory bus and one SQLite
file; the fake control plane stands in for Access and Admission Control. The store refuses
the commits a hypothesis schedule picks (nothing written; the journal retries on its own).
Afterwards the store heals, every KM is restarted from it, and each key delivered at one
end must be deliverable at the other, once.

The failing commit is injected at the store's write (tests/support/km_drive.py); the SQL
itself is the real one, run on the event loop so that, with the virtual clock, every run
is deterministic.

Not covered: a commit that lands but whose acknowledgement is lost. The store's inserts are
plain INSERTs, so the journal's retry of such a commit fails on the rows it already wrote
(the store wedges until a restart); that is the persistence layer's to make idempotent
(upserts), and this test should then draw ``ack_lost`` faults too.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.km_drive import FailingStore, Fault, drive
from tests.support.km_net import CALLER_A, CALLER_B, KmNet, line_topology, open_pair, start_net

from keyplane.bus import MemoryBus
from keyplane.clock import VirtualClock
from keyplane.errors import CommitFailed, KeyNotFound, KeyplaneError
from keyplane.keymanager import KmSettings
from keyplane.store import Database, sqlite_url
from keyplane.store.rowwriter import RowWrites

T = TypeVar("T")
Op = Literal["enc", "dec", "get_src", "get_dst"]


async def attempt(clock: VirtualClock, aw: Awaitable[T]) -> T | None:
    """``drive``, with a KM error (the store failed, a relay timed out) as None."""
    try:
        return await drive(clock, aw)
    except (KeyplaneError, TimeoutError):
        return None


async def scenario(ops: list[Op], faults: dict[int, Fault], db_path: Path) -> None:
    store = FailingStore()
    with store.install():
        db = await Database.open(sqlite_url(db_path))
        bus = MemoryBus()
        clock = VirtualClock()
        net: KmNet | None = None
        try:
            net = await start_net(
                line_topology(3), bus, db, clock, seed=141, idle_timeout_s=1e6,
                settings=KmSettings(link_reserve_bytes=0, relay_confirm_timeout_s=1.0,
                                    relay_attempts=2, peer_block_wait_s=0.5))
            sid = await drive(clock, open_pair(net))
            store.fail(faults)
            master: dict[str, bytes] = {}  # ETSI 014 key_ID -> bytes, as the master got it
            slave: dict[str, bytes] = {}
            src: dict[int, bytes] = {}  # ETSI 004 index -> bytes, at each end
            dst: dict[int, bytes] = {}
            for op in ops:
                km0, km2 = net.kms["km0"], net.kms["km2"]
                if op == "enc":
                    got = await attempt(clock, km0.enc_keys(CALLER_A, "sc", "sd", 2, 256))
                    for k in got or []:
                        assert k.key_id not in master, "enc_keys handed a key out twice"
                        master[k.key_id] = k.key
                elif op == "dec":
                    todo = [i for i in master if i not in slave]
                    if todo:
                        dec = await attempt(clock, km2.dec_keys(CALLER_B, "sd", "sc", todo[:1]))
                        for k in dec or []:
                            assert k.key_id not in slave, "dec_keys handed a key out twice"
                            slave[k.key_id] = k.key
                else:
                    km, caller, seen = ((km0, CALLER_A, src) if op == "get_src"
                                        else (km2, CALLER_B, dst))
                    r = await attempt(clock, km.get_key(caller, sid, None))
                    if r is not None:
                        assert r.index not in seen, f"index {r.index} handed out twice"
                        seen[r.index] = r.key
            store.heal()
            # let every relay begun while the store failed run out (e.g. one for a demand
            # from the destination: a request now would join it and share its fate) ...
            await clock.advance(10 * net.settings.relay_attempts
                                * net.settings.relay_confirm_timeout_s)
            # ... then a healed store serves again: no write is left wedged behind a failure
            km0 = net.kms["km0"]
            for k in await drive(clock, km0.enc_keys(CALLER_A, "sc", "sd", 1, 256)):
                master[k.key_id] = k.key
            r = await drive(clock, km0.get_key(CALLER_A, sid, None))
            assert r.index not in src
            src[r.index] = r.key
            for node in ("km2", "km1", "km0"):  # only what is durable survives
                await net.restart(node)
            km0, km2 = net.kms["km0"], net.kms["km2"]
            # what one end delivered, the other end can still deliver: no key lost
            for key_id, key in master.items():
                if key_id not in slave:
                    (k,) = await drive(clock, km2.dec_keys(CALLER_B, "sd", "sc", [key_id]))
                    slave[key_id] = k.key
                assert slave[key_id] == key
            assert set(slave) <= set(master), "the slave got a key the master never had"
            for index in sorted(set(src) | set(dst)):
                for km, caller, seen in ((km0, CALLER_A, src), (km2, CALLER_B, dst)):
                    if index not in seen:
                        r = await drive(clock, km.get_key(caller, sid, index))
                        seen[index] = r.key
                assert src[index] == dst[index]
            # ... and nothing delivered is delivered again, restart or not
            for key_id in slave:
                try:
                    await drive(clock, km2.dec_keys(CALLER_B, "sd", "sc", [key_id]))
                except KeyNotFound:
                    continue
                raise AssertionError(f"key {key_id} delivered twice to the slave")
            for index in src:
                for km, caller in ((km0, CALLER_A), (km2, CALLER_B)):
                    try:
                        await drive(clock, km.get_key(caller, sid, index))
                    except KeyNotFound:
                        continue
                    raise AssertionError(f"index {index} delivered twice")
        finally:
            if net is not None:
                await net.close()
            await bus.close()
            await db.close()


OPS = st.lists(st.sampled_from(["enc", "dec", "get_src", "get_dst"]), min_size=1,
               max_size=12)
# a few failed commits among the first forty (each request takes one to four)
FAULTS = st.dictionaries(st.integers(0, 40), st.just("refused"), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, faults=FAULTS)
def test_store_failing_at_any_commit_delivers_each_key_at_both_ends_or_neither(
        ops: list[Op], faults: dict[int, Fault]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(ops, faults, Path(tmp) / "km.db"))


async def test_a_delivery_whose_commit_fails_is_rolled_back_and_served_on_retry(
        km_db: Database) -> None:
    """The #14 defect: the slave's dec_keys got 503 while the store was down, then "not
    found" for good, while the master held the keys. Now the failed delivery is undone."""
    store = FailingStore()
    bus = MemoryBus()
    clock = VirtualClock()
    with store.install():
        net = await start_net(line_topology(3), bus, km_db, clock, seed=142,
                              idle_timeout_s=1e6)
        try:
            km0, km2 = net.kms["km0"], net.kms["km2"]
            sid = await drive(clock, open_pair(net))
            keys = await drive(clock, km0.enc_keys(CALLER_A, "sc", "sd", 2, 256))
            a0 = await drive(clock, km0.get_key(CALLER_A, sid, None))
            for fault in ("refused", "refused"):
                store.fail({0: fault})  # the commit that marks the keys delivered
                ids = [k.key_id for k in keys]
                try:
                    await drive(clock, km2.dec_keys(CALLER_B, "sd", "sc", ids))
                except CommitFailed:
                    pass
                else:
                    raise AssertionError("dec_keys answered although its commit failed")
                store.fail({0: fault})
                try:
                    await drive(clock, km2.get_key(CALLER_B, sid, None))
                except CommitFailed:
                    pass
                else:
                    raise AssertionError("GET_KEY answered although its commit failed")
            assert store.failed == 4
            got = await drive(clock, km2.dec_keys(CALLER_B, "sd", "sc", ids))
            assert [k.key for k in got] == [k.key for k in keys]
            b0 = await drive(clock, km2.get_key(CALLER_B, sid, None))
            assert (b0.index, b0.key) == (a0.index, a0.key) == (0, a0.key)
            # the undone deliveries were written back as they are now: delivered, once
            await net.restart("km2")
            km2 = net.kms["km2"]
            for call in (km2.dec_keys(CALLER_B, "sd", "sc", ids[:1]),
                         km2.get_key(CALLER_B, sid, 0)):
                try:
                    await drive(clock, call)
                except KeyNotFound:
                    continue
                raise AssertionError("a key was delivered twice")
        finally:
            await net.close()
            await bus.close()


def delivers_at(node: str) -> Callable[[list[RowWrites]], bool]:
    """Whether a commit records a key of ``node`` delivered (its stream's delivered ranges
    change only then)."""
    def check(writes: list[RowWrites]) -> bool:
        return any(w.table.name == "key_streams" and r.get("node") == node
                   for w in writes for r in (*w.inserts, *w.updates))
    return check


async def test_a_failed_enc_keys_batch_is_served_by_the_next_request(km_db: Database) -> None:
    """A batch that reached the slave's KM but not the master (its delivery commit failed)
    is not left behind: the next enc_keys of the pair hands out those same keys."""
    store = FailingStore()
    bus = MemoryBus()
    clock = VirtualClock()
    with store.install():
        net = await start_net(line_topology(3), bus, km_db, clock, seed=143,
                              idle_timeout_s=1e6)
        try:
            km0, km2 = net.kms["km0"], net.kms["km2"]
            await drive(clock, km0.enc_keys(CALLER_A, "sc", "sd", 1, 256))
            store.refuse_if = delivers_at("km0")
            try:
                await drive(clock, km0.enc_keys(CALLER_A, "sc", "sd", 3, 256))
            except CommitFailed:
                pass
            else:
                raise AssertionError("enc_keys answered although its commit failed")
            held = {k.key_id for k in km2.vault.by_id.values() if k.state == "ready"}
            assert len(held) == 4  # the failed batch reached the slave's KM
            store.heal()
            again = await drive(clock, km0.enc_keys(CALLER_A, "sc", "sd", 3, 256))
            assert {k.key_id for k in again} < held  # the same keys, none made anew
            got = await drive(clock, km2.dec_keys(CALLER_B, "sd", "sc",
                                                  [k.key_id for k in again]))
            assert [k.key for k in got] == [k.key for k in again]
        finally:
            await net.close()
            await bus.close()
