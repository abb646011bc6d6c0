"""OpenAPI: the committed documents equal the served ones; schemathesis finds no 5xx and
no response outside the schema (in-process, over the FakeKeyManager double)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from tests.support.fake_km import FakeKeyNetwork
from tests.support.tls_scope import with_client_certificate
from tests.support.topologies import line3

from keyplane.api.etsi004.app import create_etsi004_app
from keyplane.api.etsi014.app import create_etsi014_app
from keyplane.api.openapi_docs import openapi_documents, render
from keyplane.api.settings import ApiSettings

DOCS = Path(__file__).resolve().parents[3] / "docs" / "api"


@pytest.mark.parametrize("name", ["openapi-etsi014.json", "openapi-etsi004.json"])
def test_committed_openapi_equals_generated(name: str) -> None:
    committed = (DOCS / name).read_text()
    assert json.loads(committed) == openapi_documents()[name], (
        "regenerate with: PYTHONPATH=src python -m keyplane.api.openapi_docs docs/api")
    assert committed == render(openapi_documents()[name])


def test_openapi_has_no_422_and_declares_etsi_errors() -> None:
    doc = openapi_documents()["openapi-etsi014.json"]
    for path, ops in doc["paths"].items():
        for op in ops.values():
            assert set(op["responses"]) == {"200", "400", "401", "503"}, path
    assert "HTTPValidationError" not in doc["components"]["schemas"]


_network = FakeKeyNetwork(line3(), seed=9014, pool_bits=1 << 40)
_settings = ApiSettings.from_topology(_network.topology, "km0")
_ALICE = "CN=alice,O=test"  # owner of sae_a at km0: every call is made with her certificate
schema014 = schemathesis.openapi.from_asgi("/openapi.json", with_client_certificate(
    create_etsi014_app(_network.km("km0"), kme_id="km0", settings=_settings), _ALICE))
schema004 = schemathesis.openapi.from_asgi("/openapi.json", with_client_certificate(
    create_etsi004_app(_network.km("km0"), kme_id="km0", settings=_settings), _ALICE))
_FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                 suppress_health_check=list(HealthCheck))


@pytest.mark.slow
@schema014.parametrize()
@_FUZZ
def test_etsi014_schemathesis_no_5xx_and_responses_in_schema(case) -> None:  # type: ignore[no-untyped-def]
    # A well-formed dec_keys for a key_ID this KME never made is a 400 by the standard
    # (clause 5.3, "unknown key_ID"), so "valid data is accepted" does not apply there.
    excluded = ([schemathesis.checks.positive_data_acceptance]
                if case.operation.path.endswith("/dec_keys") else [])
    case.call_and_validate(excluded_checks=excluded)


@pytest.mark.slow
@schema004.parametrize()
@_FUZZ
def test_etsi004_schemathesis_no_5xx_and_responses_in_schema(case) -> None:  # type: ignore[no-untyped-def]
    case.call_and_validate()
