"""ETSI 014 server + SDK, in-process over the FakeKeyManager double."""

from __future__ import annotations

import copy
import json

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings
from tests.support.fake_km import FakeKeyNetwork

from keyplane.api.client import BadRequestError, ServiceUnavailableError, UnauthorizedError
from keyplane.api.errors import ApiRequestError
from keyplane.api.etsi014.app import check_key_request
from keyplane.api.etsi014.models import KeyRequest
from keyplane.api.settings import Etsi014Limits


def _state(network: FakeKeyNetwork) -> tuple[int, dict, dict]:
    return network.pool_bits, copy.deepcopy(network.pending), copy.deepcopy(network.streams)


async def test_enc_keys_then_dec_keys_slave_gets_same_bytes(sdk014) -> None:  # type: ignore[no-untyped-def]
    master, slave = sdk014("alice"), sdk014("bob")
    keys = await master.enc_keys("sae_b", number=3, size=256)
    assert len(keys) == 3 and all(len(k.key) == 32 for k in keys)
    got = await slave.dec_keys("sae_a", [k.key_id for k in keys])
    assert [(k.key_id, k.key) for k in got] == [(k.key_id, k.key) for k in keys]


async def test_enc_keys_relayed_pair_slave_on_far_node_gets_same_bytes(sdk014) -> None:  # type: ignore[no-untyped-def]
    keys = await sdk014("alice").enc_keys("sae_c", number=1, size=512)
    (got,) = await sdk014("carol").dec_keys("sae_a", [keys[0].key_id])
    assert got.key == keys[0].key and len(got.key) == 64


async def test_enc_keys_defaults_to_one_key_of_status_key_size(sdk014) -> None:  # type: ignore[no-untyped-def]
    status = await sdk014("alice").status("sae_b")
    (key,) = await sdk014("alice").enc_keys("sae_b")
    assert len(key.key) * 8 == status.key_size == 256
    assert status.master_SAE_ID == "sae_a" and status.target_KME_ID == "km1"


async def test_dec_keys_second_fetch_refused_and_first_unchanged(sdk014) -> None:  # type: ignore[no-untyped-def]
    (key,) = await sdk014("alice").enc_keys("sae_b")
    await sdk014("bob").dec_keys("sae_a", [key.key_id])
    with pytest.raises(BadRequestError) as err:
        await sdk014("bob").dec_keys("sae_a", [key.key_id])
    assert err.value.message == "one or more keys specified are not found on KME"


async def test_dec_keys_other_pairs_key_is_401_and_consumes_nothing(sdk014, network) -> None:  # type: ignore[no-untyped-def]
    (key,) = await sdk014("alice").enc_keys("sae_b")
    before = _state(network)
    with pytest.raises(UnauthorizedError):
        await sdk014("mallory").dec_keys("sae_a", [key.key_id])
    assert _state(network) == before
    (got,) = await sdk014("bob").dec_keys("sae_a", [key.key_id])
    assert got.key == key.key


async def test_dec_keys_batch_with_one_unknown_id_delivers_none(sdk014, network) -> None:  # type: ignore[no-untyped-def]
    keys = await sdk014("alice").enc_keys("sae_b", number=2)
    with pytest.raises(BadRequestError):
        await sdk014("bob").dec_keys("sae_a", [keys[0].key_id,
                                               "00000000-0000-4000-8000-000000000001"])
    got = await sdk014("bob").dec_keys("sae_a", [k.key_id for k in keys])
    assert len(got) == 2


async def test_enc_keys_more_than_available_is_503_and_consumes_nothing(sdk014, network) -> None:  # type: ignore[no-untyped-def]
    before = _state(network)
    with pytest.raises(ServiceUnavailableError):
        await sdk014("alice").enc_keys("sae_b", number=1024, size=8192)
    assert _state(network) == before


@pytest.mark.parametrize(("query", "message"), [
    ("size=100", "size shall be a multiple of 8"),
    ("size=8", "requested key size is out of range"),
    ("size=16384", "requested key size is out of range"),
    ("number=1025", "number of requested keys exceeds max_key_per_request"),
    ("number=0", "number shall be a positive integer"),
    ("number=-3", "number shall be a positive integer"),
    ("number=1.5", "bad request format"),
    ("size=abc", "bad request format"),
])
async def test_enc_keys_bad_parameters_are_400_and_never_reach_km(raw, network, query: str,
                                                                   message: str) -> None:
    before = _state(network)
    r = await raw("alice").get(f"/api/v1/keys/sae_b/enc_keys?{query}")
    assert r.status_code == 400 and r.json()["message"] == message
    assert _state(network) == before and network.calls == []


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"number": "x"}', b'{"nmber": 1}',
                                  b'{"extension_mandatory": {"a": 1}}', b"\xff\xfe"])
async def test_enc_keys_malformed_bodies_are_400(raw, network, body: bytes) -> None:  # type: ignore[no-untyped-def]
    r = await raw("alice").post("/api/v1/keys/sae_b/enc_keys", content=body,
                                headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and set(r.json()) <= {"message", "details"}
    assert network.calls == []


async def test_enc_keys_unsupported_mandatory_extension_lists_each(raw) -> None:  # type: ignore[no-untyped-def]
    r = await raw("alice").post("/api/v1/keys/sae_b/enc_keys", json={
        "extension_mandatory": [{"x_a": 1}, {"x_b": {"deep": True}}],
        "extension_optional": [{"x_c": 2}]})
    assert r.status_code == 400
    assert r.json()["details"] == [{"extension_mandatory_unsupported": "x_a"},
                                   {"extension_mandatory_unsupported": "x_b"}]


async def test_requests_without_identity_are_401(raw, km_app) -> None:  # type: ignore[no-untyped-def]
    import httpx

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=km_app("km0")),
                                 base_url="https://km0") as anon:
        for method, url in [("GET", "/api/v1/keys/sae_b/status"),
                            ("GET", "/api/v1/keys/sae_b/enc_keys"),
                            ("GET", "/api/v1/keys/sae_b/dec_keys?key_ID="
                                    "00000000-0000-4000-8000-000000000001")]:
            r = await anon.request(method, url)
            assert r.status_code == 401, url
        r = await anon.get("/api/v1/keys/sae_b/status", headers={"Authorization": "Basic eA=="})
        assert r.status_code == 401


async def test_bearer_token_is_401_even_with_a_valid_certificate(raw, network) -> None:  # type: ignore[no-untyped-def]
    # no bearer token is accepted, not even one naming the caller itself: the client
    # certificate is the identity (issue #13)
    c = raw("alice")
    for token in ("alice-token", "CN=bob,O=test", "nobody"):
        r = await c.get("/api/v1/keys/sae_b/enc_keys", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401 and "keys" not in r.json()
    assert network.calls == []


async def test_sae_id_header_only_chooses_among_the_certificate_owners_saes(raw, network) -> None:  # type: ignore[no-untyped-def]
    # mallory's certificate naming bob's SAE (same KM) is refused before the key manager
    r = await raw("mallory").get("/api/v1/keys/sae_a/status", headers={"X-SAE-ID": "sae_b"})
    assert r.status_code == 401 and "X-SAE-ID" in r.json()["message"]
    r = await raw("mallory").get("/api/v1/keys/sae_a/dec_keys?key_ID="
                                 "00000000-0000-4000-8000-000000000001",
                                 headers={"X-SAE-ID": "sae_b"})
    assert r.status_code == 401
    assert network.calls == []
    # naming the SAE it does own is fine
    r = await raw("mallory").get("/api/v1/keys/sae_a/status", headers={"X-SAE-ID": "sae_m"})
    assert r.status_code == 200 and r.json()["master_SAE_ID"] == "sae_m"


def test_check_key_request_applies_defaults_and_merges_extensions() -> None:
    lim = Etsi014Limits(key_size_bits=128, max_sae_id_count=2)
    n, size, slaves, ext = check_key_request(
        KeyRequest(additional_slave_SAE_IDs=["s2"], extension_mandatory=[{"k_route": "x"}],
                   extension_optional=[{"k_age": 3}]), lim, frozenset({"k_route"}))
    assert (n, size, slaves) == (1, 128, ["s2"])
    assert ext == {"extension_mandatory": [{"k_route": "x"}], "extension_optional": [{"k_age": 3}]}


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(number=st.one_of(st.none(), st.integers(-10, 3000)),
       size=st.one_of(st.none(), st.integers(-16, 20000)),
       slaves=st.one_of(st.none(), st.lists(st.text(min_size=1, max_size=4), max_size=3)))
def test_check_key_request_accepts_exactly_the_limits(number, size, slaves) -> None:  # type: ignore[no-untyped-def]
    lim = Etsi014Limits(max_sae_id_count=1)
    req = KeyRequest(number=number, size=size, additional_slave_SAE_IDs=slaves)
    n, s = (1 if number is None else number), (lim.key_size_bits if size is None else size)
    ok = (1 <= n <= lim.max_key_per_request and s % 8 == 0
          and lim.min_key_size_bits <= s <= lim.max_key_size_bits
          and len(slaves or []) <= 1)
    try:
        check_key_request(req, lim, frozenset())
        assert ok
    except ApiRequestError as exc:
        assert not ok and exc.http_status == 400


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(body=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                         lambda c: st.lists(c, max_size=3) | st.dictionaries(
                             st.sampled_from(["number", "size", "key_IDs", "key_ID",
                                              "additional_slave_SAE_IDs",
                                              "extension_mandatory", "x"]), c, max_size=3),
                         max_leaves=8),
       path=st.sampled_from(["sae_b/enc_keys", "sae_a/dec_keys", "sae_b/status"]))
def test_any_json_body_gets_a_standard_answer_and_bad_ones_change_nothing(body, path) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    import httpx
    from tests.support.tls_scope import with_client_certificate
    from tests.support.topologies import line3

    from keyplane.api.server import create_km_app
    from keyplane.api.settings import ApiSettings

    network = FakeKeyNetwork(line3(), seed=14)
    app = create_km_app(network.km("km0"), kme_id="km0",
                        settings=ApiSettings.from_topology(network.topology, "km0"))

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=with_client_certificate(app, "CN=alice,O=test"))
        async with httpx.AsyncClient(transport=transport, base_url="https://km0") as c:
            method = "GET" if path.endswith("status") else "POST"
            return await c.request(method, f"/api/v1/keys/{path}",
                                   content=json.dumps(body).encode(),
                                   headers={"Content-Type": "application/json"})

    before = _state(network)
    r = asyncio.run(go())
    assert r.status_code in (200, 400, 401, 503)
    if r.status_code != 200:
        assert set(r.json()) <= {"message", "details"}
        assert _state(network) == before
