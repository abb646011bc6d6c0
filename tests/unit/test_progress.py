"""Waits bounded by progress (keyplane/progress.py): a start that keeps moving is waited
for past any fixed bound; one that stops moving, or outlasts the cap, fails clearly."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from keyplane.progress import NoProgress, file_size, process_cpu_s, wait_progressing


async def test_work_that_keeps_progressing_is_waited_for() -> None:
    reads = [0]
    done = asyncio.Event()

    def gauge() -> float:
        reads[0] += 1
        if reads[0] >= 6:  # it finishes after several polls, each of which saw progress
            done.set()
        return float(reads[0])

    async def work() -> str:
        await done.wait()
        return "ready"

    assert await wait_progressing(work(), [gauge], stall_s=1e6, cap_s=1e6, what="w",
                                  poll_s=0.001) == "ready"


async def test_work_without_progress_fails_after_the_stall_bound() -> None:
    never = asyncio.Event()
    with pytest.raises(NoProgress, match="no progress for"):
        await wait_progressing(never.wait(), [lambda: 1.0, lambda: None], stall_s=0.01,
                               cap_s=1e6, what="w", poll_s=0.001)


async def test_the_cap_bounds_work_that_progresses_forever() -> None:
    never = asyncio.Event()
    n = [0.0]

    def rising() -> float:
        n[0] += 1
        return n[0]

    with pytest.raises(NoProgress, match="the cap"):
        await wait_progressing(never.wait(), [rising], stall_s=1e6, cap_s=0.01, what="w",
                               poll_s=0.001)


def test_gauges_read_this_process_and_a_file(tmp_path: Path) -> None:
    cpu = process_cpu_s(os.getpid())
    before = cpu()
    assert before is not None and before >= 0.0
    sum(i * i for i in range(300_000))  # some CPU: the gauge never goes down
    after = cpu()
    assert after is not None and after >= before
    log = tmp_path / "log"
    size = file_size(log)
    assert size() is None
    log.write_text("starting\n")
    assert size() == 9.0
    assert process_cpu_s(2**22 + 7)() is None  # no such process
