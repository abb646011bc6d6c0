"""The conformance tier: registers ``@pytest.mark.conformance(doc, clause, item)``, the mark
from which docs/api/etsi014.md and etsi004.md get their tables (tests/conformance/docgen.py)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "conformance(doc, clause, item): a real-KM test proving a standard's clause")
