"""The fault matrix's pause for a stock of link key before each fault
(keyplane.faultmatrix.stock_links): requests that spend key wait, the ones in flight end,
and the links' new blocks are counted from the processes' event files as they grow."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from keyplane.cluster import EventTail, LocalCluster
from keyplane.events import Event, EventType
from keyplane.faultmatrix import Ledger, MatrixSettings, Traffic, fault_topology, stock_links
from tests.support.deadlines import DEADLINE_S


def _block(n: int, link: str, secret_bits: int, t: float | None = None) -> str:
    t = time.monotonic() if t is None else t
    return Event(event_id=n, seq=n, t=t, wall=t, type=EventType.link_block, element="qkd",
                 node="km0", data={"link": link, "secret_bits": secret_bits}
                 ).model_dump_json() + "\n"


def _append(f: Path, text: str) -> None:
    with open(f, "a") as fh:
        fh.write(text)


def _traffic(settings: MatrixSettings) -> Traffic:
    return Traffic(cast(LocalCluster, None), Ledger(), settings, pair_014=("a", "b"),
                   pair_004=("c", "d"))


def test_the_tail_reads_complete_new_lines_only(tmp_path: Path) -> None:
    f = tmp_path / "events-km0.jsonl"
    f.write_text(_block(1, "x", 8))
    tail = EventTail(tmp_path, contains='"link_block"')
    assert tail.new() == []  # what was there before the tail was made
    line = _block(2, "x", 16)
    _append(f, line[:20])  # a line being written
    assert tail.new() == []
    _append(f, line[20:] + '{"not": "an event"}\n')
    (tmp_path / "events-km1.jsonl").write_text(_block(3, "y", 24))  # a new process's file
    assert [e.event_id for e in tail.new()] == [2, 3]
    assert tail.new() == []


async def test_paused_requests_wait_and_quiet_waits_for_those_in_flight() -> None:
    traffic = _traffic(MatrixSettings())
    release = asyncio.Event()
    calls: list[str] = []

    async def request(name: str) -> str:
        calls.append(name)
        await release.wait()
        return name

    first = asyncio.create_task(traffic._spend(lambda: request("in flight")))
    while not calls:
        await asyncio.sleep(0)
    traffic.pause()
    held = asyncio.create_task(traffic._spend(lambda: request("held")))
    quiet = asyncio.create_task(traffic.quiet())
    for _ in range(20):
        await asyncio.sleep(0)
    assert calls == ["in flight"] and not quiet.done()
    release.set()
    await quiet
    assert await first == "in flight" and calls == ["in flight"]  # held while paused
    traffic.resume()
    assert await held == "held"


async def _stock_with(tmp_path: Path, blocks: list[tuple[int, int]], timeout_s: float
                      ) -> tuple[bool, Traffic]:
    """:func:`stock_links` for 2,048 bytes per direction while ``(link index, bytes per
    direction)`` blocks are written once the traffic paused (one block written before the
    pause counts for nothing)."""
    settings = MatrixSettings(stock_bytes=2048, stock_poll_s=0.01, stock_timeout_s=timeout_s)
    traffic = _traffic(settings)
    cluster: Any = SimpleNamespace(state=tmp_path, topology=fault_topology())
    links = [link.link_id for link in fault_topology().links]
    f = tmp_path / "events-km0.jsonl"
    f.write_text(_block(1, links[0], 10**6, t=0.0))
    task = asyncio.create_task(stock_links(cast(LocalCluster, cluster), traffic, settings))
    while traffic._open.is_set():  # until it paused (and took its start time)
        await asyncio.sleep(0)
    for n, (link, nbytes) in enumerate(blocks, start=2):
        _append(f, _block(n, links[link], 16 * nbytes))
    return await task, traffic


async def test_stock_waits_for_every_link_then_resumes(tmp_path: Path) -> None:
    ok, traffic = await _stock_with(tmp_path, [(0, 2048), (1, 1024), (1, 1024)],
                                    timeout_s=DEADLINE_S)
    assert ok is True and traffic._open.is_set()


async def test_stock_is_not_made_while_one_link_is_short(tmp_path: Path) -> None:
    # the second link made half its stock, then nothing: the wait ends on its timeout
    # (not on the first link's stock, nor on the block written before the pause)
    ok, traffic = await _stock_with(tmp_path, [(0, 2048), (1, 1024)], timeout_s=0.05)
    assert ok is False and traffic._open.is_set()


async def test_stock_gives_up_when_no_link_makes_a_block(tmp_path: Path) -> None:
    settings = MatrixSettings(stock_bytes=64, stock_timeout_s=0.05, stock_poll_s=0.01)
    traffic = _traffic(settings)
    cluster: Any = SimpleNamespace(state=tmp_path, topology=fault_topology())
    assert await stock_links(cast(LocalCluster, cluster), traffic, settings) is False
    assert traffic._open.is_set()  # the traffic goes on
