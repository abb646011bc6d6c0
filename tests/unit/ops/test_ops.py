"""Operations endpoints over the real shared HTTP server: health, readiness, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.support.deadlines import DEADLINE_S
from tests.support.fake_km import FakeKeyNetwork
from tests.support.topologies import line3

from keyplane.api.httpserver import HttpServer
from keyplane.api.server import serve_km_api
from keyplane.api.settings import ApiSettings
from keyplane.certs import Issued, client_ssl_context, ensure_network_certs
from keyplane.ops import Ops, parse_address, serve_ops


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.fixture
async def served() -> AsyncIterator[tuple[Ops, HttpServer, httpx.AsyncClient]]:
    ops = Ops("test", readiness_timeout_s=0.2)
    server = await serve_ops(ops)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=DEADLINE_S) as client:
            yield ops, server, client
    finally:
        await server.close()


async def test_healthz_answers_while_the_process_runs(served) -> None:  # type: ignore[no-untyped-def]
    _, server, client = served
    assert server.url.startswith("http://127.0.0.1:")
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "alive", "process": "test"}


async def test_readyz_runs_every_registered_check(served) -> None:  # type: ignore[no-untyped-def]
    ops, _, client = served
    r = await client.get("/readyz")
    assert r.status_code == 503  # nothing registered: not ready (nothing said it is)
    flag = asyncio.Event()

    async def bus() -> bool:
        return True

    ops.add_readiness_check("bus", bus)
    ops.add_readiness_check("started", flag.is_set)
    r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {"status": "not ready", "checks": {"bus": "ok", "started": "not ready"}}
    flag.set()
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"
    with pytest.raises(ValueError):
        ops.add_readiness_check("bus", bus)


async def test_readyz_reports_failing_and_hung_checks_without_hanging(served) -> None:  # type: ignore[no-untyped-def]
    ops, _, client = served
    never = asyncio.Event()

    async def hung() -> bool:
        await never.wait()
        return True

    def broken() -> bool:
        raise ConnectionRefusedError("postgresql://user:secret@db")  # text never shown

    ops.add_readiness_check("store", broken)
    ops.add_readiness_check("peer", hung)
    r = await client.get("/readyz")
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks["store"] == "failed: ConnectionRefusedError" and "secret" not in r.text
    assert checks["peer"].startswith("no answer within")
    ops.readiness.remove("peer")
    ops.readiness.remove("store")
    ops.add_readiness_check("ok", lambda: True)
    assert (await client.get("/readyz")).status_code == 200


async def test_metrics_expose_the_process_registry_and_elements_series(served) -> None:  # type: ignore[no-untyped-def]
    ops, _, client = served
    skr = ops.gauge("keyplane_link_skr_bps", "Secret key rate of a link", ["link"])
    skr.labels(link="km0-km1").set(1234.5)
    keys = ops.counter("keyplane_keys_delivered", "Keys handed to applications", ["node"])
    keys.labels(node="km0").inc(3)
    await client.get("/healthz")
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = _samples(r.text)
    assert samples[("keyplane_process_info", (("process", "test"),))] == 1
    assert samples[("keyplane_link_skr_bps", (("link", "km0-km1"),))] == 1234.5
    assert samples[("keyplane_keys_delivered_total", (("node", "km0"),))] == 3
    key = ("keyplane_http_requests_total",
           (("interface", "ops"), ("method", "GET"), ("status", "200")))
    assert samples[key] >= 1
    # another process's registry is separate (no global registry)
    other = Ops("other")
    other.gauge("keyplane_link_skr_bps", "again, no clash", ["link"])


async def test_km_api_reports_requests_status_and_latency_per_interface(tmp_path) -> None:  # type: ignore[no-untyped-def]
    issued: Issued = ensure_network_certs(line3(), tmp_path / "pki")
    network = FakeKeyNetwork(line3(), seed=18)
    ops = Ops("node-km0")
    api = await serve_km_api(network.km("km0"), kme_id="km0", server_cert=issued.kms["km0"],
                             ca_file=issued.ca.cert, observer=ops.http,
                             settings=ApiSettings.from_topology(network.topology, "km0"))
    c = issued.saes["sae_a"]
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=DEADLINE_S,
                                     verify=client_ssl_context(c, issued.ca.cert)) as client:
            assert (await client.get("/api/v1/keys/sae_b/status")).status_code == 200
            assert (await client.get("/api/v1/keys/sae_b/enc_keys?size=7")).status_code == 400
            r = await client.post("/etsi004/v1/close", json={"Key_stream_ID": "x"})
            assert r.status_code == 400
    finally:
        await api.close()
    from prometheus_client import generate_latest

    samples = _samples(generate_latest(ops.registry).decode())

    def requests(interface: str, method: str, status: str) -> float:
        return samples.get(("keyplane_http_requests_total", (
            ("interface", interface), ("method", method), ("status", status))), 0.0)

    assert requests("etsi014", "GET", "200") == 1
    assert requests("etsi014", "GET", "400") == 1
    assert requests("etsi004", "POST", "400") == 1
    count = samples[("keyplane_http_request_duration_seconds_count", (("interface", "etsi014"),))]
    assert count == 2


def test_ops_address_parsing() -> None:
    assert parse_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_address("[::1]:9100") == ("::1", 9100)
    assert parse_address("off") is None
    for bad in ("9100", "host:", "host:http", "h:70000"):
        with pytest.raises(ValueError):
            parse_address(bad)
