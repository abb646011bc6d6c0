"""A response's head leaves with its body in one write (one TLS record, one segment).

uvicorn writes the head and the body separately; the server's connection holds the head
until the body is written (issue #15: the head's own write was about 9 % of the server's
CPU per one-key ETSI 014 pair). Checked on the real server: the writes reaching the
accepted connection's real transport are recorded (and still made) by a pass-through.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI, Response
from fastapi.responses import StreamingResponse

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

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            yield b"first,"
            yield b"second"
        return StreamingResponse(parts(), media_type="text/plain")

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


async def test_streamed_body_is_not_held() -> None:
    async with HttpServer(_app(), name="cork-stream") as server, \
            httpx.AsyncClient(base_url=server.url) as client:
        rec = await _recorded(server, client)
        r = await client.get("/stream")
        assert r.text == "first,second"
        # the head leaves with the first piece; each further piece leaves when written
        assert len(rec.writes) >= 2
        assert rec.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"first," in rec.writes[0]
        assert b"second" not in rec.writes[0]
