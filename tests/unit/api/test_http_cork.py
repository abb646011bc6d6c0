"""A response's head leaves with its body in one write (one TLS record, one segment).

uvicorn writes the head and the body separately; the server's connection holds the head
until the body is written (issue #15: one TLS record and one ``send`` per response instead
of two). Only a response that declares its length is held: a stream
may wait for its first piece. Checked on the real server: the writes reaching the
accepted connection's real transport are recorded (and still made) by a pass-through.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI, Response
from fastapi.responses import StreamingResponse
from tests.support.deadlines import DEADLINE_S

from keyplane.api.httpserver import HttpServer


class _Recording:
    """Passes every call to the real transport; remembers what was written."""

    def __init__(self, base: Any) -> None:
        self.base = base
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.base.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    @app.head("/ping")
    async def ping_head() -> Response:
        return Response(headers={"x-kind": "head"})

    return app


async def _recorded(server: HttpServer, client: httpx.AsyncClient) -> _Recording:
    assert (await client.get("/ping")).status_code == 200  # opens the keep-alive connection
    live = list(server._connections.live)
    assert len(live) == 1
    out = live[0]._out
    assert out is not None
    rec = _Recording(out._base)
    out._base = rec
    return rec


async def test_head_and_body_in_one_write() -> None:
    async with HttpServer(_app(), name="cork") as server, \
            httpx.AsyncClient(base_url=server.url) as client:
        rec = await _recorded(server, client)
        r = await client.get("/ping")
        assert r.json() == {"pong": "yes"}
        assert len(rec.writes) == 1, rec.writes
        assert rec.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
        assert rec.writes[0].endswith(b'\r\n\r\n{"pong":"yes"}')
        r = await client.head("/ping")  # no body written: the head leaves alone
        assert r.status_code == 200 and r.headers["x-kind"] == "head"
        assert len(rec.writes) == 2 and rec.writes[1].endswith(b"\r\n\r\n")
        assert (await client.get("/ping")).json() == {"pong": "yes"}  # nothing stays held
        assert len(rec.writes) == 3


async def test_streamed_head_is_not_held() -> None:
    """A stream (no content-length) may wait for its first piece (server-sent events wait
    for the first event): its head leaves at once, before the body is written."""
    gate = asyncio.Event()
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    @app.get("/events")
    async def events() -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            await gate.wait()  # released only once the client has the head
            yield b"data: one\n\n"
        return StreamingResponse(parts(), media_type="text/event-stream")

    async with HttpServer(app, name="cork-stream") as server, \
            httpx.AsyncClient(base_url=server.url) as client:
        rec = await _recorded(server, client)
        async with asyncio.timeout(DEADLINE_S), client.stream("GET", "/events") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            gate.set()
            assert (await r.aread()) == b"data: one\n\n"
        assert rec.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"data: one" not in rec.writes[0]
