"""Database access: one async SQLAlchemy engine, SQLite by default, PostgreSQL by URL.

``Database.open(url)`` creates the engine and brings the schema to the latest Alembic
revision (so a new file, an old file and a PostgreSQL database all end up identical).
SQLAlchemy exceptions stop here and become :class:`~keyplane.errors.StoreError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from keyplane.errors import StoreError
from keyplane.extras import MissingDependency, require

__all__ = ["Database", "normalize_url", "sqlite_url"]


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


def _migrate(sync_conn: Any) -> None:
    from alembic import command
    from alembic.config import Config

    here = Path(__file__).parent
    cfg = Config()
    cfg.set_main_option("script_location", str(here / "migrations"))
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


class Database:
    """An async engine plus a session factory."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)

    @property
    def url(self) -> str:
        """The engine URL with any password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True, echo: bool = False) -> Database:
        """Connect to ``url`` and (by default) upgrade the schema to the latest revision.

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
        engine = create_async_engine(url, **kwargs)
        if engine.dialect.name == "sqlite":
            @event.listens_for(engine.sync_engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()
        db = cls(engine)
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
            StoreError: the database failed (the transaction is rolled back).
        """
        async with self.sessions() as s:
            try:
                async with s.begin():
                    yield s
            except SQLAlchemyError as exc:
                raise StoreError(f"database error: {exc.__class__.__name__}: {exc}") from exc

    async def close(self) -> None:
        """Dispose of the engine's connections (idempotent)."""
        await self.engine.dispose()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()
