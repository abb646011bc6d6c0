"""Fixtures for key manager tests: a fresh SQLite store per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from keyplane.store import Database, sqlite_url


@pytest.fixture
async def km_db(tmp_path) -> AsyncIterator[Database]:  # type: ignore[no-untyped-def]
    """A migrated SQLite database (the KM tests that need PostgreSQL use ``db``)."""
    db = await Database.open(sqlite_url(tmp_path / "km.db"))
    try:
        yield db
    finally:
        await db.close()
