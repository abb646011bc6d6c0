import asyncio

import pytest

from keyplane.clock import RealClock, VirtualClock


async def test_virtual_clock_fires_sleepers_in_deadline_order(clock: VirtualClock) -> None:
    fired: list[tuple[str, float]] = []

    async def sleeper(name: str, delay: float) -> None:
        await clock.sleep(delay)
        fired.append((name, clock.now()))

    tasks = [asyncio.create_task(sleeper(n, d)) for n, d in [("c", 3), ("a", 1), ("b", 2)]]
    await clock.advance(2.5)
    assert fired == [("a", 1.0), ("b", 2.0)]
    await clock.advance(1.0)
    assert fired[-1] == ("c", 3.0)
    assert clock.now() == 3.5
    await asyncio.gather(*tasks)


async def test_virtual_clock_wait_for_times_out_on_clock_time(clock: VirtualClock) -> None:
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(clock.wait_for(never, 10.0))
    await clock.advance(9.9)
    assert not task.done()
    await clock.advance(0.2)
    with pytest.raises(TimeoutError):
        await task
    assert never.cancelled()


async def test_virtual_clock_wait_for_returns_result_before_deadline(clock: VirtualClock) -> None:
    async def quick() -> int:
        await clock.sleep(1)
        return 42

    task = asyncio.create_task(clock.wait_for(quick(), 5.0))
    await clock.advance(1.0)
    assert await task == 42
    assert clock.pending_sleepers == 0


async def test_virtual_clock_refuses_to_go_backwards(clock: VirtualClock) -> None:
    with pytest.raises(ValueError):
        await clock.advance(-1)


async def test_real_clock_sleep_and_wall_are_consistent() -> None:
    c = RealClock()

    def offset() -> tuple[float, float]:
        """Bounds of ``wall() - now()`` at one instant (now() read on both sides of wall(),
        so a preemption between the calls widens the bounds instead of failing)."""
        before = c.now()
        wall = c.wall()
        after = c.now()
        return wall - after, wall - before

    lo0, hi0 = offset()
    t0 = c.now()
    await c.sleep(0.01)
    assert c.now() - t0 >= 0.009
    lo1, hi1 = offset()
    assert lo1 <= hi0 + 1e-6 and lo0 <= hi1 + 1e-6  # the same offset: the intervals meet
