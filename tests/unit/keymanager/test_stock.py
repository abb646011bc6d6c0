"""The ETSI 014 key stock (#15, keymanager/stock.py, docs/api/etsi014.md "Key stock").

The pure rule first (demand window, adaptive target, one refill in flight, back-off), then
real KMs on one in-memory bus and one SQLite file, on a virtual clock (so every request of a
test falls in one demand window): a busy pair's one-key requests are served from keys
relayed ahead, each key handed out once and readable once at the slave, and the stock is
discarded with its session, survives a restart as spares, respects the token bucket, the
request's key size and its required provenance, and is not made when the link is short.
"""

from __future__ import annotations

import asyncio

import pytest
from tests.support.deadlines import DEADLINE_S, eventually
from tests.support.km_net import CALLER_A, CALLER_B, KmNet, line_topology, start_net

from keyplane.bus.memory import MemoryBus
from keyplane.clock import VirtualClock
from keyplane.errors import KeyNotFound, KeyplaneError, RateLimited
from keyplane.keymanager import KmSettings
from keyplane.keymanager.core import Stream
from keyplane.keymanager.hybrid import PROVENANCE_EXTENSION
from keyplane.keymanager.interface import DeliveredKey
from keyplane.keymanager.session import SessionMachine
from keyplane.keymanager.stock import StockDemand, note_request, refill_count, refill_done
from keyplane.keymanager.stream import claim_indexes, fresh_indexes
from keyplane.store import Database

W = 1.0  # demand window, s


# ---- the pure rule -------------------------------------------------------------------
def test_no_stock_until_the_pair_asks_often_then_at_most_its_demand() -> None:
    d = StockDemand()
    for _ in range(3):
        note_request(d, 1, 32, 0.0, W)
    assert refill_count(d, 0, 32, 4, 0.1, W) == 0  # 3 requests < min_requests
    note_request(d, 1, 32, 0.2, W)
    assert refill_count(d, 0, 32, 4, 0.3, W) == 4  # target = 4 keys asked in the window
    assert d.inflight
    assert refill_count(d, 0, 32, 4, 0.3, W) == 0  # never two refills in flight
    refill_done(d, True, 0.4, W)
    for _ in range(60):
        note_request(d, 1, 32, 0.5, W)
    assert refill_count(d, 17, 32, 4, 0.5, W) == 0  # above half the target (32)
    assert refill_count(d, 16, 32, 4, 0.5, W) == 16  # capped at 32
    refill_done(d, False, 0.6, W)
    assert refill_count(d, 0, 32, 4, 1.5, W) == 0  # a failed refill waits a window
    assert refill_count(d, 0, 32, 4, 1.7, W) == 32  # the previous window still counts
    refill_done(d, True, 1.8, W)
    assert refill_count(d, 0, 32, 4, 3.8, W) == 0  # a whole window without requests: none


def test_bulk_requests_and_cap_zero_make_no_stock() -> None:
    d = StockDemand()
    for _ in range(20):
        note_request(d, 33, 32, 0.0, W)  # above the cap: bulk, relays its own
    assert refill_count(d, 0, 32, 4, 0.0, W) == 0
    off = StockDemand()
    for _ in range(20):
        note_request(off, 1, 0, 0.0, W)
    assert refill_count(off, 0, 0, 4, 0.0, W) == 0


def test_a_ready_spare_is_claimed_only_if_usable_and_a_refill_takes_fresh_indexes() -> None:
    s = Stream("s", SessionMachine("s"), "sa", "sb", interface="etsi014")
    s.spare, s.next_gen = [0, 1, 2, 3], 4
    states = {0: ("ready", 256), 1: ("pending", 256), 2: ("ready", 256), 3: ("delivered", 256)}

    def key(_sid: str, i: int) -> tuple[str, int] | None:
        return states.get(i)
    # a ready spare (a stock key after a restart) the request's policy refuses is kept
    assert claim_indexes(s, 2, 256, key, usable=lambda i: i == 2) == [1, 2]
    assert s.spare == [0]
    assert fresh_indexes(s, 3) == [4, 5, 6] and s.next_gen == 7 and s.spare == [0]
    assert claim_indexes(s, 2, 256, key) == [0, 7]


# ---- real KMs --------------------------------------------------------------------------
CAP, MIN = 8, 4


async def _net(km_db: Database, nodes: int = 2, **control: object) -> KmNet:
    fields: dict[str, object] = {"link_reserve_bytes": 512, "etsi014_stock_keys": CAP,
                                 "etsi014_stock_min_requests": MIN,
                                 "keystore_low_water_bits": 8192}
    fields.update(control.pop("settings", {}))  # type: ignore[call-overload]
    settings = KmSettings.model_validate(fields)
    return await start_net(line_topology(nodes), MemoryBus(), km_db, VirtualClock(),
                           settings=settings, seed=15, blocks=8, **control)


def _stream(net: KmNet) -> Stream:
    km0 = net.kms["km0"]
    return km0.core.streams[km0.core.pairs[("sa", "sb")]]


async def _enc(net: KmNet, number: int = 1, size: int = 256,
               extensions: dict[str, object] | None = None) -> list[DeliveredKey]:
    async with asyncio.timeout(DEADLINE_S):
        return list(await net.kms["km0"].enc_keys(CALLER_A, "sa", "sb", number, size,
                                                  extensions=extensions))


async def _stocked(net: KmNet, requests: int = MIN) -> tuple[list[DeliveredKey], list[str]]:
    """``requests`` one-key requests, then the refill they start: (keys, stock key_IDs)."""
    made = [k for _ in range(requests) for k in await _enc(net)]
    s = _stream(net)
    await eventually(lambda: not s.demand.inflight and len(s.stock) > 0, "a stock refill")
    vault = net.kms["km0"].vault
    ids = []
    for i in s.stock:
        k = vault.get(s.session_id, i)
        assert k is not None and k.state == "ready"
        ids.append(k.key_id)
    return made, ids


async def _read_once(net: KmNet, keys: list[DeliveredKey]) -> None:
    """The slave reads every key with the master's bytes, once."""
    km_last = net.kms[f"km{len(net.kms) - 1}"]
    got = await km_last.dec_keys(CALLER_B, "sb", "sa", [k.key_id for k in keys])
    assert [k.key for k in got] == [k.key for k in keys]
    with pytest.raises(KeyNotFound):
        await km_last.dec_keys(CALLER_B, "sb", "sa", [keys[0].key_id])


@pytest.mark.parametrize("nodes", [2, 3], ids=["adjacent", "2-hop"])
async def test_a_busy_pair_is_served_from_its_stock_each_key_once(km_db: Database,
                                                                  nodes: int) -> None:
    net = await _net(km_db, nodes)
    try:
        made, stock_ids = await _stocked(net)
        assert len(stock_ids) == MIN  # the demand of the window (MIN keys), below the cap
        s = _stream(net)
        slave = net.kms[f"km{nodes - 1}"]
        # stock keys are held at the slave too, and counted there (it cannot tell them
        # from keys handed out and not yet fetched): documented in docs/api/etsi014.md
        assert slave.held_for("sb", "sa") == len(made) + len(stock_ids)
        # the master's Status counts what its link can carry plus its stock
        st = await net.kms["km0"].status(CALLER_A, "sa", "sb")
        store = net.kms["km0"].link_store("km1")
        assert st.stored_key_count == (store.sendable_bytes - 32) // 32 + len(stock_ids)
        frames = sum(net.kms["km0"].relay.hop_keys.hops_sent.values())
        first = await _enc(net)
        assert first[0].key_id == stock_ids[0]  # handed out from the stock, no relay
        assert sum(net.kms["km0"].relay.hop_keys.hops_sent.values()) == frames
        assert stock_ids[0] not in [net.kms["km0"].vault.get(s.session_id, i).key_id  # type: ignore[union-attr]
                                    for i in s.stock]
        more = [k for _ in range(3 * CAP) for k in await _enc(net)]
        keys = made + first + more
        assert len({k.key_id for k in keys}) == len(keys)  # none handed out twice
        await _read_once(net, keys)
        await eventually(lambda: not s.demand.inflight, "the last refill")
        # what the slave still holds is exactly the master's stock
        assert slave.held_for("sb", "sa") == len(s.stock) > 0
    finally:
        await net.close()
        await net.bus.close()


async def test_session_end_discards_the_stock_at_both_ends(km_db: Database) -> None:
    net = await _net(km_db)
    try:
        made, stock_ids = await _stocked(net)
        await _read_once(net, made)
        sid = _stream(net).session_id
        assert net.kms["km1"].held_for("sb", "sa") == len(stock_ids)
        await net.control.delete(sid)
        assert net.kms["km1"].held_for("sb", "sa") == 0
        assert net.kms["km0"].vault.ready_count(sid) == 0
        assert all(net.kms["km0"].vault.by_id.get(i) is None for i in stock_ids)
    finally:
        await net.close()
        await net.bus.close()


async def test_after_a_master_restart_the_stock_is_handed_out_not_lost(km_db: Database) -> None:
    net = await _net(km_db)
    try:
        made, stock_ids = await _stocked(net)
        await _read_once(net, made)
        await net.restart("km0")
        after = [k for _ in stock_ids for k in await _enc(net)]
        assert sorted(k.key_id for k in after) == sorted(stock_ids)  # the stock, as spares
        fresh = await _enc(net)
        assert fresh[0].key_id not in stock_ids
        await _read_once(net, after + fresh)
    finally:
        await net.close()
        await net.bus.close()


async def test_after_a_slave_restart_the_stock_is_still_readable(km_db: Database) -> None:
    net = await _net(km_db)
    try:
        made, stock_ids = await _stocked(net)
        await net.restart("km1")
        after = [k for _ in stock_ids for k in await _enc(net)]
        assert [k.key_id for k in after] == stock_ids  # served from the stock
        await _read_once(net, made + after)
    finally:
        await net.close()
        await net.bus.close()


async def test_the_token_bucket_is_charged_at_hand_out_not_at_refill(km_db: Database) -> None:
    # 12 keys of 256 bits in the bucket, a rate that refills none within a request's wait
    net = await _net(km_db, bucket_size_bits=12 * 256, token_rate_bps=1.0)
    try:
        made, stock_ids = await _stocked(net)
        keys = made + [k for _ in range(12 - len(made)) for k in await _enc(net)]
        assert stock_ids[0] in {k.key_id for k in keys}  # the stock served some
        with pytest.raises(RateLimited):  # keys in stock, but the bucket is empty
            await _enc(net)
        await _read_once(net, keys)
    finally:
        await net.close()
        await net.bus.close()


async def test_another_key_size_or_a_bulk_request_relays_its_own(km_db: Database) -> None:
    net = await _net(km_db)
    try:
        made, stock_ids = await _stocked(net)
        s = _stream(net)
        before = list(s.stock)
        big = await _enc(net, 1, 512)
        assert len(big[0].key) == 64 and big[0].key_id not in stock_ids
        bulk = await _enc(net, CAP + 1)
        assert not {k.key_id for k in bulk} & set(stock_ids)
        assert s.stock == before  # neither touched the stock
        await _read_once(net, made + big + bulk)
    finally:
        await net.close()
        await net.bus.close()


def _require(policy: str) -> dict[str, object]:
    return {"extension_mandatory": [{PROVENANCE_EXTENSION: policy}]}


async def test_a_stock_key_is_handed_out_only_if_it_meets_the_required_provenance(
        km_db: Database) -> None:
    # the session's policy is "either"; its stock is made from QKD key (preferred)
    net = await _net(km_db, hybrid_policy="either")
    try:
        made, stock_ids = await _stocked(net)
        s = _stream(net)
        qkd = await _enc(net, extensions=_require("qkd-only"))  # narrower, met: the stock
        assert qkd[0].key_id == stock_ids[0]
        before = list(s.stock)
        # combined (QKD + ML-KEM) hops required: no stock key has them; its own relay
        # fails here (no ML-KEM identity), and the stock is left as it was
        with pytest.raises(KeyplaneError):
            await _enc(net, extensions=_require("qkd-and-pqc"))
        assert s.stock == before
        await _read_once(net, made + qkd)
    finally:
        await net.close()
        await net.bus.close()


async def test_no_stock_when_the_link_is_short_of_key(km_db: Database) -> None:
    # the low-water mark above all the link holds: a refill would drain a scarce link
    net = await _net(km_db, settings={"keystore_low_water_bits": 1 << 24})
    try:
        made = [k for _ in range(3 * MIN) for k in await _enc(net)]
        s = _stream(net)
        assert s.stock == [] and not s.demand.inflight
        assert s.demand.retry_at > float("-inf")  # it wanted one, and backs off
        assert net.kms["km1"].held_for("sb", "sa") == len(made)
        await _read_once(net, made)
    finally:
        await net.close()
        await net.bus.close()
