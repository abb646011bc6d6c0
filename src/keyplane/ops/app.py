"""The operations app (``/healthz``, ``/readyz``, ``/metrics``) and its server.

- ``GET /healthz``: 200 ``{"status": "alive"}`` whenever the process's event loop answers
  (liveness: a hung loop answers nothing, and the probe's own timeout fails it).
- ``GET /readyz``: 200 ``{"status": "ready", "checks": {...}}`` when every registered check
  passes, else 503 ``{"status": "not ready", "checks": {name: why}}``.
- ``GET /metrics``: the process's registry in the Prometheus text format.

Served by :class:`keyplane.api.httpserver.HttpServer` (bounded like every interface), by
default as plain HTTP on 127.0.0.1: the endpoints reveal no keys or identities, and
probes and scrapers run on the same host or pod. Bind it elsewhere only behind a network
policy (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from keyplane.api.httpserver import HttpLimits, HttpServer
from keyplane.ops.metrics import Ops

__all__ = ["create_ops_app", "ops_endpoints", "parse_address", "serve_ops"]


def create_ops_app(ops: Ops) -> Starlette:
    """The ASGI app serving ``ops`` (see the module docstring)."""

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "alive", "process": ops.process})

    async def readyz(_: Request) -> Response:
        report = await ops.readiness.run()
        return JSONResponse({"status": "ready" if report.ready else "not ready",
                             "checks": report.checks},
                            status_code=200 if report.ready else 503)

    async def metrics(_: Request) -> Response:
        # rendering walks every series; off the loop so a large registry never stalls it
        body = await asyncio.to_thread(generate_latest, ops.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    mounted = [Mount(path, app=app) for path, app in ops.mounts.items()]
    return Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz),
                             Route("/metrics", metrics), *mounted])


async def serve_ops(ops: Ops, host: str = "127.0.0.1", port: int = 0, *,
                    limits: HttpLimits | None = None) -> HttpServer:
    """Serve the operations endpoints of ``ops`` over plain HTTP; return once serving.

    Args:
        ops: the process's operations surface.
        host, port: where to listen (port 0: a free port, see ``.port``/``.url``).
        limits: HTTP bounds (the defaults of every keyplane server when None).

    Raises:
        OSError: the address cannot be bound.
        RuntimeError: the server did not start.
    """
    server = HttpServer(create_ops_app(ops), host=host, port=port, limits=limits,
                        observer=ops.http, interface="ops", name=f"ops-{ops.process}")
    return await server.start()


def parse_address(text: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``; port 0: a free one), or None for ``off``.

    Raises:
        ValueError: not of that form.
    """
    if text.strip().lower() == "off":
        return None
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT or 'off', got {text!r}")
    return host.strip("[]"), int(port)


@contextlib.asynccontextmanager
async def ops_endpoints(ops: Ops, address: tuple[str, int] | None
                        ) -> AsyncIterator[HttpServer | None]:
    """Serve ``ops`` at ``address`` for the duration of the block (None: not served);
    :attr:`Ops.urls` then says where (``ops``, and each mount by its name)."""
    if address is None:
        yield None
        return
    server = await serve_ops(ops, *address)
    ops.urls["ops"] = server.url
    ops.urls.update({path.strip("/"): f"{server.url}{path.rstrip('/')}/" for path in ops.mounts})
    try:
        yield server
    finally:
        await server.close()
