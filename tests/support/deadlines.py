"""How long tests wait for something to become true, in one place.

Tests wait on events and readiness, never on sleeps; each wait still has a bound so that a
broken build fails instead of hanging. The bound is generous by default (a heavily
oversubscribed 2-core machine must pass) and a setting: ``KEYPLANE_TEST_DEADLINE_S``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from keyplane.clock import VirtualClock

DEADLINE_S = float(os.environ.get("KEYPLANE_TEST_DEADLINE_S", "300"))
"""Upper bound of any wait for readiness or a condition in the tests, seconds."""


async def eventually(pred: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S,
                     interval_s: float = 0.002) -> None:
    """Wait until ``pred()`` holds: for work another task, thread or process finishes (a bus
    delivery, a SQLite commit in its thread) that no event announces. The poll interval
    orders nothing; the bound only keeps a broken build from hanging.

    Raises:
        AssertionError: ``pred()`` did not hold within ``timeout_s`` (names ``what``).
    """
    try:
        async with asyncio.timeout(timeout_s):
            while not pred():
                await asyncio.sleep(interval_s)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}") from None


async def timer_armed(clock: VirtualClock, at: float) -> None:
    """Wait until something sleeps on ``clock`` until ``at`` (e.g. a request's timeout), so
    that advancing the clock past ``at`` fires it instead of passing it by."""
    await eventually(lambda: at in clock.deadlines(), f"a timer at t={at:g} on the clock")
