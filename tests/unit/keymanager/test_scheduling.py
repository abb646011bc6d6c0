"""Token bucket and priority queue cores (pure), including hypothesis properties."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.keymanager.scheduling import PriorityQueues, TokenBucket


@settings(max_examples=200, deadline=None, derandomize=True)
@given(size=st.integers(1, 10_000), rate=st.floats(0, 1e5),
       ops=st.lists(st.tuples(st.floats(0, 5), st.integers(1, 12_000), st.booleans()),
                    max_size=40))
def test_token_bucket_never_exceeds_its_size(size: int, rate: float,
                                             ops: list[tuple[float, int, bool]]) -> None:
    b = TokenBucket(size, rate, 0.0)
    now = 0.0
    for dt, bits, refund in ops:
        now += dt
        assert b.level(now) <= size
        wait = b.reserve(bits, now, max_wait_s=2.0)
        if wait is not None and refund:
            b.refund(bits, now)
        assert b.level(now) <= size


@settings(max_examples=100, deadline=None, derandomize=True)
@given(size=st.integers(256, 4096), rate=st.floats(10, 1e4), n=st.integers(1, 50))
def test_token_bucket_serves_back_to_back_requests_at_the_configured_rate(
        size: int, rate: float, n: int) -> None:
    b = TokenBucket(size, rate, 0.0)
    bits = 256
    waits = [b.reserve(bits, 0.0, math.inf) for _ in range(n)]
    assert all(w is not None for w in waits)
    # everything beyond the initial burst is paced at exactly `rate`
    last = waits[-1]
    assert last is not None
    expected = max(0.0, (n * bits - size) / rate)
    assert math.isclose(last, expected, rel_tol=1e-9, abs_tol=1e-9)


def test_token_bucket_refuses_a_wait_longer_than_the_timeout_and_reserves_nothing() -> None:
    b = TokenBucket(512, 256.0, 0.0)
    assert b.reserve(512, 0.0, 0.0) == 0.0
    assert b.reserve(256, 0.0, 0.5) is None  # would need 1 s
    assert b.level(0.0) == 0.0
    assert b.reserve(256, 0.0, 1.0) == 1.0


def test_token_bucket_request_above_size_is_refused_even_with_patience() -> None:
    b = TokenBucket(100, 1e6, 0.0)
    assert b.reserve(101, 0.0, 1e9) is None


def test_token_bucket_reconfigure_clamps_to_new_size_and_changes_rate() -> None:
    b = TokenBucket(1000, 10.0, 0.0)
    b.reconfigure(300, 100.0, 1.0)
    assert b.level(1.0) == 300
    assert b.reserve(300, 1.0, 0.0) == 0.0
    assert b.wait_for(100, 1.0) == 1.0


def test_priority_queues_serve_higher_priority_first_then_fifo() -> None:
    q: PriorityQueues[str] = PriorityQueues(aging_interval_s=100.0, limit=10)
    for name, prio in [("a1", 1), ("c5", 5), ("b3", 3), ("d5", 5), ("e0", 0)]:
        assert q.push(name, prio, 0.0)
    assert [q.pop(0.0) for _ in range(5)] == ["c5", "d5", "b3", "a1", "e0"]
    assert q.pop(0.0) is None


def test_priority_queues_aging_lets_an_old_low_priority_request_overtake() -> None:
    q: PriorityQueues[str] = PriorityQueues(aging_interval_s=1.0, limit=10)
    q.push("old-low", 0, 0.0)
    q.push("new-high", 4, 4.5)
    # at t=5 the old request has waited 5 intervals: effective 5 > 4
    assert q.pop(5.0) == "old-low"
    assert q.pop(5.0) == "new-high"


def test_priority_queues_limit_refuses_beyond_it() -> None:
    q: PriorityQueues[int] = PriorityQueues(aging_interval_s=1.0, limit=2)
    assert q.push(1, 0, 0.0) and q.push(2, 7, 0.0)
    assert not q.push(3, 7, 0.0)
    assert len(q) == 2
    assert q.remove(2) and len(q) == 1
