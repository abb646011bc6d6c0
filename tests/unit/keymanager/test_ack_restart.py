"""ETSI 004 GET_KEY with acknowledgement across a KM restart (wave 5, found by the
KM-killed demo): the KM is killed after handing index i out unconfirmed and before the
owner's next GET_KEY confirms it. The restarted KM no longer remembers handing i out
(``Stream.unconfirmed`` is memory only) but still holds it for the owner: the confirmation
must be taken, or the owner's every later GET_KEY is refused and the pair stalls."""

from __future__ import annotations

import pytest
from tests.support.km_net import CALLER_A, CALLER_B, line_topology, open_pair, start_net

from keyplane.bus.memory import MemoryBus
from keyplane.clock import VirtualClock
from keyplane.errors import KeyNotFound
from keyplane.store import Database


async def test_an_index_handed_out_before_a_restart_can_be_confirmed_after_it(
        km_db: Database) -> None:
    bus = MemoryBus()
    net = await start_net(line_topology(2), bus, km_db, VirtualClock(), seed=61)
    try:
        sid = await open_pair(net)
        a0 = await net.kms["km0"].get_key(CALLER_A, sid, 0, acknowledge=True)
        b0 = await net.kms["km1"].get_key(CALLER_B, sid, 0, acknowledge=True)
        assert a0.key == b0.key
        km0 = await net.restart("km0")  # the owner holds index 0, unconfirmed
        a1 = await km0.get_key(CALLER_A, sid, 1, acknowledge=True, confirm=(0,))
        b1 = await net.kms["km1"].get_key(CALLER_B, sid, 1, acknowledge=True, confirm=(0,))
        assert a1.key == b1.key
        with pytest.raises(KeyNotFound):  # confirmed: spent
            await km0.get_key(CALLER_A, sid, 0, acknowledge=True)
        nxt = await km0.get_key(CALLER_A, sid, None, acknowledge=True, confirm=(1,))
        assert nxt.index == 2  # this end's next index moved past the confirmed ones
        with pytest.raises(KeyNotFound):  # an index never handed out nor held: refused
            await km0.get_key(CALLER_A, sid, None, acknowledge=True, confirm=(40,))
    finally:
        await net.close()
        await bus.close()
