"""Fixtures for quantum-networking tests: a fresh SQLite store per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from keyplane.store import Database, sqlite_url


@pytest.fixture
async def km_db(tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated SQLite database."""
    db = await Database.open(sqlite_url(tmp_path / "km.db"))
    try:
        yield db
    finally:
        await db.close()
