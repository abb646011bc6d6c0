"""The forwarding table: session -> (previous KM, next KM, epoch), per KM.

Written only by Admission Control's SessionConfig / SessionDelete (paper Fig. 2b); a KM
never learns the whole path, only its own hop.

Reroute: a SessionConfig with a higher ``epoch`` becomes the session's *current* entry and
new relays use it. Entries of older epochs are kept until Admission Control deletes them
with ``SessionDelete(epoch=n)``, so frames already in flight on the old path still find
their way (an intermediate KM forwards a frame by the frame's own epoch). A configuration
with a lower epoch than the current one is refused as stale.
"""

from __future__ import annotations

from dataclasses import dataclass

from keyplane.messages import HopRole, SessionConfig

__all__ = ["ForwardingEntry", "ForwardingTable"]


@dataclass(frozen=True)
class ForwardingEntry:
    """One hop of one session at one KM."""

    session_id: str
    epoch: int
    role: HopRole
    prev_km: str | None
    next_km: str | None
    hybrid_policy: str = "qkd-only"
    """The session's hybrid policy (which key sources this KM's hops may use)."""
    priority: int = 0
    """The session's priority: its weight in the shares of scarce link key at every hop."""

    @classmethod
    def from_config(cls, cfg: SessionConfig) -> ForwardingEntry:
        """The entry a SessionConfig describes."""
        return cls(cfg.session_id, cfg.epoch, cfg.role, cfg.prev_km, cfg.next_km,
                   cfg.hybrid_policy, cfg.priority)


class ForwardingTable:
    """Per-KM table of sessions' hops, by epoch."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[int, ForwardingEntry]] = {}

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def apply(self, cfg: SessionConfig) -> bool:
        """Install ``cfg``'s hop; False (and no change) if its epoch is below the current one."""
        epochs = self._entries.setdefault(cfg.session_id, {})
        if epochs and cfg.epoch < max(epochs):
            return False
        epochs[cfg.epoch] = ForwardingEntry.from_config(cfg)
        return True

    def current(self, session_id: str) -> ForwardingEntry | None:
        """The entry of the highest epoch (what new relays use), or None."""
        epochs = self._entries.get(session_id)
        return epochs[max(epochs)] if epochs else None

    def at(self, session_id: str, epoch: int) -> ForwardingEntry | None:
        """The entry of exactly ``epoch`` (what an in-flight frame follows), or None."""
        return self._entries.get(session_id, {}).get(epoch)

    def remove_epoch(self, session_id: str, epoch: int) -> bool:
        """Drop one epoch's entry (old path after a reroute); True if it existed."""
        epochs = self._entries.get(session_id)
        if not epochs or epoch not in epochs:
            return False
        del epochs[epoch]
        if not epochs:
            del self._entries[session_id]
        return True

    def remove(self, session_id: str) -> bool:
        """Drop every entry of a session; True if any existed."""
        return self._entries.pop(session_id, None) is not None

    def epochs(self, session_id: str) -> dict[int, ForwardingEntry]:
        """Every live entry of a session, by epoch."""
        return dict(self._entries.get(session_id, {}))

    def sessions(self) -> list[str]:
        """Session ids with at least one entry."""
        return list(self._entries)
