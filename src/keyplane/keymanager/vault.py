"""End-to-end keys and session rows a KM keeps, persisted through the journal.

* :class:`KeyVault`: the end-to-end keys an endpoint KM holds, by ``key_ID`` and by
  ``(session, index)``. States: ``pending`` (source: sent, not yet confirmed), ``ready``
  (may be handed to its SAE), ``delivered`` (handed out once; material destroyed). A key is
  written before the frame that carries it leaves the source, and before the destination
  confirms it, so a KM restart loses none; ``delivered`` is written before the bytes are
  returned, so a restart never hands one out twice.
* :class:`SessionRows`: each session's state and configuration (``sessions`` table).

Key ids are UUIDs of version 7 (RFC 9562, :func:`new_key_id`): time-ordered, so the rows a
KM writes per key land at the end of the key table's index instead of on a random page
each (with random version 4 ids a bulk request touched one index page per key).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import select

from keyplane.keymanager.journal import Journal, RowWrites
from keyplane.store import Database
from keyplane.store.models import DeliveredKeyRow, SessionRow

__all__ = ["HeldKey", "KeyState", "KeyVault", "SessionRows", "new_key_id"]

KeyState = Literal["pending", "ready", "delivered"]


def new_key_id(unix_s: float) -> str:
    """A fresh ETSI 014 key_ID: a version 7 UUID (RFC 9562 §5.7) for time ``unix_s``.

    48 bits of Unix milliseconds, then 74 random bits (``secrets``): unguessable like a
    version 4 id, and ordered by creation time (see the module docstring). The time part
    tells whoever sees the id when the key was made, which its holders know anyway.
    """
    ms = int(unix_s * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(secrets.token_bytes(10), "big")
    rand_a, rand_b = (rand >> 62) & 0xFFF, rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=ms << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b))


@dataclass
class HeldKey:
    """One end-to-end key at one endpoint KM (never printed with its bytes)."""

    key_id: str
    session_id: str
    index: int
    size_bits: int
    material: bytes | None = field(repr=False)
    state: KeyState
    sae_id: str | None = None
    peer_sae: str | None = None
    t: float = 0.0
    persisted: bool = False
    provenance: list[dict[str, str]] = field(default_factory=list)
    """The hops the key crossed and each hop's key source (hybrid provisioning)."""


class KeyVault:
    """The end-to-end keys of one KM."""

    def __init__(self, node_id: str, journal: Journal) -> None:
        self.node_id = node_id
        self._journal = journal
        self.by_id: dict[str, HeldKey] = {}
        self.by_index: dict[tuple[str, int], HeldKey] = {}
        # per session: its keys by id, and how many are ready (read on every relayed
        # batch, so kept up to date instead of scanning every key the KM holds)
        self._by_session: dict[str, dict[str, HeldKey]] = {}
        self._ready: dict[str, int] = {}
        # dirty key ids -> whether the provenance changed too (else: state and bytes only)
        self._dirty: dict[str, bool] = {}
        self._gone: set[str] = set()  # persisted keys to delete
        self._last: tuple[dict[str, bool], set[str], list[str]] = ({}, set(), [])
        journal.register(self)

    def _index(self, key: HeldKey) -> None:
        old = self.by_id.get(key.key_id)
        if old is not None and old.state == "ready":
            self._ready[old.session_id] -= 1
            self._by_session.get(old.session_id, {}).pop(old.key_id, None)
        self.by_id[key.key_id] = key
        self.by_index[(key.session_id, key.index)] = key
        self._by_session.setdefault(key.session_id, {})[key.key_id] = key
        if key.state == "ready":
            self._ready[key.session_id] = self._ready.get(key.session_id, 0) + 1

    def add(self, key: HeldKey) -> int:
        """Hold a new key; returns the journal generation that makes it durable."""
        return self.add_all((key,))

    def add_all(self, keys: Iterable[HeldKey]) -> int:
        """Hold new keys (one batch); the journal generation that makes them durable."""
        for key in keys:
            self._index(key)
            self._dirty[key.key_id] = True
        return self._journal.mark()

    def set_state(self, key: HeldKey, state: KeyState) -> int:
        """Change a key's state (``delivered`` destroys its bytes); the generation."""
        return self.set_states((key,), state)

    def set_states(self, keys: Iterable[HeldKey], state: KeyState, *,
                   provenance_changed: bool = False) -> int:
        """Change the state of a batch of keys (and say whether their provenance was set
        too, so it is written); the journal generation."""
        for key in keys:
            if key.state != state and self.by_id.get(key.key_id) is key:
                sid = key.session_id
                self._ready[sid] = self._ready.get(sid, 0) + (state == "ready") - (
                    key.state == "ready")
            key.state = state
            if state == "delivered":
                key.material = None
            if provenance_changed:
                self._dirty[key.key_id] = True
            else:
                self._dirty.setdefault(key.key_id, False)
        return self._journal.mark()

    def touch(self, key: HeldKey) -> int:
        """Mark a key changed (e.g. its provenance); the journal generation."""
        self._dirty[key.key_id] = True
        return self._journal.mark()

    def get(self, session_id: str, index: int) -> HeldKey | None:
        """The key at ``index`` of a stream, if held."""
        return self.by_index.get((session_id, index))

    def of_session(self, session_id: str) -> list[HeldKey]:
        """Every key of a session."""
        return list(self._by_session.get(session_id, {}).values())

    def ready_count(self, session_id: str) -> int:
        """Keys of a session in state ``ready`` (O(1))."""
        return self._ready.get(session_id, 0)

    def drop_session(self, session_id: str) -> tuple[int, int]:
        """Destroy every key of a session; returns ``(freed_bits, generation)``."""
        freed = 0
        for k in self.of_session(session_id):
            if k.state != "delivered":
                freed += k.size_bits
            del self.by_id[k.key_id]
            self.by_index.pop((k.session_id, k.index), None)
            self._dirty.pop(k.key_id, None)
            if k.persisted:
                self._gone.add(k.key_id)
            k.material = None
        self._by_session.pop(session_id, None)
        self._ready.pop(session_id, None)
        return freed, self._journal.mark()

    def snapshot(self) -> RowWrites | None:
        """Journal hook: new and changed keys, dropped sessions."""
        if not self._dirty and not self._gone:
            return None
        node = self.node_id
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for key_id, provenance_changed in self._dirty.items():
            k = self.by_id.get(key_id)
            if k is None:
                continue
            if k.persisted:
                row = {"node": node, "key_id": key_id, "state": k.state,
                       "delivered": k.state == "delivered", "material": k.material}
                if provenance_changed:
                    row["provenance"] = k.provenance
                updates.append(row)
            else:
                inserts.append({
                    "key_id": key_id, "state": k.state, "delivered": k.state == "delivered",
                    "material": k.material, "provenance": k.provenance, "node": node,
                    "session_id": k.session_id, "index": k.index, "size_bits": k.size_bits,
                    "sae_id": k.sae_id, "peer_sae": k.peer_sae, "t": k.t})
                k.persisted = True
        self._last = (dict(self._dirty), set(self._gone), [r["key_id"] for r in inserts])
        gone = [{"node": node, "key_id": k} for k in self._gone]
        self._dirty.clear()
        self._gone.clear()
        return RowWrites(DeliveredKeyRow.__table__,  # type: ignore[arg-type]
                         inserts=inserts, updates=updates, deletes=gone)

    def snapshot_failed(self) -> None:
        """Journal hook: re-mark what the failed transaction carried."""
        dirty, gone, inserted = self._last
        for key_id in inserted:
            k = self.by_id.get(key_id)
            if k is not None:
                k.persisted = False
        for key_id, full in dirty.items():
            self._dirty[key_id] = self._dirty.get(key_id, False) or full
        self._gone |= gone

    async def load(self, db: Database) -> None:
        """Restore held keys from the database (KM start); delivered ones keep no bytes."""
        async with db.session() as s:
            rows = (await s.execute(select(DeliveredKeyRow).where(
                DeliveredKeyRow.node == self.node_id))).scalars().all()
        for r in rows:
            k = HeldKey(r.key_id, r.session_id, r.index, r.size_bits, r.material,
                        r.state,  # type: ignore[arg-type]
                        r.sae_id, r.peer_sae, r.t, persisted=True,
                        provenance=list(r.provenance or []))
            self._index(k)


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

    def snapshot(self) -> RowWrites | None:
        """Journal hook."""
        if not self._dirty:
            return None
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for sid in self._dirty:
            state, data, t = self.rows[sid]
            row = {"session_id": sid, "state": state, "config": dict(data), "updated_t": t}
            if sid in self._persisted:
                updates.append(row)
            else:
                row["node"] = self.node_id
                inserts.append(row)
                self._persisted.add(sid)
        self._last = (set(self._dirty), [r["session_id"] for r in inserts])
        self._dirty.clear()
        return RowWrites(SessionRow.__table__,  # type: ignore[arg-type]
                         inserts=inserts, updates=[{"node": self.node_id, **r} for r in updates])

    def snapshot_failed(self) -> None:
        """Journal hook."""
        dirty, inserted = self._last
        self._persisted -= set(inserted)
        self._dirty |= dirty

    async def load(self, db: Database) -> dict[str, tuple[str, dict[str, Any], float]]:
        """Every persisted session of this node."""
        async with db.session() as s:
            rows = (await s.execute(select(SessionRow).where(
                SessionRow.node == self.node_id))).scalars().all()
        for r in rows:
            self.rows[r.session_id] = (r.state, dict(r.config), r.updated_t)
            self._persisted.add(r.session_id)
        return dict(self.rows)
