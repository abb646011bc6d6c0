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
                Monitoring Element's figures during a PostgreSQL outage).
        """
        async with self.sessions() as s:
            try:
                async with s.begin():
                    yield s
            except (SQLAlchemyError, OSError) as exc:
                raise StoreError(f"database error: {exc.__class__.__name__}: {exc}") from exc

    async def ping(self) -> bool:
        """Whether the database answers a trivial query now (readiness probes).

        Never raises: an unreachable database is False.
        """
        try:
            async with self.engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")
        except (SQLAlchemyError, OSError):
            return False
        return True

    async def close(self) -> None:
        """Dispose of the engine's connections (idempotent)."""
        await self.engine.dispose()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()
