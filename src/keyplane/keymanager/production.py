"""The key manager shell's key work: admitting requests, making, relaying and delivering keys.

* **Admission** (:meth:`_Production._exchange`): the stream's state and token bucket
  (:meth:`KmCore.admit <keyplane.keymanager.core.KmCore.admit>`), then an exchange slot or a
  place in the priority queues, and a keep-alive to Admission Control.
* **Source**: index ``i`` of a stream is made by the session's source KM and relayed
  (:mod:`~keyplane.keymanager.relay`); requests reaching the source in one event-loop turn
  share one relay batch. A GET_KEY at the destination for an index it does not hold sends a
  demand back to the source and waits up to the QoS timeout.
* **Destination**: stores a batch (:meth:`_Production.accept_keys`) and offers it once the
  confirmation has left (:meth:`_Production.keys_confirmed_sent`).
* **Delivery, durable before delivered** (#14.1, :meth:`_Production._deliver`): the bytes
  leave only after the commit that marks the keys delivered succeeded; a failed commit puts
  them back to ``ready`` inside that commit (:meth:`Journal.on_rollback
  <keyplane.keymanager.journal.Journal.on_rollback>`), so a retry gets them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

from keyplane.errors import (
    KeyNotFound,
    KeyplaneError,
    KmBusy,
    RateLimited,
    RelayTimeout,
    SessionNotFound,
)
from keyplane.events import EventType
from keyplane.keymanager import stock
from keyplane.keymanager.core import Stream
from keyplane.keymanager.hybrid import count_provenance, merge_provenance, satisfies
from keyplane.keymanager.session import SessionEvent
from keyplane.keymanager.shell import KmShellBase
from keyplane.keymanager.vault import HeldKey, new_key_ids
from keyplane.keymanager.wire import KeyFrame
from keyplane.messages import HopRole
from keyplane.trust import exposed_nodes

__all__: list[str] = []

logger = logging.getLogger(__name__)

_Summary = tuple[list[dict[str, str]], list[dict[str, Any]], list[str]]
_SUMMARIES: dict[tuple[tuple[str, str], ...], _Summary] = {}
_SUMMARIES_MAX = 256


def _provenance_summary(keys: list[HeldKey]) -> _Summary:
    """The key_delivered event's provenance, per-hop counts and exposed nodes of ``keys``.

    Every delivery announces these; the keys of one delivery nearly always share one
    provenance (one path, one source per hop), and a network has few distinct ones, so
    the summary of one key is computed once per provenance and scaled by the key count
    (what :func:`count_provenance` gives for identical keys). Fresh containers each call:
    the event owns them.
    """
    first = keys[0].provenance
    if any(k.provenance is not first and k.provenance != first for k in keys):
        return (merge_provenance(*(k.provenance for k in keys)),
                count_provenance(k.provenance for k in keys),
                exposed_nodes(r for k in keys for r in k.provenance))
    sig = tuple((r["hop"], r["source"]) for r in first)
    one = _SUMMARIES.get(sig)
    if one is None:
        if len(_SUMMARIES) >= _SUMMARIES_MAX:
            _SUMMARIES.clear()
        one = _SUMMARIES[sig] = (merge_provenance(first), count_provenance([first]),
                                 exposed_nodes(first))
    merged, counts, exposed = one
    n = len(keys)
    return ([dict(r) for r in merged],
            [{"hop": e["hop"], "key_count": {src: c * n for src, c in e["key_count"].items()},
              "last_source": e["last_source"]} for e in counts],
            list(exposed))


class _Production(KmShellBase):
    """Key requests, production, relay host and delivery (see the module docstring)."""

    _stock_inflight: collections.Counter[str]  # link key bytes of refills in flight, by peer

    # ---- admitting a key request -------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _exchange(self, s: Stream, bits: int, timeout_s: float
                        ) -> AsyncIterator[float]:
        """Admit one key request: state check, token bucket, priority queue, keep-alive.

        Yields the clock deadline by which the request must be answered.
        """
        self._check_running()
        now = self._clock.now()
        deadline = now + timeout_s
        try:
            wait = self.core.admit(s, bits, timeout_s, now)
        except RateLimited:
            self._emit(EventType.key_request_refused, session=s.session_id,
                       reason="token bucket", bits=bits)
            raise
        self._apply(s, SessionEvent.key_request)
        self._emit(EventType.key_requested, session=s.session_id, bits=bits,
                   priority=s.priority)
        self._requests += 1
        self._pending[s.session_id] += 1
        self._idle.clear()
        slot = False
        try:
            if wait > 0:
                # pace on the clock, but wake at once if the session ends meanwhile
                with contextlib.suppress(TimeoutError):
                    await self._clock.wait_for(self._io(s.session_id).ended.wait(), wait)
            await self._acquire_slot(s, deadline)
            slot = True
            if not s.live:
                raise SessionNotFound(f"session {s.session_id} ended while the request waited")
            yield deadline
        except BaseException:
            # nothing was delivered: the bits go back to the bucket, never lost silently
            self.core.refund(s, bits, self._clock.now())
            raise
        finally:
            if slot:
                self._release_slot()
            if s.live and s.machine.can(SessionEvent.key_done):
                self._apply(s, SessionEvent.key_done)
            self._requests -= 1
            self._pending[s.session_id] -= 1
            if not self._pending[s.session_id]:
                del self._pending[s.session_id]
            if self._requests == 0:
                self._idle.set()

    async def _acquire_slot(self, s: Stream, deadline: float) -> None:
        if self.core.take_slot():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self.core.wait_slot(fut, s.priority, self._clock.now()):
            self._emit(EventType.key_request_refused, session=s.session_id, reason="queue full")
            raise KmBusy(self.node_id, len(self.core.queues), self.settings.queue_limit)
        try:
            await self._clock.wait_for(asyncio.shield(fut), deadline - self._clock.now())
        except TimeoutError:
            if self.core.queues.remove(fut):
                raise TimeoutError(
                    f"session {s.session_id}: waited in the priority queue past its "
                    f"QoS timeout") from None
            # handed a slot at the deadline: take it
        except BaseException:
            if not self.core.queues.remove(fut) and fut.done() and not fut.cancelled():
                self._release_slot()
            raise

    def _release_slot(self) -> None:
        while True:
            ticket = self.core.release_slot(self._clock.now())
            if ticket is None:
                return
            assert isinstance(ticket, asyncio.Future)
            if not ticket.done():
                ticket.set_result(None)  # the slot passes straight to the next request
                return

    # ---- source ------------------------------------------------------------------------
    def _adjacent_destination(self, s: Stream) -> str | None:
        """The destination's node if it is the next hop now (direct keys may go to it)."""
        entry = self.core.forwarding.current(s.session_id)
        if entry is None or entry.next_km is None or s.config is None:
            return None
        if self._peer_node(s.config.destination_sae) != entry.next_km:
            return None
        return entry.next_km

    def hold_keys(self, keys: list[HeldKey]) -> int:
        """Relay host: write new pending keys the relay gave bytes (from a direct frame's
        pad, or fresh ones when it could not send them directly); the journal generation."""
        return self.vault.add_all(keys) if keys else 0

    async def _produce(self, s: Stream, indexes: list[int], size_bytes: int,
                       policy: str | None = None, deadline: float | None = None) -> None:
        """Source: make (or resend) the keys of ``indexes`` and relay them as one batch
        (under ``policy`` when it narrows the session's hybrid policy)."""
        if not s.live:  # ended before this task first ran (_free_io could not cancel it)
            raise SessionNotFound(f"stream {s.session_id} ended before its keys were made")
        now = self._clock.now()
        wall = self._clock.wall()
        direct_to = self._adjacent_destination(s)
        direct = direct_to is not None
        keys: list[HeldKey] = []
        fresh: list[HeldKey] = []
        held = self.vault.get_many(s.session_id, indexes)
        n_new = held.count(None)
        ids = iter(new_key_ids(wall, n_new))
        # one draw of randomness for the batch's new keys, cut into keys
        pool = b"" if direct else secrets.token_bytes(size_bytes * n_new)
        at = 0
        unset: list[dict[str, str]] = []  # the batch's provenance until relayed (one list)
        for i, k in zip(indexes, held, strict=True):
            if k is None:
                # positional, as every hot path makes a HeldKey (see its docstring)
                k = HeldKey(next(ids), s.session_id, i, size_bytes * 8,
                            None if direct else pool[at:at + size_bytes], "pending",
                            s.local_sae, s.peer_sae, now, unset)
                at += size_bytes
                fresh.append(k)
            elif k.state != "pending":
                continue
            keys.append(k)
        if not keys:
            return
        # direct keys take their bytes from the hop key: the relay holds them (hold_keys).
        # A resent key may come from a batch whose write failed: wait for a commit then too
        gen = 0
        if not direct:
            gen = self.vault.add_all(fresh) if fresh else self.journal.mark()
        elif len(fresh) < len(keys):  # resent beside direct ones: the relay sends them all
            gen = self.journal.mark()  # encrypted, as made; they may wait for their commit
        self._emit(EventType.key_material_ready, session=s.session_id,
                   key_ids=[k.key_id for k in keys], key_count=len(keys),
                   size_bits=size_bytes * 8, direct=direct)
        if gen:
            await self.journal.flushed(gen)
        provenance = await self.relay.send_batch(s.session_id, keys, size_bytes,
                                                 direct_to=direct_to, policy=policy,
                                                 deadline=deadline)
        done = [k for k in keys if k.state == "pending"]
        shared = list(provenance)  # replaced, never changed in place: one list per batch
        for k in done:
            k.provenance = shared
        self.vault.set_states(done, "ready", provenance_changed=True)

    async def _ensure_source(self, s: Stream, indexes: list[int], size_bytes: int,
                             policy: str | None = None, deadline: float | None = None,
                             lane: str = "") -> None:
        """Source: make sure every index is produced (one task per missing batch), the
        batch waiting for scarce link key until ``deadline`` (default: the stream's QoS
        timeout from now); ``lane`` keeps a batch apart from requests' (a stock refill)."""
        if deadline is None:
            deadline = self._clock.now() + s.wait_s
        io = self._io(s.session_id)
        waits: list[asyncio.Task[None]] = []
        missing: list[int] = []
        producing = io.producing
        unknown: list[int] = []
        for i in indexes:
            t = producing.get(i)
            if t is not None:
                waits.append(t)
            else:
                unknown.append(i)
        for i, k in zip(unknown, self.vault.get_many(s.session_id, unknown), strict=True):
            if k is None or k.state == "pending":
                missing.append(i)
        if missing:
            waits.append(self._join_batch(s, missing, size_bytes, policy, deadline, lane))
        for t in dict.fromkeys(waits):
            try:
                await asyncio.shield(t)
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if t.cancelled() and (me is None or not me.cancelling()):
                    # the session ended under the relay (_free_io cancels it): a clear answer
                    raise SessionNotFound(
                        f"stream {s.session_id} ended while its keys were relayed") from None
                raise

    def _join_batch(self, s: Stream, indexes: list[int], size_bytes: int,
                    policy: str | None, deadline: float, lane: str = ""
                    ) -> asyncio.Task[None]:
        """Add ``indexes`` to the session's open relay batch (one frame per batch).

        Requests that reach the source in the same event-loop turn share one KeyFrame, one
        MAC key per hop and one confirmation, so concurrent callers cost one relay instead of
        one each; a lone request waits a single loop turn. The batch waits for link key
        until the latest of its requests' deadlines (each request stops waiting at its own).
        """
        io = self._io(s.session_id)
        slot = (size_bytes, policy, lane)  # one batch per key size, hybrid policy and lane
        batch = io.batches.get(slot)
        if batch is None:
            collected: list[int] = []
            until = [deadline]

            async def run() -> None:
                await asyncio.sleep(0)  # let requests of this loop turn join
                io.batches.pop(slot, None)
                await self._produce(s, collected, size_bytes, policy, until[0])

            task = asyncio.get_running_loop().create_task(run(), name=f"km-produce-{s.session_id}")

            def done(t: asyncio.Task[None]) -> None:
                for i in collected:
                    if io.producing.get(i) is t:
                        del io.producing[i]
                if not t.cancelled():
                    t.exception()  # retrieved here; the waiters re-raise it
            task.add_done_callback(done)
            batch = io.batches[slot] = (collected, until, task)
        collected, until, task = batch
        until[0] = max(until[0], deadline)
        collected.extend(indexes)
        for i in indexes:
            io.producing[i] = task
        return task

    def demand(self, session_id: str, indexes: list[int]) -> None:
        """Relay host: the destination asked for ``indexes`` (ETSI 004)."""
        s = self.core.streams.get(session_id)
        if s is None or not s.live or s.config is None:
            return
        size = s.config.key_chunk_size

        async def run() -> None:
            with contextlib.suppress(KeyplaneError):
                await self._ensure_source(s, indexes, size)
        self._spawn(run(), f"km-demand-{session_id}")

    # ---- ETSI 014 key stock (keymanager/stock.py) ------------------------------------
    def _key_state(self, session_id: str, index: int) -> tuple[str, int] | None:
        k = self.vault.get(session_id, index)
        return None if k is None else (k.state, k.size_bits)

    def _from_stock(self, s: Stream, number: int, size_bits: int, policy: str | None
                    ) -> list[int] | None:
        """An enc_keys at the source: count its demand, and take ``number`` stock keys if
        the stock covers it (its size, and ``policy`` when it narrows the session's); None:
        it relays its own keys. A taken key leaves the stock: it is handed out once."""
        st = self.settings
        if st.etsi014_stock_keys == 0 or s.config is None \
                or size_bits != 8 * s.config.key_chunk_size:
            return None
        stock.note_request(s.demand, number, st.etsi014_stock_keys, self._clock.now(),
                           st.etsi014_stock_window_s)
        if s.stock_bits != size_bits or len(s.stock) < number:
            return None
        taken = s.stock[:number]
        keys = self.vault.get_many(s.session_id, taken)
        if any(k is None or k.state != "ready" for k in keys):
            # a guard (only enc_keys takes stock keys): a key no longer ready is a spare
            ready = [i for i in s.stock if (k := self.vault.get(s.session_id, i))
                     is not None and k.state == "ready"]
            self.core.release_indexes(s, sorted(set(s.stock) - set(ready)), self._key_state)
            s.stock = ready
            return None
        if policy is not None and not all(satisfies(k.provenance, policy)
                                          for k in keys if k is not None):
            return None
        del s.stock[:number]
        return taken

    def _meets(self, s: Stream, policy: str | None) -> Callable[[int], bool] | None:
        """Whether a ready key of ``s`` meets ``policy`` (None: the session's, any does)."""
        if policy is None:
            return None

        def ok(index: int) -> bool:
            k = self.vault.get(s.session_id, index)
            return k is not None and satisfies(k.provenance, policy)
        return ok

    def _refill_stock(self, s: Stream) -> None:
        """Start a refill of the pair's stock if its demand asks for one (stock.py): fresh
        indexes relayed as ONE batch in the background, never waiting for link key.

        Background work must not hold up real requests: it takes no exchange slot and no
        token bucket bits (a key is charged when handed out), and it starts only when the
        next hop's link has the batch's key beyond its low-water mark (counting the refills
        already in flight on it) and no frame waits for that link's key; its own frame,
        in a batch of its own, then takes the key at once or fails (deadline now), and a
        failed refill waits one window. Ready spares join the stock first.
        """
        st = self.settings
        if not s.live or s.config is None or s.role is not HopRole.source:
            return
        now = self._clock.now()
        bits = 8 * s.config.key_chunk_size
        if s.stock_bits != bits:
            self.core.release_indexes(s, s.stock, self._key_state)  # another size: spares
            s.stock, s.stock_bits = [], bits
        if s.spare and st.etsi014_stock_keys and stock.target(
                s.demand, st.etsi014_stock_keys, st.etsi014_stock_min_requests, now,
                st.etsi014_stock_window_s):  # only a pair that has a stock (else claims use them)
            self._adopt_ready_spares(s, bits)
        n = stock.refill_count(s.demand, len(s.stock), st.etsi014_stock_keys,
                               st.etsi014_stock_min_requests, now, st.etsi014_stock_window_s)
        if n == 0:
            return
        nbytes = n * bits // 8
        peer = self._stock_link(s, nbytes)
        if peer is None:
            stock.refill_done(s.demand, False, now, st.etsi014_stock_window_s)
            return
        self._stock_inflight[peer] += nbytes  # counted until the refill ends
        indexes = self.core.fresh_indexes(s, n)
        self._spawn(self._run_refill(s, indexes, bits, peer, nbytes),
                    f"km-stock-{s.session_id}")

    def _adopt_ready_spares(self, s: Stream, bits: int) -> None:
        """Spares already ``ready`` at both ends (the stock of a KM that restarted, a hand-out
        whose commit failed) join the stock, so they are handed out before fresh keys are
        relayed ahead (else a new stock would leave them waiting until the session ends)."""
        ready = [i for i in s.spare if (k := self.vault.get(s.session_id, i)) is not None
                 and k.state == "ready" and k.size_bits == bits]
        if ready:
            taken = set(ready)
            s.spare = [i for i in s.spare if i not in taken]
            s.stock = sorted([*s.stock, *ready])

    def _stock_link(self, s: Stream, nbytes: int) -> str | None:
        """The next hop whose link can carry a refill of ``nbytes`` now (None: not now):
        beyond its low-water mark after every refill already in flight on it, and no frame
        waiting for its key."""
        entry = self.core.forwarding.current(s.session_id)
        store = self._stores.get(entry.next_km) if entry and entry.next_km else None
        if store is None:
            return None
        low = self.settings.keystore_low_water_bits // 8
        inflight = self._stock_inflight[store.peer_id]
        if (store.sendable_bytes - inflight >= low + nbytes + 64
                and not self.core.shares[store.peer_id].waiting):
            return store.peer_id
        return None

    async def _run_refill(self, s: Stream, indexes: list[int], bits: int, peer: str,
                          nbytes: int) -> None:
        ok = False
        try:
            # a lane of its own: no request's keys ride in the refill's frame (a frame that
            # waits for link key until the request's deadline), nor the refill in theirs
            await self._ensure_source(s, indexes, bits // 8, None, self._clock.now(),
                                      lane="stock")
            ok = True
        except Exception as exc:  # background work: its keys become spares
            logger.info("node %s: stock refill of %s (%d keys) failed: %s", self.node_id,
                        s.session_id, len(indexes), exc)
        finally:
            left = self._stock_inflight[peer] - nbytes
            if left > 0:
                self._stock_inflight[peer] = left
            else:
                del self._stock_inflight[peer]
            stock.refill_done(s.demand, ok, self._clock.now(),
                              self.settings.etsi014_stock_window_s)
            if s.live:
                ready = {k.index for k in self.vault.get_many(s.session_id, indexes)
                         if ok and k is not None and k.state == "ready"}
                if s.stock_bits == bits:
                    s.stock.extend(i for i in indexes if i in ready)
                else:
                    ready = set()
                self.core.release_indexes(s, [i for i in indexes if i not in ready],
                                          self._key_state)

    # ---- destination -------------------------------------------------------------------
    def accept_keys(self, frame: KeyFrame, keys: list[bytes]
                    ) -> tuple[bool, str, int, list[dict[str, str]]]:
        """Relay host: the destination stores a batch (or refuses it).

        Returns ``(ok, reason, journal generation, provenance)``. A retried batch crossed
        its hops more than once: the keys' provenance is the merge of every crossing, so
        the weakest hop governs, and the confirmation tells the source the same list.
        """
        s = self.core.streams.get(frame.session_id)
        if s is None or not s.live or s.role is not HopRole.destination:
            return False, "refused: no such session at the destination", 0, []
        fresh: list[HeldKey] = []
        again: list[HeldKey] = []
        sid, sae, peer, now = s.session_id, s.local_sae, s.peer_sae, self._clock.now()
        unset: list[dict[str, str]] = []  # one list for the batch until set below
        for key_id, index, material, held in zip(
                frame.key_ids, frame.indexes, keys, self.vault.get_many(sid, frame.indexes),
                strict=True):
            if held is not None:
                if held.key_id != key_id:
                    return False, f"refused: index {index} already holds another key", 0, []
                again.append(held)  # a retry of a batch already stored: confirm again
                continue
            fresh.append(HeldKey(key_id, sid, index, 8 * len(material), material,
                                 "pending", sae, peer, now, unset))  # positional: see HeldKey
        if s.interface == "etsi014":
            if self.vault.ready_count(s.session_id) + len(fresh) > self.settings.max_keys_per_pair:
                return (False, "refused: destination holds max_key_count keys for the pair",
                        0, [])
        provenance = merge_provenance(*(k.provenance for k in again), frame.provenance)
        # a retried batch is confirmed again only once it is durable: its first write may
        # have failed (the keys are still dirty), so wait for a commit that covers them
        gen = self.journal.mark() if again else 0
        for k in again:
            if k.provenance != provenance:
                k.provenance = list(provenance)
                gen = self.vault.touch(k)
        shared = list(provenance)  # replaced, never changed in place: one list per batch
        for k in fresh:
            k.provenance = shared
        if fresh:
            gen = self.vault.add_all(fresh)
        return True, "", gen, provenance

    def keys_confirmed_sent(self, frame: KeyFrame) -> None:
        """Relay host: the destination's confirmation left; offer the keys."""
        stored = [k for k in self.vault.get_many(frame.session_id, frame.indexes)
                  if k is not None and k.state == "pending"]
        if stored:
            self.vault.set_states(stored, "ready")
        io = self._io_of.get(frame.session_id)
        if io is None:
            return
        for index in frame.indexes:
            fut = io.arrivals.pop(index, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
            io.demanded.discard(index)

    async def _destination_key(self, s: Stream, index: int, deadline: float) -> HeldKey:
        k = self.vault.get(s.session_id, index)
        if k is None or k.state == "pending":
            io = self._io(s.session_id)
            fut = io.arrivals.get(index)
            if fut is None:
                fut = asyncio.get_running_loop().create_future()
                io.arrivals[index] = fut
            if index not in io.demanded:
                io.demanded.add(index)
                try:
                    await self.relay.send_demand(s.session_id, [index], deadline)
                except KeyplaneError:
                    io.demanded.discard(index)
                    raise
            try:
                await self._clock.wait_for(asyncio.shield(fut), deadline - self._clock.now())
            except TimeoutError:
                io.demanded.discard(index)
                raise RelayTimeout(f"stream {s.session_id}: index {index} did not arrive "
                                   f"within the QoS timeout") from None
            k = self.vault.get(s.session_id, index)
        if k is None or k.state != "ready":
            raise KeyNotFound(f"stream {s.session_id}: index {index} is not available")
        return k

    # ---- delivery ----------------------------------------------------------------------
    async def _deliver(self, s: Stream, keys: list[HeldKey], *, announce: bool = True
                       ) -> list[bytes]:
        """Mark ``keys`` delivered durably, then return their bytes (each key once).

        Durable before delivered (#14.1): the bytes leave only after the commit that marks
        the keys delivered succeeded. If that commit fails (or the caller is cancelled while
        it runs), the keys are put back to ``ready`` with their bytes, inside the failed
        commit (:meth:`Journal.on_rollback`), so no later commit can write them delivered
        and a retry gets them; the request fails with the store's error.

        Raises:
            KeyNotFound: a key was already delivered (or is being delivered).
            StoreError: the commit failed; nothing was delivered.
        """
        for k in keys:
            if k.state != "ready" or k.material is None:
                raise KeyNotFound(f"key {k.key_id} was already delivered")
        out = [k.material or b"" for k in keys]
        gen = self.vault.set_states(keys, "delivered")
        undo = functools.partial(self._undeliver, keys, out)
        self.journal.on_rollback(gen, undo)
        # no session row write here: after a restart next_index / next_gen are recomputed
        # from the delivered keys (KmCore.restore), so a delivery costs its key rows only
        try:
            await self.journal.flushed(gen)
        except BaseException:
            undo()  # idempotent: the journal may have run it already
            raise
        if announce:  # False: confirmed keys (ETSI 004 acknowledgement), announced before
            self._announce_delivered(s, keys, out)
        return out

    def _announce_delivered(self, s: Stream, keys: list[HeldKey], out: list[bytes]) -> None:
        merged, counts, exposed = _provenance_summary(keys)
        self._emit(EventType.key_delivered, session=s.session_id, sae=s.local_sae,
                   key_ids=[k.key_id for k in keys], key_count=len(keys),
                   bits=8 * sum(map(len, out)), indexes=[k.index for k in keys],
                   provenance=merged, provenance_counts=counts, exposed_to=exposed)

    def _undeliver(self, keys: list[HeldKey], materials: list[bytes]) -> None:
        """Undo a delivery that did not become durable: the keys are ``ready`` again."""
        if self.vault.undeliver(keys, materials):
            logger.warning("node %s: delivery of %d key(s) not durable, offered again",
                           self.node_id, len(keys))
