"""Test support for the ETSI 015 tests (imported by conftest and the test modules).

``with_subject`` and ``MultiAppTransport`` (re-exported from tests/support/etsi015.py, shared
with the control-plane tests) reach in-process agents; ``assert_valid`` checks a document
against the YANG model (workaround applied).
"""

from __future__ import annotations

from typing import Any

from tests.support.etsi015 import MultiAppTransport, with_subject

from keyplane.api.etsi015 import validate_node

__all__ = ["MultiAppTransport", "assert_valid", "with_subject"]


def assert_valid(document: dict[str, Any]) -> None:
    """The whole datastore document conforms to the model (workaround applied)."""
    validate_node(document)
