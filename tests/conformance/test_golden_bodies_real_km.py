"""Golden ETSI 014 / 004 exchanges recorded from the REAL key manager (issue #16.4).

One scenario runs through the ETSI apps of real KMs behind the real control plane
(tests/support/real_net.py, the line3 topology: sae_a at km0, sae_b and sae_m at km1, sae_c
at km2). Each step's request and response are pinned in ``data/real/<step>.json`` and
compared as parsed JSON. Key bytes, key_IDs and Key_stream_IDs are fresh randomness on every
run, so both sides are compared with those values masked (:func:`mask`: every UUID, the
length of every key); everything else (members, statuses, messages, QoS, metadata) is
compared as is. docs/api/etsi014.md and etsi004.md quote these files (checked by
``test_docs_examples_match_real_km_golden_files``). The test double keeps its own set apart
(test_golden_bodies_fake.py, ``data/fake/``).

To re-record after an intended wire change:
``KEYPLANE_REGEN_GOLDEN=1 pytest tests/conformance/test_golden_bodies_real_km.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.golden import (
    GoldenRecorder,
    assert_etsi_error_bodies,
    etsi014_parameter_errors,
    golden_names,
    load_golden,
    write_golden,
)
from tests.support.real_net import RealNet, real_net
from tests.support.topologies import line3

from keyplane.api.server import create_km_app
from keyplane.api.settings import ApiSettings, Etsi014Limits
from keyplane.store import Database, sqlite_url

DATA = Path(__file__).parent / "data" / "real"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "api"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_KEYS = {"key", "key_buffer"}


def mask(value: Any, member: str = "") -> Any:
    """``value`` with run-to-run randomness replaced by its shape."""
    if isinstance(value, dict):
        return {k: mask(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v, member) for v in value]
    if isinstance(value, str):
        if member in _KEYS:
            return f"<{len(base64.b64decode(value))} key bytes>"
        return _UUID.sub("<uuid>", value)
    return value


class Recorder(GoldenRecorder):
    """The real KMs' ETSI apps: each user's mTLS client (tests/support/real_net.py)."""

    def __init__(self, net: RealNet) -> None:
        super().__init__()
        self.net = net
        topo = net.topology
        # alice's KM reached without a client certificate (the unauthenticated steps)
        app = create_km_app(net.kms["km0"], kme_id="km0", settings=ApiSettings.from_topology(
            topo, "km0", limits=Etsi014Limits.from_km_settings(net.settings)))
        self.anonymous = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                           base_url="https://km0")

    def client(self, user: str | None) -> httpx.AsyncClient:
        return self.anonymous if user is None else self.net.client(user)


async def run_scenario(rec: Recorder) -> None:
    k = "/api/v1/keys"
    # ---- ETSI 014: responses ------------------------------------------------------------
    await rec("etsi014_status", "alice", "GET", f"{k}/sae_b/status")
    got = await rec("etsi014_enc_keys_get", "alice", "GET", f"{k}/sae_b/enc_keys?number=2&size=128")
    posted = await rec("etsi014_enc_keys_post", "alice", "POST", f"{k}/sae_b/enc_keys",
                       {"number": 1, "size": 256, "extension_optional": [{"abc_max_age": 30000}]})
    id0, id1 = (key["key_ID"] for key in got["keys"])
    await rec("etsi014_dec_keys_get", "bob", "GET", f"{k}/sae_a/dec_keys?key_ID={id0}")
    await rec("etsi014_dec_keys_post", "bob", "POST", f"{k}/sae_a/dec_keys",
              {"key_IDs": [{"key_ID": id1},
                           # QuKayDee's shape (QURSA): master_SAE_ID inside the entry, ignored
                           {"key_ID": posted["keys"][0]["key_ID"], "master_SAE_ID": "sae_a"}]})
    # ---- ETSI 014: errors ---------------------------------------------------------------
    await etsi014_parameter_errors(rec, "alice", "sae_b")
    await rec("etsi014_error_unknown_slave", "alice", "GET", f"{k}/sae_x/status")
    await rec("etsi014_error_malformed_key_id", "bob", "GET", f"{k}/sae_a/dec_keys?key_ID=not-a-uuid")
    await rec("etsi014_error_unknown_key_id", "bob", "GET",
              f"{k}/sae_a/dec_keys?key_ID=00000000-0000-4000-8000-000000000000")
    await rec("etsi014_error_key_fetched_twice", "bob", "GET", f"{k}/sae_a/dec_keys?key_ID={id0}")
    await rec("etsi014_error_not_authenticated", None, "GET", f"{k}/sae_b/status")
    fresh = await rec("etsi014_enc_keys_for_entitlement_check", "alice", "GET",
                      f"{k}/sae_b/enc_keys")
    await rec("etsi014_error_not_entitled", "mallory", "GET",
              f"{k}/sae_a/dec_keys?key_ID={fresh['keys'][0]['key_ID']}")
    await rec("etsi014_error_not_entitled_peer", "alice", "GET", f"{k}/sae_m/enc_keys")
    # ---- ETSI 004 -----------------------------------------------------------------------
    e = "/etsi004/v1"
    opened = await rec("etsi004_open_connect_peer_not_connected", "alice", "POST",
                       f"{e}/open_connect",
                       {"source": "sae_a", "destination": "sae_b",
                        "QoS": {"Key_chunk_size": 32, "Max_bps": 8192, "Min_bps": 256,
                                "Jitter": 10, "Priority": 0, "Timeout": 600_000, "TTL": 60,
                                "Metadata_mimetype": "application/json"}})
    ksid = opened["Key_stream_ID"]
    await rec("etsi004_open_connect_success", "bob", "POST", f"{e}/open_connect",
              {"source": "sae_b", "destination": "sae_a", "Key_stream_ID": ksid,
               "QoS": {"Key_chunk_size": 32, "Max_bps": 4096, "Timeout": 600_000}})
    await rec("etsi004_open_connect_negotiated_qos", "alice", "POST", f"{e}/open_connect",
              {"source": "sae_a", "destination": "sae_b", "Key_stream_ID": ksid,
               "QoS": {"Key_chunk_size": 32, "Timeout": 600_000}})
    await rec("etsi004_open_connect_ksid_in_use", "mallory", "POST", f"{e}/open_connect",
              {"source": "sae_m", "destination": "sae_a", "Key_stream_ID": ksid})
    await rec("etsi004_open_connect_qos_not_met", "alice", "POST", f"{e}/open_connect",
              {"source": "sae_a", "destination": "sae_b", "QoS": {"Min_bps": 10_000_000,
                                                                  "Max_bps": 10_000_000}})
    await rec("etsi004_get_key_success", "alice", "POST", f"{e}/get_key",
              {"Key_stream_ID": ksid})
    await rec("etsi004_get_key_success_peer_same_index", "bob", "POST", f"{e}/get_key",
              {"Key_stream_ID": ksid, "index": 0, "Metadata": {"Metadata_size": 1024}})
    await rec("etsi004_get_key_metadata_insufficient_size", "bob", "POST", f"{e}/get_key",
              {"Key_stream_ID": ksid, "index": 1, "Metadata": {"Metadata_size": 4}})
    await rec("etsi004_get_key_acknowledged", "alice", "POST", f"{e}/get_key",
              {"Key_stream_ID": ksid, "index": 1,
               "Metadata": {"Metadata_size": 4096, "Metadata_buffer": {"keyplane_ack": True}}})
    await rec("etsi004_get_key_index_spent", "alice", "POST", f"{e}/get_key",
              {"Key_stream_ID": ksid, "index": 0})
    await rec("etsi004_get_key_unknown_stream", "alice", "POST", f"{e}/get_key",
              {"Key_stream_ID": "00000000-0000-4000-8000-000000000000"})
    await rec("etsi004_close_success", "alice", "POST", f"{e}/close", {"Key_stream_ID": ksid})
    await rec("etsi004_close_peer_success", "bob", "POST", f"{e}/close", {"Key_stream_ID": ksid})
    await rec("etsi004_get_key_stream_ended", "alice", "POST", f"{e}/get_key",
              {"Key_stream_ID": ksid})
    await rec("etsi004_error_malformed", "alice", "POST", f"{e}/get_key",
              {"Key_stream_ID": "not-a-uuid", "index": -1})
    await rec("etsi004_error_not_authenticated", None, "POST", f"{e}/close",
              {"Key_stream_ID": ksid})


async def _record() -> dict[str, dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        db = await Database.open(sqlite_url(Path(tmp) / "km.db"))
        try:
            async with real_net(line3(), db, seed=16004) as net:
                rec = Recorder(net)
                try:
                    await run_scenario(rec)
                finally:
                    await rec.anonymous.aclose()
        finally:
            await db.close()
    return rec.steps


@pytest.fixture(scope="module")
def recorded() -> dict[str, dict[str, Any]]:
    steps = asyncio.run(_record())
    write_golden(steps, DATA)
    return steps


def test_real_km_golden_files_cover_every_step_and_nothing_else(recorded) -> None:  # type: ignore[no-untyped-def]
    assert {p.stem for p in DATA.glob("*.json")} == set(recorded)


@pytest.mark.conformance("etsi014", "5.1",
                          "Get status: every member, from live figures")
@pytest.mark.conformance("etsi014", "5.2",
                          "Get key (enc_keys) by GET and by POST")
@pytest.mark.conformance("etsi014", "5.3",
                          "Get key with key IDs (dec_keys) by GET and by POST, each key once")
@pytest.mark.conformance("etsi014", "5.3",
                          "dec_keys liberal: unknown members in key_IDs entries ignored (QuKayDee's master_SAE_ID)")
@pytest.mark.conformance("etsi014", "5.2",
                          "extension_mandatory unsupported: 400 with the offending items in details")
@pytest.mark.conformance("etsi014", "5.2",
                          "extension_optional unsupported: ignored")
@pytest.mark.conformance("etsi014", "6",
                          "errors: 400 with {message, details} for bad parameters and limits")
@pytest.mark.conformance("etsi014", "6",
                          "errors: 400 for an unknown slave SAE_ID and for unknown key_IDs")
@pytest.mark.conformance("etsi014", "6",
                          "errors: 401 unauthenticated, or not entitled to the keys or the peer")
@pytest.mark.conformance("etsi004", "6.2",
                          "status 0 success and 1 peer not connected")
@pytest.mark.conformance("etsi004", "6.4",
                          "GET_KEY metadata in/out; status 8 with the Metadata_size needed")
@pytest.mark.conformance("etsi004", "5",
                          "errors before a call: HTTP 400 malformed, 401 unauthenticated")
@pytest.mark.parametrize("name", golden_names(DATA))
def test_real_km_exchange_matches_golden(recorded, name: str) -> None:  # type: ignore[no-untyped-def]
    assert mask(recorded[name]) == mask(load_golden(DATA, name))


def test_real_km_errors_use_etsi_error_body(recorded) -> None:  # type: ignore[no-untyped-def]
    assert_etsi_error_bodies(recorded)


_EXAMPLE = re.compile(r"<!-- golden: (\w+) (request|response) -->\s*```json\n(.*?)```", re.S)


@pytest.mark.parametrize("doc", ["etsi014.md", "etsi004.md"])
def test_docs_examples_match_real_km_golden_files(doc: str) -> None:
    text = (DOCS / doc).read_text()
    examples = _EXAMPLE.findall(text)
    assert len(examples) >= 5
    for name, part, block in examples:
        golden = load_golden(DATA, name)
        expected = golden["request"]["body"] if part == "request" else golden["response"]
        assert json.loads(block) == expected, (doc, name, part)
