"""Bounded HTTP on the shared server (issue #13 deliverable 4), over real sockets.

Every keyplane interface is served by :class:`keyplane.api.httpserver.HttpServer`; these
tests drive the real server on port 0: a body over the limit is a 413 in the interface's
own format without being buffered (a 100 MB body, memory measured), a slow head or body
closes the connection, a head too large closes it, and connections above the cap are
closed at accept. Timeouts are tiny settings here (STYLE.md §6); what is awaited is the
server closing the connection, with a generous deadline, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import ssl
import tracemalloc
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Request
from tests.support.deadlines import DEADLINE_S
from tests.support.fake_km import FakeKeyNetwork
from tests.support.topologies import line3

from keyplane.api.etsi015 import SdnAgent, serve_agent
from keyplane.api.httpserver import HttpLimits, HttpServer
from keyplane.api.server import serve_km_api
from keyplane.api.settings import ApiSettings
from keyplane.bus import MemoryBus
from keyplane.certs import Issued, client_ssl_context, ensure_network_certs
from keyplane.clock import RealClock
from keyplane.events import EventStream

MB = 1 << 20


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Issued:
    return ensure_network_certs(line3(), tmp_path_factory.mktemp("pki"))


def _echo_app() -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"received": len(await request.body())}

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    return app


@pytest.fixture
async def plain() -> AsyncIterator[HttpServer]:
    limits = HttpLimits(max_body_bytes=64 * 1024, header_timeout_s=0.5, body_timeout_s=0.5,
                        max_connections=3)
    async with HttpServer(_echo_app(), limits=limits, name="test") as server:
        yield server


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Wait (bounded by DEADLINE_S) until the server closes: EOF or a reset."""
    async with asyncio.timeout(DEADLINE_S):
        try:
            while await reader.read(65536):
                pass
        except (ConnectionError, ssl.SSLError):
            pass
    return True


async def test_km_api_answers_413_in_etsi_format_without_buffering_100_mb(
        issued: Issued) -> None:
    network = FakeKeyNetwork(line3(), seed=413)
    server = await serve_km_api(network.km("km0"), kme_id="km0", server_cert=issued.kms["km0"],
                                ca_file=issued.ca.cert,
                                settings=ApiSettings.from_topology(network.topology, "km0"))
    chunk = b"x" * (256 * 1024)

    async def hundred_mb() -> AsyncIterator[bytes]:
        for _ in range(400):  # 100 MB, streamed (chunked: no Content-Length to trust)
            yield chunk

    c = issued.saes["sae_a"]
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=DEADLINE_S,
                                     verify=client_ssl_context(c, issued.ca.cert)) as client:
            tracemalloc.start()
            try:
                r = await client.post("/api/v1/keys/sae_b/enc_keys", content=hundred_mb(),
                                      headers={"Content-Type": "application/json"})
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert r.status_code == 413
            assert r.json() == {"message": "request body too large",
                                "details": [{"max_body_bytes": MB}]}
            assert peak < 16 * MB, f"peak {peak / MB:.1f} MB traced while refusing 100 MB"
            # declared too large (Content-Length): refused before reading, on 004 too
            r = await client.post("/etsi004/v1/get_key", content=b"{" + b" " * (2 * MB) + b"}",
                                  headers={"Content-Type": "application/json"})
            assert r.status_code == 413 and r.json()["message"] == "request body too large"
            # the server still serves on the same connection pool
            r = await client.get("/api/v1/keys/sae_b/status")
            assert r.status_code == 200
    finally:
        await server.close()
    assert network.calls == ["status"]  # nothing reached the key manager but the status


async def test_restconf_413_is_ietf_restconf_errors(issued: Issued) -> None:
    clock = RealClock()
    async with MemoryBus() as bus, SdnAgent("km0", line3(), bus, clock,
                                            EventStream(clock)) as agent:
        server = await serve_agent(agent, server_cert=issued.kms["km0"], ca_file=issued.ca.cert,
                                   limits=HttpLimits(max_body_bytes=1024))
        try:
            async with httpx.AsyncClient(
                    base_url=server.url, timeout=DEADLINE_S,
                    verify=client_ssl_context(issued.controller, issued.ca.cert)) as c:
                r = await c.post("/restconf/data/etsi-qkd-sdn-node:qkd_node/qkd_links",
                                 content=b"[" + b" " * 4096 + b"]",
                                 headers={"Content-Type": "application/yang-data+json"})
        finally:
            await server.close()
    assert r.status_code == 413
    assert r.headers["content-type"].startswith("application/yang-data+json")
    (err,) = r.json()["ietf-restconf:errors"]["error"]
    assert err["error-tag"] == "too-big" and "max_body_bytes=1024" in err["error-message"]


async def test_slow_request_head_is_closed_after_the_header_timeout(plain: HttpServer) -> None:
    conns = [await asyncio.open_connection(plain.host, plain.port) for _ in range(3)]
    for _, writer in conns:
        writer.write(b"GET /ping HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        await writer.drain()
    for reader, writer in conns:
        assert await _closed_by_server(reader)
        writer.close()
    async with httpx.AsyncClient(base_url=plain.url, timeout=DEADLINE_S) as c:
        assert (await c.get("/ping")).json() == {"pong": "yes"}


async def test_tls_handshake_that_never_starts_is_closed(issued: Issued) -> None:
    network = FakeKeyNetwork(line3(), seed=1)
    server = await serve_km_api(network.km("km0"), kme_id="km0", server_cert=issued.kms["km0"],
                                ca_file=issued.ca.cert,
                                limits=HttpLimits(header_timeout_s=0.5))
    try:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        assert await _closed_by_server(reader)  # a TCP client that never says ClientHello
        writer.close()
        assert server.http.live_connections == 0
    finally:
        await server.close()


async def test_stalled_body_is_closed_after_the_body_timeout(plain: HttpServer) -> None:
    reader, writer = await asyncio.open_connection(plain.host, plain.port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
    await writer.drain()
    assert await _closed_by_server(reader)
    writer.close()


async def test_oversized_request_head_is_closed(plain: HttpServer) -> None:
    reader, writer = await asyncio.open_connection(plain.host, plain.port)
    try:
        writer.write(b"GET /ping HTTP/1.1\r\nX-Filler: " + b"a" * (128 * 1024))
        await writer.drain()
    except ConnectionError:
        pass  # closed while we were still writing: that is the point
    assert await _closed_by_server(reader)
    writer.close()


async def _get_ping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(DEADLINE_S):
        await reader.readuntil(b'{"pong":"yes"}')


async def test_connections_above_the_cap_are_closed_at_accept() -> None:
    limits = HttpLimits(max_connections=3, header_timeout_s=DEADLINE_S, keep_alive_s=600)
    async with HttpServer(_echo_app(), limits=limits, name="cap") as server:
        held = [await asyncio.open_connection(server.host, server.port) for _ in range(3)]
        for reader, writer in held:
            await _get_ping(reader, writer)  # answered: accepted, now idle and kept alive
        reader, writer = await asyncio.open_connection(server.host, server.port)
        assert await _closed_by_server(reader)
        writer.close()
        assert server.refused_connections == 1 and server.live_connections == 3
        await _get_ping(*held[0])  # the held ones still work
        for _, w in held:
            w.close()


async def test_keep_alive_connection_idle_after_responses_is_closed(plain: HttpServer
                                                                     ) -> None:
    """The head timer runs again after each response (one timer per connection, re-armed
    when it fires before the deadline a later response set): a connection that sent
    requests and then only a partial head is closed; its answers came first."""
    reader, writer = await asyncio.open_connection(plain.host, plain.port)
    for _ in range(3):
        writer.write(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        assert await asyncio.wait_for(reader.readexactly(length), DEADLINE_S) == (
            b'{"pong":"yes"}')
    writer.write(b"GET /ping HTTP/1.1\r\n")  # and never the blank line
    await writer.drain()
    assert await _closed_by_server(reader)
    writer.close()


async def test_body_within_the_limit_is_served(plain: HttpServer) -> None:
    async with httpx.AsyncClient(base_url=plain.url, timeout=DEADLINE_S) as c:
        r = await c.post("/echo", content=b"a" * (64 * 1024))
        assert r.json() == {"received": 64 * 1024}
        r = await c.post("/echo", content=b"a" * (64 * 1024 + 1))
        assert r.status_code == 413


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        HttpLimits(max_body_bytes=0)
    with pytest.raises(ValueError):
        HttpLimits(header_timeout_s=-1)
    with pytest.raises(ValueError):
        HttpLimits(nonsense=1)  # type: ignore[call-arg]
