"""Persistence (SQLAlchemy 2, async): SQLite file by default, PostgreSQL by URL."""

from keyplane.store.db import Database, normalize_url, sqlite_url

__all__ = ["Database", "normalize_url", "sqlite_url"]
