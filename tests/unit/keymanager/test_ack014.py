"""ETSI 014 dec_keys with acknowledgement (#14, docs/api/etsi014.md): keys handed out with
``acknowledge`` stay held for their slave until confirmed or until the hold ends.

Real KMs (km0 - km1) on one in-memory bus and one SQLite file, on a virtual clock."""

from __future__ import annotations

import asyncio

import pytest
from tests.support.deadlines import DEADLINE_S
from tests.support.km_net import CALLER_A, CALLER_B, line_topology, start_net

from keyplane.bus.memory import MemoryBus
from keyplane.clock import VirtualClock
from keyplane.errors import AuthenticationFailed, KeyNotFound
from keyplane.keymanager import KmSettings
from keyplane.keymanager.interface import Caller
from keyplane.store import Database
from keyplane.store.kmstate import KmStateStore

HOLD_S = 50.0


async def _net(km_db: Database, clock: VirtualClock):  # type: ignore[no-untyped-def]
    settings = KmSettings(link_reserve_bytes=512, etsi014_ack_hold_s=HOLD_S)
    return await start_net(line_topology(2), MemoryBus(), km_db, clock, settings=settings,
                           seed=77)


async def test_ack_refetch_confirm_double_confirm_and_other_sae(km_db: Database) -> None:
    net = await _net(km_db, VirtualClock())
    try:
        async with asyncio.timeout(DEADLINE_S):
            made = await net.kms["km0"].enc_keys(CALLER_A, "sa", "sb", 2, 256)
        ids = [k.key_id for k in made]
        km1 = net.kms["km1"]
        got = await km1.dec_keys(CALLER_B, "sb", "sa", ids, acknowledge=True)
        again = await km1.dec_keys(CALLER_B, "sb", "sa", ids, acknowledge=True)
        assert [k.key for k in got] == [k.key for k in again] == [k.key for k in made]
        with pytest.raises(AuthenticationFailed):  # another SAE: refused as without ack
            await km1.dec_keys(Caller("CN=x"), "sx", "sa", ids, acknowledge=True)
        assert km1.held_for("sb", "sa") == 2
        async with asyncio.timeout(DEADLINE_S):
            more = await net.kms["km0"].enc_keys(CALLER_A, "sa", "sb", 1, 256)
        out = await km1.dec_keys(CALLER_B, "sb", "sa", [more[0].key_id], confirm=ids)
        assert out[0].key == more[0].key
        assert km1.held_for("sb", "sa") == 0
        with pytest.raises(KeyNotFound):  # confirmed: spent
            await km1.dec_keys(CALLER_B, "sb", "sa", ids[:1], acknowledge=True)
        async with asyncio.timeout(DEADLINE_S):
            last = await net.kms["km0"].enc_keys(CALLER_A, "sa", "sb", 1, 256)
        # confirming twice, or a key fetched without ack, changes nothing
        await km1.dec_keys(CALLER_B, "sb", "sa", [last[0].key_id], acknowledge=True,
                           confirm=[*ids, more[0].key_id])
        # a key_ID unknown here (spent and forgotten, or never made) changes nothing
        await km1.dec_keys(CALLER_B, "sb", "sa", [last[0].key_id], acknowledge=True,
                           confirm=["00000000-0000-7000-8000-000000000000"])
        assert km1.held_for("sb", "sa") == 1
        with pytest.raises(KeyNotFound):  # a key_ID never made here is refused as ever
            await km1.dec_keys(CALLER_B, "sb", "sa", ["00000000-0000-7000-8000-000000000000"],
                               acknowledge=True, confirm=[last[0].key_id])
        assert km1.held_for("sb", "sa") == 1  # the refused call confirmed nothing
    finally:
        await net.close()
        await net.bus.close()


async def test_a_held_key_is_spent_when_its_hold_ends(km_db: Database) -> None:
    clock = VirtualClock()
    net = await _net(km_db, clock)
    try:
        async with asyncio.timeout(DEADLINE_S):
            made = await net.kms["km0"].enc_keys(CALLER_A, "sa", "sb", 1, 256)
        km1 = net.kms["km1"]
        await km1.dec_keys(CALLER_B, "sb", "sa", [made[0].key_id], acknowledge=True)
        await clock.advance(HOLD_S + 1)
        async with asyncio.timeout(DEADLINE_S):
            while km1.held_for("sb", "sa"):
                await asyncio.sleep(0)
        with pytest.raises(KeyNotFound):
            await km1.dec_keys(CALLER_B, "sb", "sa", [made[0].key_id], acknowledge=True)
    finally:
        await net.close()
        await net.bus.close()


async def test_a_restart_between_delivery_and_confirmation_keeps_the_key_held(
        km_db: Database) -> None:
    net = await _net(km_db, VirtualClock())
    try:
        async with asyncio.timeout(DEADLINE_S):
            made = await net.kms["km0"].enc_keys(CALLER_A, "sa", "sb", 1, 256)
        kid = made[0].key_id
        first = await net.kms["km1"].dec_keys(CALLER_B, "sb", "sa", [kid], acknowledge=True)
        km1 = await net.restart("km1")
        again = await km1.dec_keys(CALLER_B, "sb", "sa", [kid], acknowledge=True)
        assert first[0].key == again[0].key == made[0].key
        async with asyncio.timeout(DEADLINE_S):
            nxt = await net.kms["km0"].enc_keys(CALLER_A, "sa", "sb", 1, 256)
        await km1.dec_keys(CALLER_B, "sb", "sa", [nxt[0].key_id], confirm=[kid])
        with pytest.raises(KeyNotFound):
            await km1.dec_keys(CALLER_B, "sb", "sa", [kid], acknowledge=True)
    finally:
        await net.close()
        await net.bus.close()


async def test_a_restart_keeps_the_holds_end(km_db: Database) -> None:
    clock = VirtualClock()
    net = await _net(km_db, clock)
    try:
        async with asyncio.timeout(DEADLINE_S):
            made = await net.kms["km0"].enc_keys(CALLER_A, "sa", "sb", 1, 256)
        kid = made[0].key_id
        await net.kms["km1"].dec_keys(CALLER_B, "sb", "sa", [kid], acknowledge=True)
        # durable before handed out: the hold's end is in the session's row already
        rows = await KmStateStore(km_db).load_sessions("km1")
        ends = [r.config["acked014"][kid] for r in rows if kid in r.config.get("acked014", {})]
        assert ends == [clock.wall() + HOLD_S]
        await clock.advance(HOLD_S * 0.6)
        km1 = await net.restart("km1")
        # a re-fetch after the restart neither restarts nor extends the hold
        again = await km1.dec_keys(CALLER_B, "sb", "sa", [kid], acknowledge=True)
        assert again[0].key == made[0].key
        await clock.advance(HOLD_S * 0.4 + 1)
        async with asyncio.timeout(DEADLINE_S):
            while km1.held_for("sb", "sa"):
                await asyncio.sleep(0)
        with pytest.raises(KeyNotFound):
            await km1.dec_keys(CALLER_B, "sb", "sa", [kid], acknowledge=True)
    finally:
        await net.close()
        await net.bus.close()


async def test_a_hold_that_ended_while_the_km_was_down_ends_at_its_start(
        km_db: Database) -> None:
    clock = VirtualClock()
    net = await _net(km_db, clock)
    try:
        async with asyncio.timeout(DEADLINE_S):
            made = await net.kms["km0"].enc_keys(CALLER_A, "sa", "sb", 1, 256)
        await net.kms["km1"].dec_keys(CALLER_B, "sb", "sa", [made[0].key_id],
                                      acknowledge=True)
        await net.kms["km1"].close()
        await clock.advance(HOLD_S + 1)
        km1 = await net.restart("km1")
        async with asyncio.timeout(DEADLINE_S):
            while km1.held_for("sb", "sa"):
                await asyncio.sleep(0)
        with pytest.raises(KeyNotFound):
            await km1.dec_keys(CALLER_B, "sb", "sa", [made[0].key_id], acknowledge=True)
    finally:
        await net.close()
        await net.bus.close()
