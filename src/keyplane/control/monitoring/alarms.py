"""Alarm latches: raise at once, clear only after a stable recovery (no flapping).

A latch follows one alarm kind on one link. It is raised as soon as its *raise*
condition holds. Once raised it clears only when (1) its *clear* condition — stricter
than "not raised": that is the hysteresis — has held without a break for ``clear_hold_s``
and (2) it has been up at least ``min_hold_s``. Any sample that breaks the clear
condition restarts the wait. So a constant fault whose measurements wander around the
threshold keeps one alarm up for as long as it lasts, and a route computed while the
fault is there never sees the link healthy (issue #17: an alarm cleared 1.3 s after it
was raised, with the fault still on, and came back).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["AlarmLatch", "Transition"]

Transition = Literal["raised", "cleared"] | None


@dataclass
class AlarmLatch:
    """One alarm kind on one link (clock times; pure)."""

    raised_t: float | None = None
    clear_since: float | None = None

    @property
    def raised(self) -> bool:
        """Whether the alarm is up."""
        return self.raised_t is not None

    def update(self, raise_now: bool, clear_ok: bool, now: float, *, min_hold_s: float,
               clear_hold_s: float) -> Transition:
        """Take one evaluation of the conditions at ``now``.

        Args:
            raise_now: the raise condition holds.
            clear_ok: the (stricter) clear condition holds.
            min_hold_s: least time the alarm stays up.
            clear_hold_s: how long ``clear_ok`` must hold without a break.

        Returns:
            ``"raised"`` or ``"cleared"`` when the latch changed, else ``None``.
        """
        if self.raised_t is None:
            if raise_now:
                self.raised_t, self.clear_since = now, None
                return "raised"
            return None
        if raise_now or not clear_ok:
            self.clear_since = None
            return None
        if self.clear_since is None:
            self.clear_since = now
        if now - self.clear_since >= clear_hold_s and now - self.raised_t >= min_hold_s:
            self.raised_t = self.clear_since = None
            return "cleared"
        return None

    def due(self, *, min_hold_s: float, clear_hold_s: float) -> float | None:
        """When a pending clear could happen if the clear condition keeps holding."""
        if self.raised_t is None or self.clear_since is None:
            return None
        return max(self.clear_since + clear_hold_s, self.raised_t + min_hold_s)
