"""Each session's row (``sessions`` table) at one KM, persisted through the journal.

Split from :mod:`keyplane.keymanager.vault` (which re-exports it) to keep modules small.
"""

from __future__ import annotations

from typing import Any

from keyplane.keymanager.journal import Journal
from keyplane.store import Database
from keyplane.store.kmstate import KmStateStore, SessionRecord, SessionWrites

__all__ = ["SessionRows"]


class SessionRows:
    """Each session's persisted state and configuration at one KM."""

    def __init__(self, node_id: str, journal: Journal) -> None:
        self.node_id = node_id
        self._journal = journal
        self.rows: dict[str, tuple[str, dict[str, Any], float]] = {}
        self._persisted: set[str] = set()
        self._dirty: set[str] = set()
        self._last: tuple[set[str], list[str]] = (set(), [])
        journal.register(self)

    def put(self, session_id: str, state: str, data: dict[str, Any], t: float) -> int:
        """Write a session's row (state + JSON data); the journal generation."""
        self.rows[session_id] = (state, data, t)
        self._dirty.add(session_id)
        return self._journal.mark()

    def snapshot(self) -> SessionWrites | None:
        """Journal hook."""
        if not self._dirty:
            return None
        out = SessionWrites(self.node_id)
        inserted: list[str] = []
        for sid in self._dirty:
            state, data, t = self.rows[sid]
            new = sid not in self._persisted
            out.rows.append(SessionRecord(sid, state, dict(data), t, new=new))
            if new:
                inserted.append(sid)
                self._persisted.add(sid)
        self._last = (set(self._dirty), inserted)
        self._dirty.clear()
        return out

    def snapshot_failed(self) -> None:
        """Journal hook."""
        dirty, inserted = self._last
        self._persisted -= set(inserted)
        self._dirty |= dirty

    async def load(self, db: Database) -> dict[str, tuple[str, dict[str, Any], float]]:
        """Every persisted session of this node.

        Raises:
            StoreError: the database failed.
        """
        store = self._journal.store if self._journal.database is db else KmStateStore(db)
        for r in await store.load_sessions(self.node_id):
            self.rows[r.session_id] = (r.state, r.config, r.updated_t)
            self._persisted.add(r.session_id)
        return dict(self.rows)
