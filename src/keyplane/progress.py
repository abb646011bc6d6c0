"""Waits bounded by progress: keep waiting while the awaited work still moves, up to a cap.

Why: a fixed total bound on a start-up is a guess about the machine. On a busy 2-core
machine a node process took 150-240 s to start (wave 4, load 22-42) and failed against
fixed 120 s and 300 s bounds while it was still working. A process that is still being
given CPU (or still writing its log) is not stuck; one that has made no progress for
``stall_s`` is, and a cap still bounds the whole wait so a broken build cannot hang.

:func:`wait_progressing` takes progress *gauges*: functions returning a number that grows
while the work moves (a process's CPU seconds from ``/proc``, a log file's size, lines
read). Any gauge rising counts as progress.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

__all__ = ["NoProgress", "file_size", "process_cpu_s", "wait_progressing"]

T = TypeVar("T")

Gauge = Callable[[], float | None]
"""A number that grows while the work moves (None: cannot be read now)."""

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class NoProgress(TimeoutError):
    """The awaited work made no progress for ``stall_s``, or did not finish within the cap."""


def process_cpu_s(pid: int) -> Gauge:
    """A gauge of ``pid``'s CPU seconds (user + system, its own and its reaped children's),
    read from ``/proc`` (None where there is no ``/proc`` or the process is gone)."""
    path = f"/proc/{pid}/stat"

    def read() -> float | None:
        try:
            raw = Path(path).read_text()
        except OSError:
            return None
        fields = raw.rsplit(")", 1)[-1].split()
        # after the command: state(0) ... utime(11) stime(12) cutime(13) cstime(14)
        try:
            return sum(int(f) for f in fields[11:15]) / _TICKS
        except (ValueError, IndexError):
            return None
    return read


def file_size(path: Path) -> Gauge:
    """A gauge of a file's size (a process's log growing)."""
    def read() -> float | None:
        try:
            return float(path.stat().st_size)
        except OSError:
            return None
    return read


async def wait_progressing(work: Awaitable[T], gauges: Sequence[Gauge], *, stall_s: float,
                           cap_s: float, what: str, poll_s: float = 1.0) -> T:
    """Await ``work`` while any gauge rises at least once every ``stall_s``, at most ``cap_s``.

    Raises:
        NoProgress: no gauge rose for ``stall_s``, or ``cap_s`` passed (``work`` is
            cancelled); its message says which and how long it waited.
    """
    task = asyncio.ensure_future(work)
    start = last_move = time.monotonic()
    seen: list[float | None] = [g() for g in gauges]
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            now = time.monotonic()
            for i, g in enumerate(gauges):
                v = g()
                if v is not None and (seen[i] is None or v > (seen[i] or 0.0)):
                    last_move = now
                    seen[i] = v
            if now - start >= cap_s:
                raise NoProgress(f"{what}: not done after {cap_s:g} s (the cap), though "
                                 f"still progressing {now - last_move:.0f} s ago")
            if now - last_move >= stall_s:
                raise NoProgress(f"{what}: no progress for {stall_s:g} s (waited "
                                 f"{now - start:.0f} s)")
    finally:
        if not task.done():
            task.cancel()
