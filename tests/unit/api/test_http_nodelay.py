"""Responses leave at once: every accepted connection has TCP_NODELAY (issue 21).

asyncio sets TCP_NODELAY only on sockets whose ``proto`` is IPPROTO_TCP; the server's
listening socket once had proto 0, so Nagle held the second segment of each response
until the client's delayed ACK (about 40 ms per request; a relayed ETSI 014 pair took
100 ms instead of 10). Checked on the real server's accepted sockets, not on timing.
"""

from __future__ import annotations

import socket

import httpx
from fastapi import FastAPI

from keyplane.api.httpserver import HttpServer


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    return app


async def test_accepted_connections_have_tcp_nodelay() -> None:
    async with HttpServer(_app(), name="nodelay") as server, \
            httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/ping")).json() == {"pong": "yes"}
        live = list(server._connections.live)  # the keep-alive connection just served
        assert live, "the client's keep-alive connection is not live on the server"
        for conn in live:
            assert conn._transport is not None
            sock = conn._transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
