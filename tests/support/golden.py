"""Golden ETSI 014 / 004 exchanges: the step recorder both golden suites share.

tests/conformance/test_golden_bodies_real_km.py (the real KM) and test_golden_bodies_fake.py
(the API test double) run different scenarios over different key managers; how a step is
run, kept, written and checked is the same, and lives here. Each recorder only says which
HTTP client speaks for a user (``None``: a caller without a client certificate).
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import httpx

REGEN = os.environ.get("KEYPLANE_REGEN_GOLDEN") == "1"
"""``KEYPLANE_REGEN_GOLDEN=1``: write the recorded steps as the new golden files."""

ETSI014_KEYS = "/api/v1/keys"


class GoldenRecorder(ABC):
    """Runs named requests as a given user and keeps (request, response) per step."""

    def __init__(self) -> None:
        self.steps: dict[str, dict[str, Any]] = {}

    @abstractmethod
    def client(self, user: str | None) -> httpx.AsyncClient:
        """The HTTP client that speaks for ``user`` (``None``: no client certificate)."""

    async def __call__(self, name: str, user: str | None, method: str, url: str,
                       body: Any = None, raw: bytes | None = None) -> Any:
        """Send one request (``raw``: these bytes as a JSON body, e.g. malformed JSON),
        record it as step ``name`` and return the parsed response body."""
        client = self.client(user)
        if raw is not None:
            r = await client.request(method, url, content=raw,
                                     headers={"Content-Type": "application/json"})
            request_body: Any = raw.decode()
        else:
            r = await client.request(method, url, json=body)
            request_body = body
        self.steps[name] = {
            "request": {"caller": user, "method": method, "url": url, "body": request_body},
            "http_status": r.status_code, "response": r.json()}
        return r.json()


async def etsi014_parameter_errors(rec: GoldenRecorder, master: str, slave_sae: str) -> None:
    """The ETSI 014 requests refused for their parameters alone (no key is touched): the
    same steps, and the same answers, whichever key manager serves them."""
    k = f"{ETSI014_KEYS}/{slave_sae}"
    await rec("etsi014_error_size_not_multiple_of_8", master, "GET", f"{k}/enc_keys?size=100")
    await rec("etsi014_error_size_out_of_range", master, "POST", f"{k}/enc_keys",
              {"size": 16384})
    await rec("etsi014_error_number_above_max", master, "GET", f"{k}/enc_keys?number=5000")
    await rec("etsi014_error_number_not_positive", master, "GET", f"{k}/enc_keys?number=0")
    await rec("etsi014_error_multicast_not_supported", master, "POST", f"{k}/enc_keys",
              {"number": 1, "additional_slave_SAE_IDs": ["sae_c"]})
    await rec("etsi014_error_extension_mandatory_unsupported", master, "POST",
              f"{k}/enc_keys",
              {"number": 1, "extension_mandatory": [{"abc_route_type": "direct"},
                                                    {"abc_transfer_method": "qkd"}]})
    await rec("etsi014_error_malformed_json", master, "POST", f"{k}/enc_keys",
              raw=b'{"number": 1,')
    await rec("etsi014_error_bad_parameter_type", master, "GET", f"{k}/enc_keys?number=two")


def write_golden(steps: dict[str, dict[str, Any]], data: Path) -> None:
    """Write every step as ``data/<step>.json`` (only when :data:`REGEN` is set)."""
    if not REGEN:
        return
    data.mkdir(parents=True, exist_ok=True)
    for name, step in steps.items():
        (data / f"{name}.json").write_text(json.dumps(step, indent=2) + "\n")


def golden_names(data: Path) -> list[str]:
    """The steps pinned in ``data`` (parametrize over these)."""
    return sorted(p.stem for p in data.glob("*.json"))


def load_golden(data: Path, name: str) -> dict[str, Any]:
    """One pinned step."""
    step: dict[str, Any] = json.loads((data / f"{name}.json").read_text())
    return step


def assert_etsi_error_bodies(steps: dict[str, dict[str, Any]]) -> None:
    """Every refused step answered with ETSI 014's Error body ``{message, details}``."""
    for name, step in steps.items():
        if step["http_status"] != 200:
            body = step["response"]
            assert set(body) <= {"message", "details"} and isinstance(body["message"], str), name
            assert isinstance(body.get("details", []), list), name
