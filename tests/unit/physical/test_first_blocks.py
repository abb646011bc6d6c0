"""Runners sharing a first-block gate (a link worker): first blocks one link at a time."""

from __future__ import annotations

import asyncio
import contextlib

from keyplane.clock import VirtualClock
from keyplane.config import PostProcessing, QuantumLink
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.physical import LinkRunner, MemoryKeySink
from keyplane.physical.runner import FIRST_BLOCK_GATE_FRAMES


def _link(a: str, b: str, *, enabled: bool = True) -> QuantumLink:
    return QuantumLink(endpoints=(a, b), length_km=10.0, enabled=enabled,
                       postprocessing=PostProcessing(block_size_bits=50_000))


def _order(events: MemorySink) -> list[str]:
    return [str(e.data["link"]) for e in events.of_type(EventType.link_block)]


async def _run(clock: VirtualClock, links: list[QuantumLink], *, until_blocks: int,
               gate: asyncio.Lock | None) -> tuple[MemorySink, list[LinkRunner]]:
    events = MemorySink()
    stream = EventStream(clock, [events])
    runners = [LinkRunner(link, clock=clock, seed=i, alice_sink=MemoryKeySink(),
                          bob_sink=MemoryKeySink(), events=stream, first_block_gate=gate)
               for i, link in enumerate(links)]
    async with contextlib.AsyncExitStack() as stack:
        for r in runners:
            await stack.enter_async_context(r)
        step = min(r.frame_duration_s for r in runners)
        for _ in range(400):
            if len(_order(events)) >= until_blocks:
                break
            await clock.advance(step)
    return events, runners


async def test_first_blocks_come_one_link_after_another(
        clock: VirtualClock) -> None:
    links = [_link("a", "b"), _link("a", "c"), _link("a", "d")]
    events, runners = await _run(clock, links, until_blocks=6, gate=asyncio.Lock())
    order = _order(events)
    # each link's first block in start order; a link's second block may come right after its
    # first (one frame can complete two blocks while the link holds the gate), so the order of
    # first appearances is what the gate decides
    assert list(dict.fromkeys(order))[:3] == ["a-b", "a-c", "a-d"]
    assert len(order) >= 6  # and they go on producing afterwards
    assert all(r.stats.delivered_blocks >= 1 for r in runners)


async def test_a_link_that_makes_no_block_lets_the_next_one_start_after_its_frames(
        clock: VirtualClock) -> None:
    cut, ok = _link("a", "b", enabled=False), _link("a", "c")
    events, runners = await _run(clock, [cut, ok], until_blocks=1, gate=asyncio.Lock())
    assert _order(events) == ["a-c"]
    assert runners[0].stats.delivered_blocks == 0
    assert runners[0].stats.frames >= FIRST_BLOCK_GATE_FRAMES


async def test_without_a_gate_links_run_independently(clock: VirtualClock) -> None:
    events, runners = await _run(clock, [_link("a", "b"), _link("a", "c")], until_blocks=2,
                                 gate=None)
    assert sorted(_order(events)[:2]) == ["a-b", "a-c"]
