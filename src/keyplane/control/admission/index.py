"""Admission Control's indexes over its sessions, so no event scans all of them (issue #15:
setup at 10,000 live sessions within 2x of the 10th).

* :class:`DeadlineHeap` — the earliest peer-wait or session-timer deadline in O(log n),
  amortised. A KeepAlive (one per served key request) only moves a session timer *later*,
  so the heap is not touched then: each armed entry may lie *earlier* than the deadline it
  stands for and is moved to the real one when it reaches the top ("lazy re-arm"). An entry
  whose deadline was cleared, or whose session is gone, is dropped when it reaches the top
  (lazy deletion). At most one live entry per ``(session, kind)``; a deadline moved earlier
  (not done today) pushes a new entry and leaves the old one stale.
* :class:`LiveCounts` — live (not terminated) sessions per user, kept on every state
  change (open, pairing, termination, forgetting) for the SLA's ``max_sessions`` check.

ETSI 004 pairing needs no index of its own: opens pair by Key_stream_ID only
(:meth:`~.core.AdmissionCore.session` is a dict lookup).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable

__all__ = ["DeadlineHeap", "DeadlineKey", "LiveCounts"]

DeadlineKey = tuple[str, str]
"""``(session_id, kind)``; kind is ``"peer"`` (ETSI 004 peer wait) or ``"timer"``."""


class DeadlineHeap:
    """Deadlines of many keys; the earliest one in O(log n) amortised.

    Args:
        current: the deadline ``key`` stands for now (None: cleared, or the session is
            gone). The heap is told only when a deadline is set (:meth:`arm`), never when
            it is cleared or moved later; it asks ``current`` when an entry reaches the top.
    """

    def __init__(self, current: Callable[[DeadlineKey], float | None]) -> None:
        self._current = current
        self._heap: list[tuple[float, DeadlineKey]] = []
        self._armed: dict[DeadlineKey, float] = {}  # key → its one live heap entry

    def __len__(self) -> int:
        """Heap entries, stale ones included (bounded by twice the live keys plus the
        deadlines moved earlier since they last reached the top)."""
        return len(self._heap)

    def arm(self, key: DeadlineKey, at: float) -> None:
        """``key``'s deadline was set to ``at`` (push only when it is earlier than the
        entry the key has: a later deadline is found when that entry reaches the top)."""
        armed = self._armed.get(key)
        if armed is None or at < armed:
            self._armed[key] = at
            heapq.heappush(self._heap, (at, key))

    def disarm(self, *keys: DeadlineKey) -> None:
        """Forget ``keys`` (their session is gone); their entries become stale."""
        for key in keys:
            self._armed.pop(key, None)

    def earliest(self) -> tuple[float, DeadlineKey] | None:
        """The earliest deadline and its key, after settling stale entries at the top."""
        heap = self._heap
        while heap:
            at, key = heap[0]
            if self._armed.get(key) != at:
                heapq.heappop(heap)  # superseded by an earlier entry, or disarmed
                continue
            actual = self._current(key)
            if actual is None:
                heapq.heappop(heap)
                del self._armed[key]
            elif actual > at:  # moved later (a keep-alive): re-arm at the real deadline
                heapq.heapreplace(heap, (actual, key))
                self._armed[key] = actual
            else:
                return actual, key
        return None

    def pop_due(self, now: float) -> DeadlineKey | None:
        """Remove and return the key of the earliest deadline if it is at or before ``now``."""
        top = self.earliest()
        if top is None or top[0] > now:
            return None
        heapq.heappop(self._heap)
        del self._armed[top[1]]
        return top[1]

    def armed(self) -> dict[DeadlineKey, float]:
        """Each key's live entry (for consistency checks)."""
        return dict(self._armed)


class LiveCounts:
    """How many live sessions each user takes part in."""

    def __init__(self) -> None:
        self._users: dict[str, frozenset[str]] = {}  # session → the users it counts for
        self._count: Counter[str] = Counter()

    def set(self, session_id: str, users: Iterable[str]) -> None:
        """``session_id`` is live for ``users`` now (empty: not live)."""
        new = frozenset(users)
        old = self._users.pop(session_id, frozenset())
        if new:
            self._users[session_id] = new
        for u in old - new:
            self._count[u] -= 1
            if not self._count[u]:
                del self._count[u]
        for u in new - old:
            self._count[u] += 1

    def of(self, user_id: str) -> int:
        """Live sessions ``user_id`` takes part in."""
        return self._count.get(user_id, 0)

    def counts(self) -> dict[str, int]:
        """Every user's count (for consistency checks)."""
        return dict(self._count)
