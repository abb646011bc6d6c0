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

A snapshot is data, not code: :class:`RowWrites` (inserts, updates and deletes by primary
key for one table). The journal turns them into one ``executemany`` per kind and table:
on SQLite with the standard library driver in a worker thread on its own connection to the
same file (one thread hand-off and a few microseconds of SQL per commit, instead of the
async driver's hand-off per statement plus ORM overhead), on PostgreSQL with SQLAlchemy
Core on the async engine.

A :class:`Persister` owns one kind of row. At commit time the journal asks each for a
snapshot (taken synchronously, so it is consistent) and runs the snapshots in one
transaction; if the transaction fails, each persister is told to re-mark what it lost and
the waiters get :class:`~keyplane.errors.StoreError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sqlite3
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from sqlalchemy import JSON, Table, and_, bindparam, delete, insert, update
from sqlalchemy.exc import SQLAlchemyError

from keyplane.errors import StoreError
from keyplane.store import Database

__all__ = ["Journal", "Persister", "RowWrites"]

logger = logging.getLogger(__name__)



@dataclass
class RowWrites:
    """Row changes of one table: dicts of column values (updates/deletes carry the primary
    key columns; updates may come in several shapes, each set of keys is one statement)."""

    table: Table
    inserts: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    deletes: list[dict[str, Any]] = field(default_factory=list)


def _primary_key(t: Table) -> tuple[str, ...]:
    return _table_info(t)[0]


@functools.cache
def _table_info(t: Table) -> tuple[tuple[str, ...], frozenset[str]]:
    """``(primary key columns, JSON columns)`` of a table (tables are module constants)."""
    return (tuple(c.name for c in t.primary_key.columns),
            frozenset(c.name for c in t.columns if isinstance(c.type, JSON)))


@functools.cache
def _sqlite_update_order(t: Table, cols: tuple[str, ...]) -> tuple[str, ...]:
    """Parameter order of the UPDATE for ``cols``: the set columns, then the key."""
    pk = _primary_key(t)
    return (*(c for c in cols if c not in pk), *pk)


@functools.cache
def _sqlite_statement(t: Table, kind: str, cols: tuple[str, ...]
                      ) -> tuple[str, tuple[int, ...]]:
    """The SQL of one ``executemany`` and which parameter positions hold JSON values.

    Built once per table, kind and column set (a commit repeats the same few shapes).
    """
    pk, json_cols = _table_info(t)

    def q(name: str) -> str:
        return '"' + name + '"'

    where = " AND ".join(f"{q(k)} = ?" for k in pk)
    if kind == "insert":
        order: tuple[str, ...] = cols
        sql = (f"INSERT INTO {q(t.name)} ({', '.join(q(c) for c in cols)}) "
               f"VALUES ({', '.join('?' for _ in cols)})")
    elif kind == "update":
        order = _sqlite_update_order(t, cols)
        sets = [c for c in cols if c not in pk]
        sql = f"UPDATE {q(t.name)} SET {', '.join(f'{q(c)} = ?' for c in sets)} WHERE {where}"
    else:
        order = pk
        sql = f"DELETE FROM {q(t.name)} WHERE {where}"
    return sql, tuple(i for i, c in enumerate(order) if c in json_cols)


def _by_shape(rows: list[dict[str, Any]]) -> dict[tuple[str, ...], list[dict[str, Any]]]:
    """Rows grouped by their set of columns (one UPDATE statement per group)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r), []).append(r)
    return groups


def _params(row: dict[str, Any], order: tuple[str, ...], json_at: tuple[int, ...]
            ) -> list[Any]:
    values = [row[c] for c in order]
    for i in json_at:
        values[i] = json.dumps(values[i])
    return values


class Persister(Protocol):
    """Something whose dirty state the journal writes."""

    def snapshot(self) -> RowWrites | None:
        """Take (and clear) the dirty state as row writes, or None if clean."""
        ...

    def snapshot_failed(self) -> None:
        """The last snapshot's transaction failed: mark its items dirty again."""
        ...


class Journal:
    """One writer task per KM that batches dirty state into transactions."""

    _shared: ClassVar[weakref.WeakKeyDictionary[Database, Journal]] = (
        weakref.WeakKeyDictionary())

    def __init__(self, db: Database, *, lazy_flush_s: float = 0.05) -> None:
        self._db = db
        self._lazy_flush_s = lazy_flush_s
        self._lazy: asyncio.TimerHandle | None = None
        self._users = 0
        self._sqlite_path: str | None = None
        self._sqlite: sqlite3.Connection | None = None
        if db.dialect == "sqlite":
            self._sqlite_path = db.engine.url.database
        self._persisters: list[Persister] = []
        self._gen = 0
        self._done = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.commits = 0

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

    async def flushed(self, gen: int) -> None:
        """Wait until everything marked up to ``gen`` is committed.

        Raises:
            StoreError: the commit failed or the journal is closed.
        """
        if gen <= self._done:
            return
        if self._closed:
            raise StoreError("key manager journal is closed")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((gen, fut))
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
        target = self._gen
        ops: list[tuple[Persister, RowWrites]] = []
        for p in self._persisters:
            op = p.snapshot()
            if op is not None:
                ops.append((p, op))
        error: BaseException | None = None
        try:
            if ops:
                await self._write([op for _, op in ops])
                self.commits += 1
        except asyncio.CancelledError:
            for p, _ in ops:
                p.snapshot_failed()
            raise
        except Exception as exc:  # reported to every waiter below
            logger.exception("key manager journal commit failed")
            for p, _ in ops:
                p.snapshot_failed()
            error = exc if isinstance(exc, StoreError) else StoreError(str(exc))
        if error is None:
            self._done = target
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for gen, fut in self._waiters:
            if fut.done():
                continue
            if error is not None:
                fut.set_exception(error)
            elif gen <= target:
                fut.set_result(None)
            else:
                keep.append((gen, fut))
        self._waiters = keep

    async def _write(self, writes: list[RowWrites]) -> None:
        if self._sqlite_path is not None:
            await asyncio.to_thread(self._write_sqlite, writes)
            return
        try:
            async with self._db.engine.begin() as conn:
                for w in writes:
                    t = w.table
                    pk = _primary_key(t)
                    if w.inserts:
                        await conn.execute(insert(t), w.inserts)
                    for shape, rows in _by_shape(w.updates).items():
                        cols = [k for k in shape if k not in pk]
                        stmt = update(t).where(and_(*[
                            t.c[k] == bindparam(f"pk_{k}") for k in pk])).values(
                            {k: bindparam(f"v_{k}") for k in cols})
                        await conn.execute(stmt, [
                            {**{f"pk_{k}": r[k] for k in pk}, **{f"v_{k}": r[k] for k in cols}}
                            for r in rows])
                    if w.deletes:
                        dstmt = delete(t).where(and_(*[
                            t.c[k] == bindparam(f"pk_{k}") for k in pk]))
                        await conn.execute(dstmt, [{f"pk_{k}": r[k] for k in pk}
                                                  for r in w.deletes])
        except SQLAlchemyError as exc:
            raise StoreError(f"database error: {exc.__class__.__name__}: {exc}") from exc

    def _write_sqlite(self, writes: list[RowWrites]) -> None:
        """One transaction on this journal's own sqlite3 connection (worker thread)."""
        if self._sqlite is None:
            assert self._sqlite_path is not None
            self._sqlite = sqlite3.connect(self._sqlite_path, timeout=30,
                                           check_same_thread=False, isolation_level=None)
            self._sqlite.execute("PRAGMA journal_mode=WAL")
            self._sqlite.execute("PRAGMA synchronous=NORMAL")
        conn = self._sqlite
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for w in writes:
                    self._sqlite_table(conn, w)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"database error: {exc.__class__.__name__}: {exc}") from exc

    @staticmethod
    def _sqlite_table(conn: sqlite3.Connection, w: RowWrites) -> None:
        t = w.table
        if w.inserts:
            cols = tuple(w.inserts[0])
            sql, json_at = _sqlite_statement(t, "insert", cols)
            conn.executemany(sql, [_params(r, cols, json_at) for r in w.inserts])
        for cols, rows in _by_shape(w.updates).items():
            sql, json_at = _sqlite_statement(t, "update", cols)
            names = _sqlite_update_order(t, cols)
            conn.executemany(sql, [_params(r, names, json_at) for r in rows])
        if w.deletes:
            sql, _ = _sqlite_statement(t, "delete", ())  # by primary key only
            pk = _primary_key(t)
            conn.executemany(sql, [[r[k] for k in pk] for r in w.deletes])

    async def close(self) -> None:
        """Write what is dirty, stop the writer and fail remaining waiters (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._lazy is not None:
            self._lazy.cancel()
            self._lazy = None
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
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(StoreError("key manager journal closed"))
        self._waiters.clear()
        if self._sqlite is not None:
            conn, self._sqlite = self._sqlite, None
            await asyncio.to_thread(conn.close)
