"""The one injectable clock behind every timer and every emulated link.

Every element takes a :class:`Clock` and reads time only through ``clock.now()``,
waits only through ``clock.sleep()`` and bounds waits on peers' logic (idle timers,
peer-wait timeouts, link frame pacing) only through ``clock.wait_for()``. That keeps
embedded, distributed and test runs on one code path:

* :class:`RealClock` follows the event loop's monotonic time.
* :class:`VirtualClock` stands still until a test calls :meth:`VirtualClock.advance`,
  which wakes sleepers in deadline order, so an hour of idle timers runs in
  milliseconds and deterministically.

Transport-level timeouts (a bus request waiting for a reply on a socket) are real-world
durations and use ``asyncio.timeout``; protocol timers use this clock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["Clock", "RealClock", "VirtualClock"]

T = TypeVar("T")


class Clock(ABC):
    """Source of time for all keyplane logic (seconds as float)."""

    @abstractmethod
    def now(self) -> float:
        """Monotonic seconds; only differences are meaningful."""

    @abstractmethod
    def wall(self) -> float:
        """Seconds since the Unix epoch, consistent with :meth:`now` (for event stamps)."""

    @abstractmethod
    async def sleep(self, delay_s: float) -> None:
        """Suspend the caller for ``delay_s`` seconds of this clock's time."""

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-heavy ``fn(*args)`` (numpy work that releases the GIL) off the event loop.

        The real clock runs it in a worker thread so that other elements in the process keep
        answering; the virtual clock runs it inline, because ``advance()`` promises that all
        work due at a time is done before time moves on, which a thread would break.
        """
        return await asyncio.to_thread(fn, *args)

    async def sleep_until(self, deadline: float) -> None:
        """Suspend until ``now() >= deadline``."""
        delay = deadline - self.now()
        if delay > 0:
            await self.sleep(delay)

    async def wait_for(self, aw: Awaitable[T], timeout_s: float | None) -> T:
        """Await ``aw`` but give up after ``timeout_s`` seconds of this clock.

        Raises:
            TimeoutError: the clock reached the deadline first; ``aw`` is cancelled.
        """
        if timeout_s is None:
            return await aw
        task = asyncio.ensure_future(aw)
        timer = asyncio.ensure_future(self.sleep(max(0.0, timeout_s)))
        try:
            done, _ = await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                return task.result()
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            raise TimeoutError(f"timed out after {timeout_s} s")
        finally:
            timer.cancel()
            if not task.done():
                task.cancel()


class RealClock(Clock):
    """Wall-clock time from the running event loop (monotonic) and ``time.time``."""

    def __init__(self) -> None:
        self._offset = time.time() - time.monotonic()

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return self._offset + time.monotonic()

    async def sleep(self, delay_s: float) -> None:
        await asyncio.sleep(max(0.0, delay_s))

    async def wait_for(self, aw: Awaitable[T], timeout_s: float | None) -> T:
        """As :meth:`Clock.wait_for`, on the loop's own timer: no task per call.

        The generic version races ``aw`` against a sleep in two tasks; on real time a
        deadline on the current task does the same for a fraction of the cost (the key
        manager waits like this several times per key request).
        """
        if timeout_s is None:
            return await aw
        try:
            async with asyncio.timeout(max(0.0, timeout_s)):
                return await aw
        except TimeoutError:
            raise TimeoutError(f"timed out after {timeout_s} s") from None


class VirtualClock(Clock):
    """A clock that only moves when a test advances it.

    Sleepers are kept in a heap by deadline. :meth:`advance` moves time forward
    step by step, resolving each sleeper at its own deadline and letting the
    event loop run everything that became ready before taking the next step, so
    timers fire in the order they would in real time.
    """

    def __init__(self, start: float = 0.0, epoch: float = 1_700_000_000.0) -> None:
        self._now = start
        self._epoch = epoch
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._epoch + self._now

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)

    @property
    def pending_sleepers(self) -> int:
        """How many sleeps are waiting (cancelled ones excluded)."""
        return sum(1 for _, _, fut in self._heap if not fut.done())

    def deadlines(self) -> list[float]:
        """Deadlines of the live sleepers, earliest first (a test waits for a timer to be
        armed before it moves the clock past it)."""
        return sorted(d for d, _, fut in self._heap if not fut.done())

    def next_deadline(self) -> float | None:
        """Deadline of the earliest live sleeper, or None."""
        while self._heap and self._heap[0][2].done():
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    async def sleep(self, delay_s: float) -> None:
        if delay_s <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (self._now + delay_s, next(self._seq), fut))
        await fut

    async def advance(self, delta_s: float) -> None:
        """Move time forward by ``delta_s``, firing every timer due on the way."""
        if delta_s < 0:
            raise ValueError("a clock cannot go backwards")
        target = self._now + delta_s
        await settle()
        while True:
            deadline = self.next_deadline()
            if deadline is None or deadline > target:
                break
            _, _, fut = heapq.heappop(self._heap)
            self._now = max(self._now, deadline)
            fut.set_result(None)
            await settle()
        self._now = target
        await settle()

    async def run_for(self, duration_s: float, step_s: float = 0.01) -> None:
        """Advance in small steps (for loops that also wait on I/O between timers)."""
        end = self._now + duration_s
        while self._now < end:
            await self.advance(min(step_s, end - self._now))


async def settle(max_rounds: int = 1000) -> None:
    """Yield to the event loop until no callback is ready (or ``max_rounds``).

    Used by :class:`VirtualClock` so that work woken by a timer (and work it wakes
    in turn, e.g. an in-memory bus round trip) completes before time moves on.
    """
    loop = asyncio.get_running_loop()
    for _ in range(max_rounds):
        await asyncio.sleep(0)
        ready = getattr(loop, "_ready", None)
        if ready is not None and len(ready) == 0:
            # one more round: a callback may have scheduled a task that starts next tick
            await asyncio.sleep(0)
            if len(ready) == 0:
                return
