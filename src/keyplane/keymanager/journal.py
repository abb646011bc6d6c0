"""Group commit of a key manager's state to the store (write-behind, durable before use).

The KM's hot path (link key reservations and consumptions, end-to-end keys, deliveries,
session rows) changes in-memory state first and *marks* it dirty; :meth:`Journal.mark`
returns a generation number. A background task writes every dirty item in one transaction
and then releases everyone waiting on a generation it covered. A caller that is about to
hand key material out (send a frame, return a key to an application) first awaits
:meth:`Journal.flushed` for its generation, so nothing leaves the KM before its
consumption is durable, while concurrent requests share one commit (throughput scales
with concurrency instead of paying one commit each).

Two kinds of marks: a caller that awaits :meth:`Journal.flushed` wakes the writer at once;
a mark nobody waits for (e.g. received link key segments) is written with the next commit,
or at the latest ``lazy_flush_s`` later, so bookkeeping never costs a commit of its own.

One journal per database per process (:meth:`Journal.shared`): the KMs of an embedded run
share a SQLite file, and one writer committing for all of them avoids SQLite's writer lock
contention (whose busy handler sleeps for milliseconds) and batches across KMs.

A :class:`Persister` owns one kind of state. At commit time the journal asks each for a
snapshot (a record of :mod:`keyplane.store.kmstate`, taken synchronously, so it is
consistent) and hands them to the store in one transaction; the store seals key bytes and
writes the rows (no SQL here). If the transaction fails, each persister re-marks what it
lost, every waiter on that commit gets :class:`~keyplane.errors.CommitFailed` (so nothing
it waited for is handed out), and the journal retries on its own after a back-off
(``retry_s`` doubling up to ``retry_max_s``) until a commit succeeds or it is closed.

A state change that must not stand when its write fails (a key marked delivered) registers
an undo with :meth:`Journal.on_rollback`: it runs synchronously inside the failed commit,
right after the persisters re-marked what it carried, so the retry (or any later commit)
writes the restored state, never the change that failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable, Iterable
from typing import ClassVar, Protocol

from keyplane.errors import CommitFailed, StoreError
from keyplane.store import Database
from keyplane.store.kmstate import BlockWrites, KeyWrites, KmStateStore, SessionWrites

__all__ = ["Journal", "Persister", "Snapshot"]

logger = logging.getLogger(__name__)

Snapshot = BlockWrites | KeyWrites | SessionWrites
"""What a persister hands the journal: the store's record of its changes."""


class Persister(Protocol):
    """Something whose dirty state the journal writes."""

    def snapshot(self) -> Snapshot | None:
        """Take (and clear) the dirty state as a store record, or None if clean."""
        ...

    def snapshot_failed(self) -> None:
        """The last snapshot's transaction failed: mark its items dirty again."""
        ...


class Journal:
    """One writer task per KM that batches dirty state into transactions."""

    _shared: ClassVar[weakref.WeakKeyDictionary[Database, Journal]] = (
        weakref.WeakKeyDictionary())

    def __init__(self, db: Database, *, lazy_flush_s: float = 0.05, retry_s: float = 0.05,
                 retry_max_s: float = 5.0) -> None:
        self._db = db
        self.store = KmStateStore(db)
        self._lazy_flush_s = lazy_flush_s
        self._lazy: asyncio.TimerHandle | None = None
        self._retry_s = retry_s
        self._retry_max_s = retry_max_s
        self._backoff = retry_s
        self._retry: asyncio.TimerHandle | None = None
        self._users = 0
        self._persisters: list[Persister] = []
        self._gen = 0
        self._done = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._undo: list[tuple[int, Callable[[], None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.commits = 0
        self.failures = 0

    @property
    def database(self) -> Database:
        """The database this journal writes to."""
        return self._db

    @classmethod
    def shared(cls, db: Database) -> Journal:
        """The process-wide journal of ``db`` (one more user; give it back with
        :meth:`release`)."""
        j = cls._shared.get(db)
        if j is None or j._closed:
            j = cls(db)
            cls._shared[db] = j
        j._users += 1
        return j

    async def release(self, persisters: Iterable[Persister]) -> None:
        """A user leaves: write its state, drop its persisters, close with the last user."""
        persisters = list(persisters)
        if not self._closed and self._task is not None:
            with contextlib.suppress(StoreError):
                await self.sync()
        for p in persisters:
            if p in self._persisters:
                self._persisters.remove(p)
        self._users = max(0, self._users - 1)
        if self._users == 0:
            await self.close()
            if self._shared.get(self._db) is self:
                del self._shared[self._db]

    def register(self, p: Persister) -> None:
        """Add a persister."""
        self._persisters.append(p)

    def start(self) -> None:
        """Start the writer task (idempotent)."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="km-journal")

    def mark(self) -> int:
        """Note that some persister has dirty state; the generation to wait for.

        The write happens with the next commit someone awaits, or after ``lazy_flush_s``.
        """
        self._gen += 1
        if self._lazy is None:
            with contextlib.suppress(RuntimeError):  # no running loop: written on close
                self._lazy = asyncio.get_running_loop().call_later(
                    self._lazy_flush_s, self._wake.set)
        return self._gen

    def on_rollback(self, gen: int, undo: Callable[[], None]) -> None:
        """Run ``undo`` if the commit that carries generation ``gen`` fails.

        ``undo`` runs synchronously inside the failed commit, after the persisters re-marked
        what it carried and before any later snapshot, so the state it restores is what the
        next commit writes. Nothing happens if ``gen`` is already committed; the undo is
        forgotten once a commit covering ``gen`` succeeds (or runs at close if none did).
        """
        if gen > self._done:
            self._undo.append((gen, undo))

    def _undo_upto(self, target: int, failed: bool) -> None:
        """Forget the undos a commit up to ``target`` covered; run them if it failed."""
        undo, self._undo = self._undo, []
        for gen, fn in undo:
            if gen > target:
                self._undo.append((gen, fn))
            elif failed:
                try:
                    fn()
                except Exception:  # one bad undo must not keep the others from running
                    logger.exception("journal rollback hook failed")

    async def flushed(self, gen: int, *, wake: bool = True) -> None:
        """Wait until everything marked up to ``gen`` is committed.

        Args:
            wake: commit now (default); False waits for the commit the journal makes on
                its own (the lazy flush, or the retry after a failure).

        Raises:
            CommitFailed: the commit that carried ``gen`` failed (the journal retries it;
                what the caller waited for is not durable yet, so it must not be handed out).
            StoreError: the journal is closed.
        """
        if gen <= self._done:
            return
        if self._closed:
            raise StoreError("key manager journal is closed")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((gen, fut))
        if wake:
            self._wake.set()
        await fut

    async def sync(self) -> None:
        """Commit everything marked so far."""
        await self.flushed(self.mark())

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._gen <= self._done:
                continue
            await self._commit_once()

    async def _commit_once(self) -> None:
        if self._lazy is not None:
            self._lazy.cancel()
            self._lazy = None
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        target = self._gen
        ops: list[tuple[Persister, Snapshot]] = []
        for p in self._persisters:
            op = p.snapshot()
            if op is not None:
                ops.append((p, op))
        error: StoreError | None = None
        try:
            if ops:
                await self.store.commit([op for _, op in ops])
                self.commits += 1
        except asyncio.CancelledError:
            for p, _ in ops:
                p.snapshot_failed()
            raise
        except Exception as exc:  # reported to every waiter below
            for p, _ in ops:
                p.snapshot_failed()
            self.failures += 1
            if isinstance(exc, CommitFailed):
                error = exc
            else:
                error = CommitFailed(f"key manager state not written: {exc}")
                error.__cause__ = exc
            logger.warning("key manager journal commit failed (retry in %.2f s): %s",
                           self._backoff, exc)
            self._retry = asyncio.get_running_loop().call_later(self._backoff, self._wake.set)
            self._backoff = min(self._retry_max_s, 2 * self._backoff)
        if error is None:
            self._done = target
            self._backoff = self._retry_s
        self._undo_upto(target, failed=error is not None)
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for gen, fut in self._waiters:
            if fut.done():
                continue
            if gen > target:
                keep.append((gen, fut))  # marked after the snapshot: the next commit's
            elif error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(None)
        self._waiters = keep

    async def close(self) -> None:
        """Write what is dirty, stop the writer and fail remaining waiters (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._lazy is not None:
            self._lazy.cancel()
            self._lazy = None
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._task is not None:
            # stop the writer first (a commit it was in re-marks its items), then write
            # everything once more, so no two commits ever race on the same rows
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._gen > self._done:
            with contextlib.suppress(Exception):
                await self._commit_once()
        self._undo_upto(self._gen, failed=True)  # never committed: they do not stand
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(StoreError("key manager journal closed"))
        self._waiters.clear()
        await self.store.close()
