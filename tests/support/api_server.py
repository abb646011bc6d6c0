"""Run KM API servers (real uvicorn, mutual TLS) in a background event loop thread.

For tests whose client is blocking (the CLI, the ``etsi-qkd-014-client`` package, the
sync SDK): the servers live in their own loop and thread, started and stopped with
readiness signals (serve_km_api returns once serving), never sleeps.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from keyplane.api.server import KmApiServer, serve_km_api
from keyplane.api.settings import ApiSettings
from keyplane.certs import Issued
from keyplane.config import Topology
from keyplane.keymanager.interface import ApplicationService

__all__ = ["LoopThread", "serve_network_in_thread", "write_endpoints"]

T = TypeVar("T")


class LoopThread:
    """An asyncio loop running in a daemon thread; ``run(coro)`` waits for the result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout_s)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@contextmanager
def serve_network_in_thread(topology: Topology, issued: Issued,
                            km_for: Callable[[str], ApplicationService]
                            ) -> Iterator[dict[str, KmApiServer]]:
    """One mutual-TLS KM API server per node of ``topology``, on free ports."""
    lt = LoopThread()
    servers: dict[str, KmApiServer] = {}
    try:
        async def start() -> None:
            for node in topology.nodes:
                servers[node.id] = await serve_km_api(
                    km_for(node.id), kme_id=node.id, server_cert=issued.kms[node.id],
                    ca_file=issued.ca.cert, settings=ApiSettings.from_topology(topology, node.id))

        lt.run(start())
        yield servers
    finally:
        async def stop() -> None:
            for s in servers.values():
                await s.close()

        lt.run(stop())
        lt.stop()


def write_endpoints(state: Path, topology: Topology, issued: Issued,
                    servers: dict[str, KmApiServer]) -> Path:
    """Write ``state/endpoints.json`` as ``keyplane run`` does (paths relative to state)."""
    import json

    def rel(p: Path) -> str:
        return str(p.resolve().relative_to(state.resolve()))

    doc = {"kms": {n: {"etsi014": s.etsi014_url, "etsi004": s.etsi004_url}
                   for n, s in servers.items()},
           "ca": rel(issued.ca.cert),
           "saes": {a.sae_id: {"node": a.node, "cert": rel(issued.saes[a.sae_id].cert),
                               "key": rel(issued.saes[a.sae_id].key)}
                    for a in topology.applications}}
    path = state / "endpoints.json"
    path.write_text(json.dumps(doc, indent=2))
    return path
