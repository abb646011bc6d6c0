"""Database access: one async SQLAlchemy engine, SQLite by default, PostgreSQL by URL.

``Database.open(url)`` creates the engine and brings the schema to the latest Alembic
revision (so a new file, an old file and a PostgreSQL database all end up identical).
SQLAlchemy exceptions stop here and become :class:`~keyplane.errors.StoreError`.

A database also carries the :class:`~keyplane.store.sealing.KeyRing` that seals key
material for the nodes writing to it. A SQLite file is created ``0600`` (SQLite gives its
``-wal`` and ``-shm`` files the same mode) and opened with ``secure_delete`` on, so deleted
rows are overwritten in the file.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from keyplane.errors import StoreError
from keyplane.extras import MissingDependency, require
from keyplane.fileperms import private_file, restrict
from keyplane.store.sealing import KeyRing

__all__ = ["Database", "normalize_url", "sqlite_pragmas", "sqlite_url"]


def sqlite_url(path: str | Path) -> str:
    """The async URL of a SQLite file."""
    return f"sqlite+aiosqlite:///{Path(path)}"


def normalize_url(url: str) -> str:
    """Map plain URLs to their async drivers (``postgresql://`` → ``postgresql+asyncpg://``)."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("postgresql+psycopg://") or url.startswith("postgresql+psycopg2://"):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    return url


def sqlite_pragmas(dbapi_conn: Any) -> None:
    """The settings of every SQLite connection keyplane opens (the engine's and the group
    commit writer's): WAL, foreign keys, and ``secure_delete`` (deleted content is zeroed
    in the file, so a spent key's sealed bytes are not left in free pages)."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA secure_delete=ON")
    cur.close()


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for an in-memory database)."""
    path = url.split(":///", 1)[1] if ":///" in url else ""
    if path in ("", ":memory:") or path.startswith("file:"):
        return None
    return Path(path)


MIGRATION_LOCK_ID = 0x6B65_7970_6C61_6E65 & 0x7FFF_FFFF_FFFF_FFFF
"""PostgreSQL advisory lock held while the schema is migrated ("keyplane" in ASCII)."""


def _migrate(sync_conn: Any) -> None:
    from alembic import command
    from alembic.config import Config

    if sync_conn.dialect.name == "postgresql":
        # processes started together (every pod of a Kubernetes deployment) migrate one at a
        # time: concurrent CREATE TABLEs on a fresh database fail on PostgreSQL's catalogue
        # (UniqueViolation on pg_type); the lock ends with the migration's transaction
        sync_conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_ID})

    here = Path(__file__).parent
    cfg = Config()
    cfg.set_main_option("script_location", str(here / "migrations"))
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


class _Holders:
    """Which task holds each connection checked out of an engine's pool (pool events).

    ``Database.close`` waits on it: disposing of the engine while another task is still
    inside a transaction leaves that task's connection out of the pool, and the driver
    thread of a SQLite connection nobody closes is finalised later, by the garbage
    collector, possibly after the event loop closed ("Event loop is closed" raised in the
    aiosqlite thread).
    """

    def __init__(self) -> None:
        self._held: dict[int, asyncio.Task[Any]] = {}
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    def checkout(self, _dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        try:
            task = asyncio.current_task()
        except RuntimeError:  # a synchronous use outside any event loop
            task = None
        if task is not None:
            self._held[id(record)] = task

    def checkin(self, _dbapi_conn: Any, record: Any) -> None:
        if self._held.pop(id(record), None) is not None:
            self._wake()

    def _wake(self, *_: Any) -> None:
        # a checkin can run in the garbage collector, on any thread
        if self._waiter is not None and not self._waiter[0].is_closed():
            self._waiter[0].call_soon_threadsafe(self._waiter[1].set)

    async def released_by_others(self) -> None:
        """Return once no task but the caller holds a connection (a holder that ended
        without giving its connection back is not waited for)."""
        me = asyncio.current_task()
        while True:
            others = {t for t in self._held.values() if t is not me and not t.done()}
            if not others:
                return
            changed = asyncio.Event()
            self._waiter = (asyncio.get_running_loop(), changed)
            for t in others:
                t.add_done_callback(self._wake)
            try:
                await changed.wait()
            finally:
                self._waiter = None
                for t in others:
                    t.remove_done_callback(self._wake)


class Database:
    """An async engine, a session factory and the key ring sealing key material.

    Args:
        engine: the async engine.
        keyring: where each node's key-encryption key comes from (default: none; sealing
            then fails with a clear :class:`~keyplane.errors.StoreError`).
    """

    def __init__(self, engine: AsyncEngine, keyring: KeyRing | None = None) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.keyring = keyring if keyring is not None else KeyRing(None, create=False)
        self._closed = False
        self._holders = _Holders()
        event.listen(engine.sync_engine, "checkout", self._holders.checkout)
        event.listen(engine.sync_engine, "checkin", self._holders.checkin)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (a closed database opens no transaction)."""
        return self._closed

    @property
    def url(self) -> str:
        """The engine URL with any password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True, echo: bool = False,
                   keyring: KeyRing | None = None) -> Database:
        """Connect to ``url`` and (by default) upgrade the schema to the latest revision.

        Args:
            keyring: the nodes' key-encryption keys. Default: for a SQLite file,
                ``<its folder>/kek/<node>.kek``, made on first use; for PostgreSQL none
                (give one: the KEK must never live in the database it protects).

        Raises:
            StoreError: the database cannot be reached or migrated.
        """
        url = normalize_url(url)
        if url.startswith("postgresql+asyncpg"):
            try:
                require("asyncpg")
            except MissingDependency as exc:
                raise StoreError(str(exc)) from exc
        kwargs: dict[str, Any] = {"echo": echo}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
            file = _sqlite_file(url)
            if file is not None:
                try:
                    private_file(file)
                except OSError as exc:
                    raise StoreError(f"cannot create database {file}: {exc}") from exc
                for extra in ("-wal", "-shm", "-journal"):
                    restrict(file.with_name(file.name + extra))
                if keyring is None:
                    keyring = KeyRing(file.parent / "kek")
        engine = create_async_engine(url, **kwargs)
        if engine.dialect.name == "sqlite":
            @event.listens_for(engine.sync_engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                sqlite_pragmas(dbapi_conn)
        db = cls(engine, keyring)
        if migrate:
            try:
                async with engine.begin() as conn:
                    await conn.run_sync(_migrate)
            except (SQLAlchemyError, OSError) as exc:
                await engine.dispose()
                raise StoreError(f"cannot open database {db.url}: {exc}") from exc
        return db

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A transaction: commits on success, rolls back on error.

        Raises:
            StoreError: the database failed (the transaction is rolled back), or cannot be
                reached: a refused or failed connection comes out of the driver as a bare
                ``OSError`` (asyncpg), which must stop here like any database error (it
                used to end the loops of callers that expect StoreError, e.g. the
                Monitoring Element's figures during a PostgreSQL outage); or the
                database is closed.
        """
        self.check_open()
        async with self.sessions() as s:
            try:
                async with s.begin():
                    yield s
            except (SQLAlchemyError, OSError) as exc:
                raise StoreError(f"database error: {exc.__class__.__name__}: {exc}") from exc

    def check_open(self) -> None:
        """Raise StoreError once the database is closed: after ``close`` the engine would
        otherwise open a new pool, whose connections nobody disposes of."""
        if self._closed:
            raise StoreError(f"database {self.url} is closed")

    async def ping(self) -> bool:
        """Whether the database answers a trivial query now (readiness probes).

        Never raises: an unreachable (or closed) database is False.
        """
        if self._closed:
            return False
        try:
            async with self.engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")
        except (SQLAlchemyError, OSError):
            return False
        return True

    async def close(self) -> None:
        """Refuse new transactions, let those of other tasks in flight end, then dispose of
        the engine's connections (idempotent). Like asyncpg's ``Pool.close``, this waits
        for every connection to come back: a connection disposed of while in use would be
        closed by no one (see :class:`_Holders`)."""
        self._closed = True
        await self._holders.released_by_others()
        await self.engine.dispose()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()
