"""Pure cores for pacing and ordering key requests: token buckets and priority queues.

* :class:`TokenBucket` (one per session, paper Fig. 2b): ``bucket_size_bits`` is the burst,
  ``token_rate_bps`` the average rate, both from Admission Control's SessionConfig and
  reconfigurable. A request *reserves* its bits at once and is told how long to wait until
  the reservation is covered (the "debt" form of a token bucket: tokens may go negative,
  never above the size). Concurrent requests of one session are therefore served in arrival
  order at exactly the configured rate; a request whose wait exceeds its QoS timeout is
  refused before it reserves anything (:meth:`TokenBucket.reserve` returns ``None``).
* :class:`PriorityQueues` (one per KM): requests wait in one FIFO per priority level (0-7,
  larger first, the SLA's priority from SessionConfig, never the application's claim).
  Anti-starvation by aging: a request's effective priority is
  ``priority + floor(waited / aging_interval_s)``, so a low-priority request waiting long
  enough overtakes fresh high-priority ones; ties go to the older request. Only the head of
  each level can win (heads are the oldest of their level), so :meth:`PriorityQueues.pop` is
  O(levels).

All times are the clock's ``now`` passed in; nothing here sleeps.
"""

from __future__ import annotations

import collections
import itertools
import math
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["PriorityQueues", "TokenBucket"]

T = TypeVar("T")

PRIORITY_LEVELS = 8


@dataclass
class TokenBucket:
    """A token bucket in bits.

    Args:
        size_bits: the burst (the bucket never holds more).
        rate_bps: refill rate; 0 means only the initial burst is ever available.
        now: creation time; the bucket starts full.
    """

    size_bits: int
    rate_bps: float
    now: float
    tokens: float = field(init=False)

    def __post_init__(self) -> None:
        if self.size_bits < 1 or self.rate_bps < 0:
            raise ValueError("a token bucket needs size_bits >= 1 and rate_bps >= 0")
        self.tokens = float(self.size_bits)
        self._t = self.now

    def _refill(self, now: float) -> None:
        if now > self._t:
            self.tokens = min(float(self.size_bits), self.tokens + (now - self._t) * self.rate_bps)
            self._t = now

    def level(self, now: float) -> float:
        """Tokens available at ``now`` (negative while reservations are outstanding)."""
        self._refill(now)
        return self.tokens

    def wait_for(self, bits: int, now: float) -> float:
        """Seconds until ``bits`` could be taken (``inf`` if never), reserving nothing."""
        self._refill(now)
        if bits > self.size_bits:
            return math.inf
        missing = bits - self.tokens
        if missing <= 0:
            return 0.0
        return math.inf if self.rate_bps == 0 else missing / self.rate_bps

    def reserve(self, bits: int, now: float, max_wait_s: float) -> float | None:
        """Reserve ``bits`` and return the wait before using them, or ``None`` (refused).

        A request is refused when the wait would exceed ``max_wait_s`` or ``bits`` exceeds
        the bucket size; nothing is reserved then.
        """
        wait = self.wait_for(bits, now)
        if wait > max_wait_s:
            return None
        self.tokens -= bits
        return wait

    def refund(self, bits: int, now: float) -> None:
        """Return an unused reservation (the request failed before using its bits)."""
        self._refill(now)
        self.tokens = min(float(self.size_bits), self.tokens + bits)

    def reconfigure(self, size_bits: int, rate_bps: float, now: float) -> None:
        """Apply new Admission Control figures, keeping the current level (clamped)."""
        if size_bits < 1 or rate_bps < 0:
            raise ValueError("a token bucket needs size_bits >= 1 and rate_bps >= 0")
        self._refill(now)
        self.size_bits = size_bits
        self.rate_bps = rate_bps
        self.tokens = min(self.tokens, float(size_bits))


@dataclass
class _Entry(Generic[T]):
    item: T
    priority: int
    t: float
    seq: int


class PriorityQueues(Generic[T]):
    """Per-priority FIFOs with aging (see the module docstring).

    Args:
        aging_interval_s: waited time worth one priority level.
        limit: maximum queued items (:meth:`push` returns False beyond it).
    """

    def __init__(self, aging_interval_s: float, limit: int) -> None:
        self.aging_interval_s = aging_interval_s
        self.limit = limit
        self._levels: list[collections.deque[_Entry[T]]] = [
            collections.deque() for _ in range(PRIORITY_LEVELS)]
        self._seq = itertools.count()
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def push(self, item: T, priority: int, now: float) -> bool:
        """Queue ``item`` at ``priority`` (clamped to 0-7); False if the queues are full."""
        if self._n >= self.limit:
            return False
        level = min(PRIORITY_LEVELS - 1, max(0, priority))
        self._levels[level].append(_Entry(item, level, now, next(self._seq)))
        self._n += 1
        return True

    def effective_priority(self, priority: int, t: float, now: float) -> int:
        """``priority`` plus one level per ``aging_interval_s`` waited since ``t``."""
        return priority + int(max(0.0, now - t) // self.aging_interval_s)

    def pop(self, now: float) -> T | None:
        """The item with the highest effective priority (older first on ties), or None."""
        best: _Entry[T] | None = None
        best_key: tuple[int, int] | None = None
        for q in self._levels:
            if not q:
                continue
            head = q[0]
            key = (self.effective_priority(head.priority, head.t, now), -head.seq)
            if best_key is None or key > best_key:
                best, best_key = head, key
        if best is None:
            return None
        self._levels[best.priority].popleft()
        self._n -= 1
        return best.item

    def remove(self, item: T) -> bool:
        """Drop ``item`` if still queued (a cancelled or timed-out request)."""
        for q in self._levels:
            for e in q:
                if e.item is item:
                    q.remove(e)
                    self._n -= 1
                    return True
        return False
