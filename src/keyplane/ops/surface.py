"""Everything a process offers operators, served together: endpoints, series, dashboard.

:func:`serve_operations` is what ``keyplane run``, ``keyplane controller`` and
``keyplane node`` wrap their elements in: the operations endpoints (``/healthz``,
``/readyz``, ``/metrics``), the network's series (:class:`~keyplane.ops.network.
NetworkMetrics`, scoped to what the process runs), the health series
(:class:`~keyplane.ops.network.HealthSampler`) and, for ``run`` and the controller, the
dashboard at ``/dashboard/``. With the endpoints off (``--ops off``) nothing is started.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping

from keyplane.api.httpserver import HttpServer
from keyplane.bus import Bus
from keyplane.dashboard.service import DASHBOARD_PATH, Dashboard
from keyplane.lifecycle import Service
from keyplane.ops.app import ops_endpoints
from keyplane.ops.metrics import Ops
from keyplane.ops.network import HealthSampler, NetworkMetrics

__all__ = ["serve_operations"]


@contextlib.asynccontextmanager
async def serve_operations(ops: Ops, address: tuple[str, int] | None, *, bus: Bus,
                           links: Iterable[str] | None = None,
                           nodes: Iterable[str] | None = None,
                           buses: Mapping[str, Bus] | None = None,
                           dashboard: Dashboard | None = None,
                           health_interval_s: float = 10.0
                           ) -> AsyncIterator[HttpServer | None]:
    """Serve the operator surface of a process for the duration of the block.

    Args:
        ops: the process's operations surface; :attr:`Ops.urls` says where things are once
            serving (``ops``, ``dashboard``).
        address: ``(host, port)`` of the operations server; None: nothing is served.
        bus: where the network's telemetry and alarms arrive.
        links, nodes: the links and KMs whose series this process exports (None: all).
        buses: node or link id -> the connection its series come in on (a process of
            several nodes, :class:`~keyplane.ops.network.NetworkMetrics`); absent: ``bus``.
        dashboard: a dashboard to mount at ``/dashboard/`` and run.
        health_interval_s: time between two samples of the health series.

    Raises:
        OSError: the address cannot be bound.
    """
    if address is None:
        yield None
        return
    if dashboard is not None:
        ops.mount(DASHBOARD_PATH, dashboard.app)
    services: list[Service] = [NetworkMetrics(ops, bus, links=links, nodes=nodes, buses=buses),
                               HealthSampler(ops, interval_s=health_interval_s)]
    if dashboard is not None:
        services.append(dashboard)
    # the server stops last: the dashboard first ends its event streams
    async with ops_endpoints(ops, address) as server, contextlib.AsyncExitStack() as stack:
        for service in services:
            await stack.enter_async_context(service)
        yield server
