"""End-to-end keys and session rows a KM keeps, persisted through the journal.

* :class:`KeyVault`: the end-to-end keys an endpoint KM holds, by ``key_ID`` and by
  ``(session, index)``. States: ``pending`` (source: sent, not yet confirmed), ``ready``
  (may be handed to its SAE), ``delivered`` (handed out once; material destroyed). A key is
  written before the frame that carries it leaves the source, and before the destination
  confirms it, so a KM restart loses none; ``delivered`` is written before the bytes are
  returned, so a restart never hands one out twice.
* :class:`SessionRows` (:mod:`~keyplane.keymanager.sessionrows`): each session's state and
  configuration (``sessions`` table).

Persistence is per *batch*, not per key (issue #15): the keys added together (one relay
batch) share one row of the store's ``key_batches``, rewritten when any of them changes
state, so a batch of n keys costs one row write per commit instead of n, and concurrent
state changes of one batch coalesce into one write. A batch with every key handed out is
deleted (its sealed bytes with it); what stays is the stream's *delivered ranges*
(``key_streams``: merged ``[start, end)`` index ranges), which is what keeps a restarted KM
from making or handing out an index twice. The ranges row is written in the commit that
deletes a batch row (or would have inserted it), not at every hand-out: until then the
batch's own row records which of its keys were handed out (state ``d``), and a KM's start
adds those to the ranges it reads, so a one-key hand-out from a stored batch (an ETSI 014
stock key) writes one row, not two (#15).

Memory per live session is bounded by the keys it holds: the vault remembers the last
``spent_memory`` delivered keys (by id, for ETSI 014's "already delivered" and "not yours"
answers; by index, for a retried relay batch) and, beyond that, only the ranges. A delivered
key stays in the indexes it was held in, marked by its state, until it is forgotten: a
hand-out then changes no index, and one dict per lookup (by id, by session and index) holds
both kinds (a bulk hand-out of 1,000 keys did five dict writes per key before, #15).

Key ids are UUIDs of version 7 (RFC 9562, :func:`new_key_id`): time-ordered, so the rows a
KM writes land at the end of the table's indexes instead of on a random page each.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Iterable, Mapping

from keyplane.keymanager.heldkey import STATE, Batch, HeldKey, KeyState
from keyplane.keymanager.indexranges import add_indexes, in_ranges, remove_index
from keyplane.keymanager.journal import Journal
from keyplane.keymanager.keyids import new_key_id, new_key_ids
from keyplane.keymanager.sessionrows import SessionRows
from keyplane.store import Database
from keyplane.store.kmstate import KeyWrites, KmStateStore, StreamRecord

__all__ = ["HeldKey", "KeyState", "KeyVault", "SessionRows", "new_key_id", "new_key_ids"]
_EMPTY: dict[int, HeldKey] = {}  # a session with none (read only: never written to)


class _Stream:
    __slots__ = ("delivered", "persisted")

    def __init__(self, delivered: list[list[int]] | None = None, persisted: bool = False
                 ) -> None:
        self.delivered = delivered if delivered is not None else []
        self.persisted = persisted


class KeyVault:
    """The end-to-end keys of one KM.

    Args:
        node_id: the KM's node.
        journal: the KM's journal (the vault registers itself).
        spent_memory: delivered keys remembered by id (oldest forgotten first).
    """

    def __init__(self, node_id: str, journal: Journal, *, spent_memory: int = 10_000) -> None:
        self.node_id = node_id
        self._journal = journal
        self._spent_memory = spent_memory
        # held keys and the remembered delivered ones (state "delivered"), by id and by
        # session, then index (see the module docstring)
        self._keys: dict[str, HeldKey] = {}
        self._at: dict[str, dict[int, HeldKey]] = {}
        # per session: how many keys are ready (read on every relayed batch, so kept up to
        # date instead of scanning every key the KM holds)
        self._ready: dict[str, int] = {}
        self._streams: dict[str, _Stream] = {}
        # per session: one past the highest index ever held, remembered or delivered here,
        # so a lookup of a fresh batch (every index at or past it) touches no index
        self._end: dict[str, int] = {}
        # how many delivered keys _keys remembers; they are in _spent_order, oldest first
        # (a key undelivered and delivered again may appear twice there, and one replaced
        # by another key of its id stays there: forgetting checks identity and state)
        self._spent = 0
        self._spent_order: deque[HeldKey] = deque()
        self.by_id: Mapping[str, HeldKey] = self._keys
        """Held keys and the recently delivered ones, by key id (read-only)."""
        self._dirty: dict[str, Batch] = {}
        self._gone: set[str] = set()  # persisted batches to delete
        self._maybe: set[str] = set()  # inserts a failed commit may have landed
        self._dirty_streams: set[str] = set()
        self._gone_streams: set[str] = set()
        self._last: tuple[list[Batch], set[str], list[Batch], set[str], set[str],
                          list[_Stream]] = ([], set(), [], set(), set(), [])
        journal.register(self)

    # ---- indexes ------------------------------------------------------------------------
    def _index(self, key: HeldKey) -> None:
        old = self._keys.get(key.key_id)
        if old is not None and old is not key:
            if old.state == "delivered":  # remembered: forgotten for the held key
                self._drop_spent(old)
            else:
                self._unindex(old)
                if old.batch is not None:
                    self._relayout(old.batch, old)
        self._keys[key.key_id] = key
        self._at.setdefault(key.session_id, {})[key.index] = key
        if key.index >= self._end.get(key.session_id, 0):
            self._end[key.session_id] = key.index + 1
        if key.state == "ready" and old is not key:
            self._ready[key.session_id] = self._ready.get(key.session_id, 0) + 1

    def _unindex(self, key: HeldKey) -> None:
        """Take a held key out of the indexes."""
        del self._keys[key.key_id]
        at = self._at.get(key.session_id, _EMPTY)
        if at.get(key.index) is key:
            del at[key.index]
        if key.state == "ready":
            self._ready[key.session_id] -= 1

    def _relayout(self, batch: Batch, leaving: HeldKey) -> None:
        """A key left ``batch`` (replaced by another object with its id): the batch's row
        layout changes, so its row is replaced by a new one."""
        batch.keys.remove(leaving)
        batch.layout = None
        leaving.batch = None
        if leaving.state != "delivered":
            batch.left -= 1
        self._dirty.pop(batch.batch_id, None)
        if self._drop_row(batch):
            batch.batch_id = str(uuid.uuid4())
            batch.persisted = False
        if batch.left:
            self._dirty[batch.batch_id] = batch
        else:
            batch.dead = True
            if batch.session_id in self._streams and any(
                    k.state == "delivered" for k in batch.keys):
                self._dirty_streams.add(batch.session_id)  # its row said which were handed out

    def _deliver(self, keys: Iterable[HeldKey]) -> None:
        """``set_states(keys, "delivered")`` in one pass (a bulk delivery is one batch of
        one session): each held key is marked, its bytes dropped (it stays in the indexes,
        remembered: see the module docstring), its batch is marked (or goes when none of
        it is left); then the indexes join the ranges and the oldest remembered go."""
        by_id, ready = self._keys, self._ready
        groups: dict[str, list[HeldKey]] = {}
        last: str | None = None
        group: list[HeldKey] = []
        last_batch: Batch | None = None
        run = 0  # keys of last_batch in the current run
        was_ready = 0  # of the current session
        died: set[str] = set()  # sessions a batch of which is left with no key to hand out
        for key in keys:
            state = key.state
            if state == "delivered" or by_id.get(key.key_id) is not key:
                if state != "delivered":  # a key no vault holds (dropped, or never
                    key.state = "delivered"  # added): nothing to write
                    key.material = None
                continue
            sid = key.session_id
            if sid != last:  # looked up once per session
                if was_ready:
                    ready[last] -= was_ready  # type: ignore[index]  # last is set then
                    was_ready = 0
                last = sid
                group = groups.setdefault(sid, [])
            if state == "ready":
                was_ready += 1
            key.state = "delivered"
            key.material = None
            group.append(key)
            batch = key.batch
            if batch is not last_batch:  # a batch's keys come together: counted per run
                if last_batch is not None and self._spent_from(last_batch, run):
                    died.add(last_batch.session_id)
                last_batch, run = batch, 0
            run += 1
        if last_batch is not None and self._spent_from(last_batch, run):
            died.add(last_batch.session_id)
        if was_ready:
            ready[last] -= was_ready  # type: ignore[index]
        for sid, group in groups.items():
            self._spent += len(group)
            self._spent_order.extend(group)
            stream = self._streams.get(sid)
            if stream is None:
                stream = self._streams[sid] = _Stream()
            # the stream's row is written when a batch row goes (see the module docstring):
            # until then the batch's own row says which of its keys were handed out
            if add_indexes(stream.delivered, [k.index for k in group]) and sid in died:
                self._dirty_streams.add(sid)
        if groups:
            self._forget_spent()

    def _spent_from(self, batch: Batch, n: int) -> bool:
        """``n`` keys of ``batch`` were handed out: its row is rewritten (fewer bytes held),
        or deleted when none of it is left (True: then its stream's row must be written)."""
        self._dirty[batch.batch_id] = batch
        batch.left -= n
        batch.full = True
        if batch.left <= 0:
            batch.dead = True
            del self._dirty[batch.batch_id]
            self._drop_row(batch)
            return True
        return False

    def _drop_row(self, batch: Batch) -> bool:
        """Queue the deletion of ``batch``'s row if it has one, or may have (an insert a
        failed commit may have landed); whether it did."""
        if not (batch.persisted or batch.batch_id in self._maybe):
            return False
        self._maybe.discard(batch.batch_id)
        self._gone.add(batch.batch_id)
        return True

    def _remember_spent(self, key: HeldKey) -> None:
        """Remember a delivered key read at start (a held key of its id or index keeps
        its place: it is what a lookup finds first)."""
        old = self._keys.get(key.key_id)
        if old is None or (old is not key and old.state == "delivered"):
            if old is not None:
                self._drop_spent(old)
            self._keys[key.key_id] = key
            self._spent += 1
        at = self._at.setdefault(key.session_id, {})
        held = at.get(key.index)
        if held is None or held.state == "delivered":
            at[key.index] = key
        self._spent_order.append(key)
        if key.index >= self._end.get(key.session_id, 0):
            self._end[key.session_id] = key.index + 1
        self._forget_spent()

    def _drop_spent(self, old: HeldKey) -> None:
        """Forget one remembered delivered key (its _spent_order entry is skipped later)."""
        if self._keys.get(old.key_id) is old:
            del self._keys[old.key_id]
            self._spent -= 1
        at = self._at.get(old.session_id, _EMPTY)
        if at.get(old.index) is old:
            del at[old.index]

    def _forget_spent(self) -> None:
        """Forget the oldest delivered keys beyond ``spent_memory``."""
        by_id, order, at_of = self._keys, self._spent_order, self._at
        last: str | None = None
        of = _EMPTY
        excess = self._spent - self._spent_memory
        if excess > 0:
            self._spent = self._spent_memory  # once the excess below is forgotten
        while excess > 0:
            old = order.popleft()
            if old.state != "delivered" or by_id.get(old.key_id) is not old:
                continue  # undelivered (or dropped, or replaced) since; or a second entry
            del by_id[old.key_id]
            excess -= 1
            if old.session_id != last:  # the oldest keys come a batch at a time
                last = old.session_id
                of = at_of.get(last, _EMPTY)
            if of.get(old.index) is old:
                del of[old.index]
        if len(order) > 2 * self._spent + 1024:  # entries of keys no longer remembered
            self._spent_order = deque(k for k in order if k.state == "delivered"
                                      and by_id.get(k.key_id) is k)

    # ---- changes ------------------------------------------------------------------------
    def add(self, key: HeldKey) -> int:
        """Hold a new key; returns the journal generation that makes it durable."""
        return self.add_all((key,))

    def add_all(self, keys: Iterable[HeldKey]) -> int:
        """Hold new keys (one batch per session); the journal generation that makes them
        durable."""
        fresh: dict[str, list[HeldKey]] = {}
        by_id, at_of, ends = self._keys, self._at, self._end
        last: str | None = None
        group: list[HeldKey] = []
        held_at: dict[int, HeldKey] = {}
        for key in keys:
            if key.state == "delivered":
                continue
            if key.batch is not None and not key.batch.dead and by_id.get(key.key_id) is key:
                self._dirty[key.batch.batch_id] = key.batch  # held already: rewrite it
                key.batch.full = True  # (its bytes may be new: a direct relay's)
                continue
            sid = key.session_id
            if sid != last:  # a relay batch is one session: looked up once
                last = sid
                group = fresh.setdefault(sid, [])
                held_at = at_of.setdefault(sid, {})
            group.append(key)
            if key.key_id in by_id or key.state == "ready":
                self._index(key)  # replaces a key of its id, or counts as ready
                continue
            by_id[key.key_id] = key  # a new pending key: _index's work, inline
            held_at[key.index] = key
            if key.index >= ends.get(sid, 0):
                ends[sid] = key.index + 1
        for sid, ks in fresh.items():
            batch = Batch(sid, ks, held=True)  # no delivered key was taken above
            for k in ks:
                k.batch = batch
            self._dirty[batch.batch_id] = batch
        return self._journal.mark()

    def set_state(self, key: HeldKey, state: KeyState) -> int:
        """Change a key's state (``delivered`` destroys its bytes); the generation."""
        return self.set_states((key,), state)

    def set_states(self, keys: Iterable[HeldKey], state: KeyState, *,
                   provenance_changed: bool = False) -> int:
        """Change the state of a batch of keys (``provenance_changed``: their provenance
        was set too; it is written with the state either way); the journal generation."""
        if state == "delivered":  # destroys the bytes: see _deliver
            self._deliver(keys)
            return self._journal.mark()
        by_id, dirty, ready, last = self._keys, self._dirty, self._ready, None
        to_ready = state == "ready"
        counts: dict[str, int] = {}  # change of each session's ready count
        for key in keys:
            if key.state == "delivered" or by_id.get(key.key_id) is not key:
                if key.state != "delivered":  # a key no vault holds (dropped, or never
                    key.state = state         # added): nothing to write
                continue
            batch = key.batch
            if batch is not last and batch is not None:  # a batch's keys come together
                dirty[batch.batch_id] = batch
                last = batch
            was = key.state
            if was == state:
                continue
            if to_ready or was == "ready":
                sid = key.session_id
                counts[sid] = counts.get(sid, 0) + to_ready - (was == "ready")
            key.state = state
        for sid, n in counts.items():
            ready[sid] = ready.get(sid, 0) + n
        return self._journal.mark()

    def undeliver(self, keys: Iterable[HeldKey], materials: Iterable[bytes]) -> int:
        """Undo ``set_states(keys, "delivered")`` whose commit failed (the KM never handed
        the keys out): each key still remembered as delivered is held ``ready`` again with
        its bytes, its index leaves the delivered ranges, its batch row is written again.

        Runs inside the failed commit (``Journal.on_rollback``), after the vault re-marked
        what that commit carried, so the next commit writes this state. A batch whose row
        that commit was to delete gets its old row deleted and is written under a new id
        (as ``_relayout`` does), so it never depends on whether the delete landed.
        Returns the journal generation (0 if nothing was undone).
        """
        back = 0
        for key, material in zip(keys, materials, strict=True):
            if key.state != "delivered" or self._keys.get(key.key_id) is not key:
                continue
            sid = key.session_id
            self._spent -= 1  # held again (its _spent_order entry is skipped when reached)
            stream = self._streams.get(sid)
            if stream is not None and remove_index(stream.delivered, key.index):
                self._dirty_streams.add(sid)
            key.state = "ready"
            key.material = material
            self._at.setdefault(sid, {})[key.index] = key
            self._ready[sid] = self._ready.get(sid, 0) + 1
            batch = key.batch
            if batch is not None:
                batch.left += 1
                batch.full = True
                if batch.dead:
                    # whether the failed commit deleted its row is unknown: delete the old
                    # id either way and write the batch under a new one (as _relayout does)
                    batch.dead = False
                    if batch.persisted:
                        self._gone.add(batch.batch_id)
                    batch.batch_id = str(uuid.uuid4())
                    batch.persisted = False
                self._dirty[batch.batch_id] = batch
            back += 1
        return self._journal.mark() if back else 0

    def touch(self, key: HeldKey) -> int:
        """Mark a key changed (e.g. its provenance); the journal generation."""
        if (key.batch is not None and not key.batch.dead and key.state != "delivered"
                and self._keys.get(key.key_id) is key):
            self._dirty[key.batch.batch_id] = key.batch
            key.batch.full = True
        return self._journal.mark()

    # ---- reading ------------------------------------------------------------------------
    def get(self, session_id: str, index: int) -> HeldKey | None:
        """The key at ``index`` of a stream: held, or ``delivered`` (then without bytes, and
        with an empty ``key_id`` once the vault no longer remembers it); None if unknown."""
        k = self._at.get(session_id, _EMPTY).get(index)
        if k is not None:
            return k
        stream = self._streams.get(session_id)
        if stream is not None and in_ranges(stream.delivered, index):
            return HeldKey("", session_id, index, 0, None, "delivered")
        return None

    def get_many(self, session_id: str, indexes: Iterable[int]) -> list[HeldKey | None]:
        """:meth:`get` of each of ``indexes`` (one call for a batch)."""
        stream = self._streams.get(session_id)
        ranges = stream.delivered if stream is not None and stream.delivered else None
        # indexes past the last delivered range (a fresh batch's) skip the range search
        end = ranges[-1][1] if ranges is not None else 0
        if not isinstance(indexes, list | tuple):
            indexes = list(indexes)
        if indexes and min(indexes) >= max(end, self._end.get(session_id, 0)):
            return [None] * len(indexes)  # a fresh batch: nothing known at or past the end
        at = self._at.get(session_id, _EMPTY)
        out: list[HeldKey | None] = []
        for i in indexes:
            k = at.get(i)
            if k is None and i < end and ranges is not None and in_ranges(ranges, i):
                k = HeldKey("", session_id, i, 0, None, "delivered")
            out.append(k)
        return out

    def of_session(self, session_id: str) -> list[HeldKey]:
        """The keys of a session the vault holds (pending or ready; not the delivered)."""
        return [k for k in self._at.get(session_id, _EMPTY).values() if k.state != "delivered"]

    def ready_count(self, session_id: str) -> int:
        """Keys of a session in state ``ready`` (O(1))."""
        return self._ready.get(session_id, 0)

    def delivered_end(self, session_id: str) -> int:
        """One past the highest index of the session this KM has handed out (0: none)."""
        stream = self._streams.get(session_id)
        return stream.delivered[-1][1] if stream is not None and stream.delivered else 0

    def delivered_ranges(self, session_id: str) -> list[tuple[int, int]]:
        """The ``[start, end)`` index ranges of the session handed out here."""
        stream = self._streams.get(session_id)
        return [(s, e) for s, e in stream.delivered] if stream is not None else []

    def drop_session(self, session_id: str) -> tuple[int, int]:
        """Destroy every key of a session; returns ``(freed_bits, generation)``."""
        freed = 0
        batches: dict[str, Batch] = {}
        for k in self.of_session(session_id):
            freed += k.size_bits
            self._unindex(k)
            k.material = None
            if k.batch is not None:
                batches[k.batch.batch_id] = k.batch
        for b in batches.values():
            b.dead = True
            self._dirty.pop(b.batch_id, None)
            self._drop_row(b)
            for k in b.keys:
                k.batch = None
        for b in [b for b in self._dirty.values() if b.session_id == session_id]:
            b.dead = True  # fully delivered keys' batches are not in the indexes
            del self._dirty[b.batch_id]
        self._drop_stream(session_id)
        # what the session's index still holds is delivered keys remembered (the held ones
        # were taken out above)
        for old in self._at.pop(session_id, _EMPTY).values():
            if old.state != "delivered" or self._keys.get(old.key_id) is not old:
                continue  # replaced since by a key of another session with its id
            self._drop_spent(old)
            if old.batch is not None and old.batch.persisted and not old.batch.dead:
                self._gone.add(old.batch.batch_id)
                old.batch.dead = True
        self._ready.pop(session_id, None)
        self._end.pop(session_id, None)
        return freed, self._journal.mark()

    def _drop_stream(self, session_id: str) -> None:
        stream = self._streams.pop(session_id, None)
        self._dirty_streams.discard(session_id)
        if stream is not None and stream.persisted:
            self._gone_streams.add(session_id)

    # ---- persistence --------------------------------------------------------------------
    def snapshot(self) -> KeyWrites | None:
        """Journal hook: new and changed batches and streams, deleted ones."""
        if not (self._dirty or self._gone or self._dirty_streams or self._gone_streams):
            return None
        out = KeyWrites(self.node_id)
        batches = [b for b in self._dirty.values() if not b.dead]
        inserted = [b for b in batches if not b.persisted]
        for b in batches:
            out.batches.append(b.record())
            b.persisted = True
        # the dirty sets are handed over, not copied (fresh ones collect the next changes)
        gone, dirty_streams, gone_streams = self._gone, self._dirty_streams, self._gone_streams
        self._gone, self._dirty_streams, self._gone_streams = set(), set(), set()
        self._dirty.clear()
        out.batch_deletes = sorted(gone) if len(gone) > 1 else list(gone)
        streams: list[_Stream] = []
        for sid in dirty_streams:
            st = self._streams.get(sid)
            if st is None:
                continue
            out.streams.append(StreamRecord(sid, [list(r) for r in st.delivered],
                                            new=not st.persisted))
            if not st.persisted:
                st.persisted = True
                streams.append(st)
        out.stream_deletes = sorted(gone_streams) if len(gone_streams) > 1 else list(
            gone_streams)
        self._last = (batches, gone, inserted, dirty_streams, gone_streams, streams)
        return out

    def snapshot_failed(self) -> None:
        """Journal hook: re-mark what the failed transaction carried."""
        batches, gone, inserted, streams, gone_streams, new_streams = self._last
        for b in inserted:
            b.persisted = False
            self._maybe.add(b.batch_id)
        for st in new_streams:
            st.persisted = False
        for b in batches:
            b.full = True  # whether its last row landed is unknown: write all of it
            b.laid = False
            if not b.dead:
                self._dirty[b.batch_id] = b
            elif b.persisted:
                self._gone.add(b.batch_id)
        self._gone |= gone
        self._dirty_streams |= {sid for sid in streams if sid in self._streams}
        self._gone_streams |= gone_streams

    async def load(self, db: Database) -> None:
        """Restore held keys and delivered ranges (KM start).

        Batches stored in plaintext by an older version, or sealed under a retired
        key-encryption key, are written again, sealed under the current one.

        Raises:
            StoreError: the database failed. SealedDataError: a batch did not open.
        """
        store = self._journal.store if self._journal.database is db else KmStateStore(db)
        for s in await store.load_streams(self.node_id):
            self._streams[s.session_id] = _Stream(s.delivered, persisted=True)
            if s.delivered:
                self._end[s.session_id] = max(self._end.get(s.session_id, 0),
                                              s.delivered[-1][1])
        delivered: list[int] = []
        for r in await store.load_key_batches(self.node_id):
            keys: list[HeldKey] = []
            batch = Batch(r.session_id, keys, r.batch_id, persisted=True)
            at = 0
            for i, key_id in enumerate(r.key_ids):
                n = r.lengths[i]
                material = r.material[at:at + n] if n else None
                at += n
                k = HeldKey(key_id, r.session_id, r.indexes[i], r.size_bits[i], material,
                            STATE[r.states[i]], r.sae_id, r.peer_sae, r.t,
                            provenance=list(r.provenance[i]), batch=batch)
                keys.append(k)
                if k.state == "delivered":
                    self._remember_spent(k)
                    delivered.append(k.index)
                else:
                    self._index(k)
            # counted once its keys are in (the batch was made empty: it counted none)
            batch.left = len(keys) - len(delivered)
            if delivered:  # handed out since the stream's row was last written
                stream = self._streams.get(r.session_id)
                if stream is None:
                    stream = self._streams[r.session_id] = _Stream()
                add_indexes(stream.delivered, sorted(delivered))
                delivered.clear()
            if r.reseal:
                self._dirty[batch.batch_id] = batch
        if self._dirty:
            self._journal.mark()
