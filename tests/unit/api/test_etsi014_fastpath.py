"""The enc_keys/dec_keys fast path answers exactly as the FastAPI path would.

Two KM apps over two identical fake networks (same seed): one with the fast path, one
without (the reference). The same request sequence goes to both; every answer must have
the same status and JSON body, and the fast path must have served the common forms itself.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send
from tests.support.fake_km import FakeKeyNetwork
from tests.support.tls_scope import with_client_certificate
from tests.support.topologies import line3

from keyplane.api.etsi014.app import create_etsi014_app
from keyplane.api.etsi014.fastpath import HotRoute
from keyplane.api.settings import ApiSettings

Request = tuple[str, str, str, dict[str, Any]]  # (user, method, url, httpx kwargs)


def _app(fast: bool, node: str) -> tuple[FastAPI, list[str]]:
    network = FakeKeyNetwork(line3(), seed=7101)
    app = create_etsi014_app(network.km(node), kme_id=node, fast_path=fast,
                             settings=ApiSettings.from_topology(network.topology, node))
    fell_back: list[str] = []
    for route in app.router.routes:
        hot = getattr(route, "app", None)
        if isinstance(hot, HotRoute):
            hot.fallback = _counting(hot.fallback, fell_back)
    return app, fell_back


def _counting(app: ASGIApp, log: list[str]) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        log.append(f"{scope['method']} {scope['path']}?{scope['query_string'].decode()}")
        await app(scope, receive, send)
    return wrapped


SUBJECTS = {"alice": "CN=alice,O=test", "bob": "CN=bob,O=test", "mallory": "CN=mallory,O=test"}
ENC = "/api/v1/keys/sae_b/enc_keys"
DEC = "/api/v1/keys/sae_a/dec_keys"
UNKNOWN_ID = "0191e8a4-0c1f-7d2e-8b3a-4c5d6e7f8091"
JSON = {"content-type": "application/json"}

# served by the fast path (valid in form; some fail in the key manager or the limits)
FAST: list[Request] = [
    ("alice", "GET", ENC, {}),
    ("alice", "GET", "/api/v1/keys/nobody/enc_keys", {}),
    ("alice", "POST", "/api/v1/keys/nobody/enc_keys", {"content": b'{"number": 1}', "headers": JSON}),
    ("bob", "GET", "/api/v1/keys/nobody/dec_keys?key_ID=" + UNKNOWN_ID, {}),
    ("bob", "POST", DEC, {"content": b'{"key_IDs": [{"key_ID": "' + UNKNOWN_ID.encode()
                          + b'", "master_SAE_ID": "sae_a"}]}', "headers": JSON}),
    ("alice", "GET", ENC + "?number=3", {}),
    ("alice", "GET", ENC + "?number=2&size=512", {}),
    ("alice", "GET", ENC + "?size=64", {}),
    ("alice", "GET", ENC + "?number=0", {}),
    ("alice", "GET", ENC + "?number=5000", {}),
    ("alice", "GET", ENC + "?size=7", {}),
    ("alice", "GET", "/api/v1/keys/" + "s" * 256 + "/enc_keys", {}),
    ("alice", "POST", ENC, {"content": b"{}", "headers": JSON}),
    ("alice", "POST", ENC, {"content": b'{"number": 2, "size": 128}', "headers": JSON}),
    ("alice", "POST", ENC, {"content": b'{"number": 2.0}',
                            "headers": {"content-type": "application/json; charset=utf-8"}}),
    ("alice", "POST", ENC, {"content": b'{"extension_mandatory": [{"x": 1}]}',
                            "headers": JSON}),
    ("alice", "POST", ENC, {"content": b'{"additional_slave_SAE_IDs": ["sae_c"]}',
                            "headers": JSON}),
    ("bob", "GET", DEC + "?key_ID=" + UNKNOWN_ID, {}),
    ("bob", "POST", DEC, {"content": json.dumps({"key_IDs": [{"key_ID": UNKNOWN_ID}] * 2}),
                          "headers": JSON}),
    ("mallory", "GET", ENC, {}),
    # keyplane's acknowledgement extension (docs/api/etsi014.md): parsed on both paths
    ("bob", "POST", DEC, {"content": json.dumps({"key_IDs": [{"key_ID": UNKNOWN_ID}],
                                                 "key_IDs_extension": {"keyplane_ack": "yes"}}),
                          "headers": JSON}),
    ("bob", "POST", DEC, {"content": json.dumps({
        "key_IDs": [{"key_ID": UNKNOWN_ID}],
        "key_IDs_extension": {"keyplane_ack": True, "keyplane_confirm": [UNKNOWN_ID]}}),
                          "headers": JSON}),
]
# unusual forms: FastAPI's path decides
FALLBACK: list[Request] = [
    ("alice", "GET", ENC + "?number=abc", {}),
    ("alice", "GET", ENC + "?number=1&number=2", {}),
    ("alice", "GET", ENC + "?number=%32", {}),
    ("alice", "GET", ENC + "?number=-1", {}),
    ("alice", "GET", ENC + "?number=02", {}),
    ("alice", "GET", ENC + "?number=", {}),
    ("alice", "GET", ENC + "?other=1", {}),
    ("alice", "GET", "/api/v1/keys/" + "s" * 257 + "/enc_keys", {}),
    ("alice", "POST", ENC, {"content": b"", "headers": JSON}),
    ("alice", "POST", ENC, {"content": b"null", "headers": JSON}),
    ("alice", "POST", ENC, {"content": b"{", "headers": JSON}),
    ("alice", "POST", ENC, {"content": b'{"number": "2"}', "headers": JSON}),
    ("alice", "POST", ENC, {"content": b'{"number": true}', "headers": JSON}),
    ("alice", "POST", ENC, {"content": b'{"bogus": 1}', "headers": JSON}),
    ("alice", "POST", ENC, {"content": b'{"number": 2}', "headers": {"content-type": "text/plain"}}),
    ("alice", "POST", ENC, {"content": b'{"number": 2}'}),
    ("bob", "GET", DEC + "?key_ID=not-a-uuid", {}),
    ("bob", "GET", DEC, {}),
    ("bob", "POST", DEC, {"content": b'{"key_IDs": []}', "headers": JSON}),
    ("bob", "POST", DEC, {"content": b'{"key_IDs": [{"key_ID": "x"}]}', "headers": JSON}),
]


async def _run(fast: bool, requests: list[Request]
               ) -> tuple[list[tuple[int, Any]], list[str]]:
    apps = {"alice": _app(fast, "km0"), "bob": _app(fast, "km1"), "mallory": _app(fast, "km1")}
    out: list[tuple[int, Any]] = []
    fell_back: list[str] = []
    for user, method, url, kwargs in requests:
        app, log = apps[user]
        transport = httpx.ASGITransport(app=with_client_certificate(app, SUBJECTS[user]))
        async with httpx.AsyncClient(transport=transport, base_url="https://km") as c:
            r = await c.request(method, url, headers=kwargs.pop("headers", {}), **kwargs)
        out.append((r.status_code, r.json()))
        fell_back += log
        log.clear()
    return out, fell_back


def _copy(requests: list[Request]) -> list[Request]:
    return [(u, m, url, dict(kw)) for u, m, url, kw in requests]


async def test_fast_path_answers_like_fastapi_and_serves_the_common_forms() -> None:
    fast, fast_fell_back = await _run(True, _copy(FAST))
    ref, _ = await _run(False, _copy(FAST))
    assert fast == ref
    assert fast_fell_back == []
    assert {status for status, _ in fast} >= {200, 400, 401}


async def test_fast_path_hands_unusual_requests_to_fastapi_unchanged() -> None:
    fast, fast_fell_back = await _run(True, _copy(FALLBACK))
    ref, _ = await _run(False, _copy(FALLBACK))
    assert fast == ref
    assert len(fast_fell_back) == len(FALLBACK)


async def test_fast_path_keys_round_trip_between_master_and_slave() -> None:
    network = FakeKeyNetwork(line3(), seed=7102)

    def app(node: str) -> FastAPI:
        return create_etsi014_app(network.km(node), kme_id=node,
                                  settings=ApiSettings.from_topology(network.topology, node))

    def client(node: str, user: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=with_client_certificate(app(node), SUBJECTS[user]))
        return httpx.AsyncClient(transport=transport, base_url="https://km")
    async with client("km0", "alice") as alice, client("km1", "bob") as bob:
        made = (await alice.get(ENC + "?number=4&size=256")).json()["keys"]
        ids = [k["key_ID"] for k in made]
        got = (await bob.post(DEC, json={"key_IDs": [{"key_ID": i} for i in ids[:3]]})
               ).json()["keys"]
        last = (await bob.get(DEC, params={"key_ID": ids[3]})).json()["keys"]
    assert [(k["key_ID"], k["key"]) for k in got + last] == [
        (k["key_ID"], k["key"]) for k in made]


async def test_fast_path_serves_common_requests_ahead_of_the_middleware_stack() -> None:
    app, _ = _app(True, "km0")
    transport = httpx.ASGITransport(app=with_client_certificate(app, SUBJECTS["alice"]))
    async with httpx.AsyncClient(transport=transport, base_url="https://km") as c:
        ok = await c.get(ENC + "?number=2")
        refused = await c.get(ENC + "?number=0")  # raised by the handler: the app's 400
        assert app.middleware_stack is None  # Starlette builds it on its first request
        odd = await c.get(ENC + "?number=abc")
    assert (ok.status_code, refused.status_code, odd.status_code) == (200, 400, 400)
    assert refused.json()["message"] == "number shall be a positive integer"
    assert app.middleware_stack is not None


def test_key_ids_body_takes_the_plain_form_and_leaves_the_rest_to_the_model() -> None:
    from keyplane.api.etsi014.fastpath import json_body, key_ids_body
    from keyplane.api.etsi014.models import KEY_ID_PATTERN, KeyIDs

    a, b = "0190c0de-0000-7000-8000-00000000000a", "0190C0DE-0000-7000-8000-00000000000B"
    plain: list[Any] = [
        {"key_IDs": [{"key_ID": a}, {"key_ID": b}]},
        {"key_IDs": [{"key_ID": a}], "key_IDs_extension": {"x": 1}},
        {"key_IDs": [{"key_ID": a}], "key_IDs_extension": None},
    ]
    other: list[Any] = [  # the model decides these (accepts some, refuses others)
        {"key_IDs": []}, {"key_IDs": [{"key_ID": a[:-1]}]}, {"key_IDs": [{"key_ID": a + "0"}]},
        {"key_IDs": [{"key_ID": a, "master_SAE_ID": "s"}]}, {"key_IDs": [{"key_ID": 5}]},
        {"key_IDs": [{"key_ID": a}], "other": 1}, {"key_IDs": [{"key_ID": "g" * 36}]},
        {"key_IDs": [{"key_ID": a.replace("-", "_")}]}, {"key_IDs": [a]}, [a],
        {"key_IDs": [{"key_ID": a}], "key_IDs_extension": [1]},
    ]
    for body in plain:
        raw = json.dumps(body).encode()
        model = json_body(KeyIDs, raw)
        assert model is not None
        assert key_ids_body(raw, KEY_ID_PATTERN) == (
            [k.key_ID for k in model.key_IDs], model.key_IDs_extension)
    for body in other:
        assert key_ids_body(json.dumps(body).encode(), KEY_ID_PATTERN) is None, body
    assert key_ids_body(b"{not json", KEY_ID_PATTERN) is None
    assert key_ids_body(b"", KEY_ID_PATTERN) is None
