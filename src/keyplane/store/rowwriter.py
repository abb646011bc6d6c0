"""One transaction of many row changes, as few statements as possible (group commit).

A :class:`RowWrites` is data, not code: inserts, updates and deletes by primary key for one
table. :class:`RowWriter` turns a list of them into one ``executemany`` per kind, table and
column set, in one transaction:

* on SQLite with the standard library driver, on connections of its own to the same file.
  A commit runs *on the event loop* when the file's write lock is free at once (``BEGIN
  IMMEDIATE`` without waiting): in WAL mode with ``synchronous=NORMAL`` a commit is a write
  to the WAL, tens of microseconds, less than handing it to a thread costs (the executor
  hand-off, the loop's wake-up and two GIL transfers were a quarter of the KM process's
  samples at one key per request, issue #15). When another connection holds the lock
  (SQLAlchemy's sessions of the same file, another process), the commit goes to a worker
  thread that waits for the lock there, so the loop never waits on another writer (which
  might itself need the loop to finish). Checkpoints, which ``fsync``, always run in the
  thread; automatic checkpoints are off on the inline connection and the writer checkpoints
  when the WAL passes ``wal_checkpoint_bytes``;
* on PostgreSQL with SQLAlchemy Core on the async engine.

Rows are built (key material sealed, :mod:`keyplane.store.sealing`: about 8 µs for a 16 KiB
block) where the commit runs.

Every write is idempotent, so a transaction may be replayed: inserts are upserts (``ON
CONFLICT`` on the primary key, setting the row's other columns to the values given), updates
and deletes by primary key are idempotent already. That is what a commit whose outcome was
lost needs (the database committed, the acknowledgement died with the connection): the
caller sees :class:`~keyplane.errors.CommitFailed` and retries the same rows, which must
neither fail on the rows already there nor leave anything but the state it asked for.

Spent key material must not linger (issue #13). ``secure_delete`` makes SQLite overwrite
deleted content in the database file; the old page images a write-ahead log keeps are
removed by a ``TRUNCATE`` checkpoint after commits that destroyed key material (at most one
per ``scrub_interval_s``, and one on close). Every database error becomes
:class:`~keyplane.errors.CommitFailed`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import JSON, Table, and_, bindparam, delete, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.dml import Insert

from keyplane.errors import CommitFailed, StoreError
from keyplane.store.db import Database, sqlite_pragmas

__all__ = ["RowWriter", "RowWrites"]

_WAL_STAT_EVERY = 16
"""Inline commits between two looks at the WAL's size (``wal_checkpoint_bytes``)."""

logger = logging.getLogger(__name__)


@dataclass
class RowWrites:
    """Row changes of one table: dicts of column values (updates/deletes carry the primary
    key columns; updates may come in several shapes, each set of keys is one statement).
    Deletes run first, then inserts, then updates."""

    table: Table
    inserts: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    deletes: list[dict[str, Any]] = field(default_factory=list)


@functools.cache
def _table_info(t: Table) -> tuple[tuple[str, ...], frozenset[str]]:
    """``(primary key columns, JSON columns)`` of a table (tables are module constants)."""
    return (tuple(c.name for c in t.primary_key.columns),
            frozenset(c.name for c in t.columns if isinstance(c.type, JSON)))


def _primary_key(t: Table) -> tuple[str, ...]:
    return _table_info(t)[0]


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
    if kind == "insert":  # an upsert: a replayed insert lands on its own row
        order: tuple[str, ...] = cols
        sets = [c for c in cols if c not in pk]
        on_conflict = (f"DO UPDATE SET {', '.join(f'{q(c)} = excluded.{q(c)}' for c in sets)}"
                       if sets else "DO NOTHING")
        sql = (f"INSERT INTO {q(t.name)} ({', '.join(q(c) for c in cols)}) "
               f"VALUES ({', '.join('?' for _ in cols)}) "
               f"ON CONFLICT ({', '.join(q(k) for k in pk)}) {on_conflict}")
    elif kind == "update":
        order = _sqlite_update_order(t, cols)
        sets = [c for c in cols if c not in pk]
        sql = f"UPDATE {q(t.name)} SET {', '.join(f'{q(c)} = ?' for c in sets)} WHERE {where}"
    else:
        order = pk
        sql = f"DELETE FROM {q(t.name)} WHERE {where}"
    return sql, tuple(i for i, c in enumerate(order) if c in json_cols)


@functools.cache
def _upsert(t: Table, dialect: str, cols: tuple[str, ...]) -> Insert:
    """The SQLAlchemy upsert of rows with ``cols`` (SQLite or PostgreSQL, same semantics as
    :func:`_sqlite_statement`'s insert)."""
    pk = _primary_key(t)
    stmt = (postgresql.insert(t) if dialect == "postgresql" else sqlite.insert(t))
    sets = {c: stmt.excluded[c] for c in cols if c not in pk}
    if not sets:
        return stmt.on_conflict_do_nothing(index_elements=list(pk))
    return stmt.on_conflict_do_update(index_elements=list(pk), set_=sets)


def _by_shape(rows: list[dict[str, Any]]) -> dict[tuple[str, ...], list[dict[str, Any]]]:
    """Rows grouped by their set of columns (one statement per group)."""
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


class RowWriter:
    """Writes lists of :class:`RowWrites` to one database, one transaction per call.

    Args:
        db: the database (its URL picks the SQLite or the PostgreSQL path).
        scrub_interval_s: at most one WAL-truncating checkpoint per this many seconds after
            commits that destroyed key material (SQLite only; 0: after every such commit).
        wal_checkpoint_bytes: checkpoint (in the worker thread) once the WAL is this large
            (SQLite; the inline connection makes no automatic checkpoints; the size is
            looked at every 16th inline commit, so it may pass this by 16 commits' rows).
    """

    def __init__(self, db: Database, *, scrub_interval_s: float = 1.0,
                 wal_checkpoint_bytes: int = 4 << 20) -> None:
        self._db = db
        self._scrub_interval_s = scrub_interval_s
        self._wal_checkpoint_bytes = wal_checkpoint_bytes
        self._sqlite_path: str | None = None
        self._sqlite: sqlite3.Connection | None = None
        self._inline: sqlite3.Connection | None = None
        if db.dialect == "sqlite" and db.engine.url.database not in (None, "", ":memory:"):
            self._sqlite_path = db.engine.url.database
        self._last_scrub = 0.0
        self._unscrubbed = False
        self._commits_unstatted = 0
        self.checkpoints = 0
        self.rows_written = 0
        """Rows inserted, updated or deleted by committed transactions (a figure)."""
        self.inline_commits = 0
        """SQLite commits made on the event loop (the others waited for the lock in a
        thread; a figure)."""

    async def write(self, build: Callable[[], list[RowWrites]], *, scrub: bool = False
                    ) -> None:
        """Build the row changes and commit them in one transaction (SQLite: on the loop
        when the write lock is free, else in a worker thread; see the module docstring).

        Args:
            build: returns the changes; called once.
            scrub: the changes destroy key material (deleted or overwritten rows): clear
                the write-ahead log of their old images soon.

        Raises:
            CommitFailed: the transaction failed and was rolled back.
            StoreError: ``build`` failed (e.g. no key-encryption key), or the database is
                closed; nothing was written.
        """
        self._db.check_open()
        if self._sqlite_path is not None:
            writes = build()
            if not self._write_inline(writes, scrub):
                await asyncio.to_thread(self._write_sqlite, writes, scrub)
            elif self._checkpoint_due():
                await asyncio.to_thread(self._checkpoint, self._connect())
            return
        writes = await asyncio.to_thread(build)
        try:
            async with self._db.engine.begin() as conn:
                for w in writes:
                    await self._write_pg(conn, w, self._db.dialect)
        except (SQLAlchemyError, OSError) as exc:  # OSError: no connection (asyncpg)
            raise CommitFailed(f"database error: {exc.__class__.__name__}: {exc}") from exc
        self.rows_written += sum(len(w.inserts) + len(w.updates) + len(w.deletes)
                                 for w in writes)

    @staticmethod
    async def _write_pg(conn: Any, w: RowWrites, dialect: str) -> None:
        t = w.table
        pk = _primary_key(t)
        if w.deletes:  # first: a row deleted and made again in one commit is inserted anew
            gone = delete(t).where(and_(*[t.c[k] == bindparam(f"pk_{k}") for k in pk]))
            await conn.execute(gone, [{f"pk_{k}": r[k] for k in pk} for r in w.deletes])
        if w.inserts:
            for shape, rows in _by_shape(w.inserts).items():
                await conn.execute(_upsert(t, dialect, shape), rows)
        for shape, rows in _by_shape(w.updates).items():
            cols = [k for k in shape if k not in pk]
            stmt = update(t).where(and_(*[
                t.c[k] == bindparam(f"pk_{k}") for k in pk])).values(
                {k: bindparam(f"v_{k}") for k in cols})
            await conn.execute(stmt, [
                {**{f"pk_{k}": r[k] for k in pk}, **{f"v_{k}": r[k] for k in cols}}
                for r in rows])

    def _connect(self) -> sqlite3.Connection:
        if self._sqlite is None:
            assert self._sqlite_path is not None
            conn = sqlite3.connect(self._sqlite_path, timeout=30, check_same_thread=False,
                                   isolation_level=None)
            sqlite_pragmas(conn)
            self._sqlite = conn
        return self._sqlite

    def _inline_conn(self) -> sqlite3.Connection:
        if self._inline is None:
            assert self._sqlite_path is not None
            # timeout=0: a held write lock fails BEGIN at once (the thread path waits)
            conn = sqlite3.connect(self._sqlite_path, timeout=0, check_same_thread=False,
                                   isolation_level=None)
            sqlite_pragmas(conn)
            conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints fsync: the thread's
            self._inline = conn
        return self._inline

    def _write_inline(self, writes: list[RowWrites], scrub: bool) -> bool:
        """Commit ``writes`` on the calling (loop) thread if the write lock is free now;
        False (nothing written) if another connection holds it."""
        if not self._commit(self._inline_conn, writes, scrub, wait_for_lock=False):
            return False
        self.inline_commits += 1
        return True

    def _commit(self, connect: Callable[[], sqlite3.Connection], writes: list[RowWrites],
                scrub: bool, *, wait_for_lock: bool) -> bool:
        """One transaction of ``writes`` on the connection ``connect`` gives.

        ``wait_for_lock=False`` (the inline connection, no busy timeout): a write lock held
        elsewhere returns False, nothing written; otherwise a lock not got within the
        connection's timeout is a failed commit like any other database error.

        Raises:
            CommitFailed: the transaction failed and was rolled back.
        """
        try:
            conn = connect()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if not wait_for_lock and exc.sqlite_errorcode in (
                        sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    return False
                raise
            try:
                for w in writes:
                    self._sqlite_table(conn, w)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise CommitFailed(f"database error: {exc.__class__.__name__}: {exc}") from exc
        self.rows_written += sum(len(w.inserts) + len(w.updates) + len(w.deletes)
                                 for w in writes)
        if scrub:
            self._unscrubbed = True
        return True

    def _checkpoint_due(self) -> bool:
        """Whether the WAL should be checkpointed now: key material was destroyed and
        ``scrub_interval_s`` passed, or it outgrew ``wal_checkpoint_bytes``."""
        if self._unscrubbed and time.monotonic() - self._last_scrub >= self._scrub_interval_s:
            return True
        # the WAL's size is looked at once per _WAL_STAT_EVERY inline commits: a stat per
        # commit was 4 % of a one-key ETSI 014 pair (issue #15); a commit adds kilobytes
        self._commits_unstatted += 1
        if self._commits_unstatted < _WAL_STAT_EVERY:
            return False
        self._commits_unstatted = 0
        try:
            return os.stat(f"{self._sqlite_path}-wal").st_size >= self._wal_checkpoint_bytes
        except OSError:
            return False

    def _write_sqlite(self, writes: list[RowWrites], scrub: bool) -> None:
        """One transaction on this writer's own sqlite3 connection, waiting for the write
        lock (worker thread); then the WAL checkpoint if one is due."""
        self._commit(self._connect, writes, scrub, wait_for_lock=True)
        if self._unscrubbed and time.monotonic() - self._last_scrub >= self._scrub_interval_s:
            self._checkpoint(self._connect())

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy the WAL into the database and truncate it (the WAL then holds no old page
        images). A reader in the way makes it a no-op; the next commit tries again."""
        self._last_scrub = time.monotonic()
        try:
            conn.execute("PRAGMA busy_timeout=100")  # never stall commits behind a reader
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            logger.warning("WAL checkpoint failed: %s", exc)
            return
        finally:
            conn.execute("PRAGMA busy_timeout=30000")
        if not busy:
            self._unscrubbed = False
            self.checkpoints += 1

    @staticmethod
    def _sqlite_table(conn: sqlite3.Connection, w: RowWrites) -> None:
        t = w.table
        if w.deletes:  # first, as on PostgreSQL
            sql, _ = _sqlite_statement(t, "delete", ())  # by primary key only
            pk = _primary_key(t)
            conn.executemany(sql, [[r[k] for k in pk] for r in w.deletes])
        for cols, rows in _by_shape(w.inserts).items():
            sql, json_at = _sqlite_statement(t, "insert", cols)
            conn.executemany(sql, [_params(r, cols, json_at) for r in rows])
        for cols, rows in _by_shape(w.updates).items():
            sql, json_at = _sqlite_statement(t, "update", cols)
            names = _sqlite_update_order(t, cols)
            conn.executemany(sql, [_params(r, names, json_at) for r in rows])

    async def close(self) -> None:
        """Truncate the WAL one last time and close the connection (idempotent)."""
        if self._inline is not None:
            inline, self._inline = self._inline, None
            inline.close()
        if self._sqlite is None:
            if self._unscrubbed:
                self._connect()  # the last truncation runs on the thread's connection
            else:
                return
        assert self._sqlite is not None
        conn, self._sqlite = self._sqlite, None

        def finish() -> None:
            try:
                if self._unscrubbed:
                    self._checkpoint(conn)
            finally:
                conn.close()
        try:
            await asyncio.to_thread(finish)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot close the database writer: {exc}") from exc
