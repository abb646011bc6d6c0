"""THE TEST DOUBLE'S golden exchanges (tests/support/fake_km.py), kept apart from the real KM's.

These bodies pin the API layer over a seeded FakeKeyNetwork (reproducible key_IDs and bytes);
they prove nothing about the key manager. The bodies the docs quote and the conformance
tables rely on are recorded from the real KM: tests/conformance/test_golden_bodies_real_km.py
and ``data/real/``. This set lives in ``data/fake/``.

To re-record after an intended wire change:
``KEYPLANE_REGEN_GOLDEN=1 pytest tests/conformance/test_golden_bodies_fake.py``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.fake_km import FakeKeyNetwork
from tests.support.golden import (
    GoldenRecorder,
    assert_etsi_error_bodies,
    etsi014_parameter_errors,
    golden_names,
    load_golden,
    write_golden,
)
from tests.support.tls_scope import with_client_certificate
from tests.support.topologies import line3

from keyplane.api.server import create_km_app
from keyplane.api.settings import ApiSettings

DATA = Path(__file__).parent / "data" / "fake"


class Recorder(GoldenRecorder):
    """The double's ETSI apps, one in-process client per user (and one with no certificate)."""

    def __init__(self, network: FakeKeyNetwork) -> None:
        super().__init__()
        self.network = network
        self.clients: dict[str | None, httpx.AsyncClient] = {}
        topo = network.topology
        for app in topo.applications:
            user = topo.user(app.owner)
            asgi = create_km_app(network.km(app.node), kme_id=app.node,
                                 settings=ApiSettings.from_topology(topo, app.node))
            self.clients[user.id] = httpx.AsyncClient(
                transport=httpx.ASGITransport(
                    app=with_client_certificate(asgi, user.certificate_subject)),
                base_url=f"https://{app.node}")
            if user.id == "alice":  # the same KM, reached without a client certificate
                self.clients[None] = httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=asgi), base_url=f"https://{app.node}")

    def client(self, user: str | None) -> httpx.AsyncClient:
        return self.clients[user]

    async def aclose(self) -> None:
        for c in self.clients.values():
            await c.aclose()


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
              {"key_IDs": [{"key_ID": id1}, {"key_ID": posted["keys"][0]["key_ID"]}]})
    # ---- ETSI 014: errors ---------------------------------------------------------------
    await etsi014_parameter_errors(rec, "alice", "sae_b")
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
    await rec("etsi014_error_insufficient_key", "alice", "GET",
              f"{k}/sae_b/enc_keys?number=1024&size=8192")
    # ---- ETSI 004 -----------------------------------------------------------------------
    e = "/etsi004/v1"
    opened = await rec("etsi004_open_connect_peer_not_connected", "alice", "POST",
                       f"{e}/open_connect",
                       {"source": "sae_a", "destination": "sae_b",
                        "QoS": {"Key_chunk_size": 32, "Max_bps": 8192, "Min_bps": 256,
                                "Jitter": 10, "Priority": 1, "Timeout": 2000, "TTL": 60,
                                "Metadata_mimetype": "application/json"}})
    ksid = opened["Key_stream_ID"]
    await rec("etsi004_get_key_peer_not_connected", "alice", "POST", f"{e}/get_key",
              {"Key_stream_ID": ksid})
    await rec("etsi004_open_connect_success", "bob", "POST", f"{e}/open_connect",
              {"source": "sae_b", "destination": "sae_a", "Key_stream_ID": ksid})
    await rec("etsi004_open_connect_ksid_in_use", "bob", "POST", f"{e}/open_connect",
              {"source": "sae_b", "destination": "sae_a", "Key_stream_ID": ksid})
    await rec("etsi004_open_connect_qos_not_met", "alice", "POST", f"{e}/open_connect",
              {"source": "sae_a", "destination": "sae_b", "QoS": {"Min_bps": 10_000_000,
                                                                  "Max_bps": 10_000_000}})
    await rec("etsi004_get_key_success", "alice", "POST", f"{e}/get_key",
              {"Key_stream_ID": ksid})
    await rec("etsi004_get_key_success_peer_same_index", "bob", "POST", f"{e}/get_key",
              {"Key_stream_ID": ksid, "index": 0, "Metadata": {"Metadata_size": 1024}})
    await rec("etsi004_get_key_metadata_insufficient_size", "bob", "POST", f"{e}/get_key",
              {"Key_stream_ID": ksid, "index": 1, "Metadata": {"Metadata_size": 4}})
    await rec("etsi004_close_success", "alice", "POST", f"{e}/close", {"Key_stream_ID": ksid})
    await rec("etsi004_close_peer_success", "bob", "POST", f"{e}/close", {"Key_stream_ID": ksid})
    await rec("etsi004_get_key_ksid_not_found", "alice", "POST", f"{e}/get_key",
              {"Key_stream_ID": ksid})
    await rec("etsi004_error_malformed", "alice", "POST", f"{e}/get_key",
              {"Key_stream_ID": "not-a-uuid", "index": -1})
    await rec("etsi004_error_not_authenticated", None, "POST", f"{e}/close",
              {"Key_stream_ID": ksid})


async def _record() -> dict[str, dict[str, Any]]:
    rec = Recorder(FakeKeyNetwork(line3(), seed=7014))
    try:
        await run_scenario(rec)
    finally:
        await rec.aclose()
    return rec.steps


@pytest.fixture(scope="module")
def recorded() -> dict[str, dict[str, Any]]:
    steps = asyncio.run(_record())
    write_golden(steps, DATA)
    return steps


def test_golden_files_cover_every_step_and_nothing_else(recorded) -> None:  # type: ignore[no-untyped-def]
    assert {p.stem for p in DATA.glob("*.json")} == set(recorded)


@pytest.mark.parametrize("name", golden_names(DATA))
def test_golden_exchange_matches_recorded(recorded, name: str) -> None:  # type: ignore[no-untyped-def]
    assert recorded[name] == load_golden(DATA, name)


def test_golden_errors_use_etsi_error_body(recorded) -> None:  # type: ignore[no-untyped-def]
    assert_etsi_error_bodies(recorded)
