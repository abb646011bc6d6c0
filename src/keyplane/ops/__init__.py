"""Operations endpoints of every keyplane process: ``/healthz``, ``/readyz``, ``/metrics``.

One :class:`Ops` per process (``keyplane run``, ``keyplane controller``, ``keyplane node``)
holds a Prometheus registry of its own and the readiness checks its elements register.
:func:`serve_ops` serves both over the shared HTTP server (plain HTTP on loopback by
default: probes and scrapers run beside the process; docs/operations.md).

The API other elements use (docs/operations.md has examples)::

    ops.gauge("keyplane_link_skr_bps", "Secret key rate of a link", ["link"])
        .labels(link="km0-km1").set(1234.0)
    ops.add_readiness_check("bus", bus_is_up)     # () -> bool | Awaitable[bool]

Every HTTP server of the process reports requests, statuses and latencies per interface
through :attr:`Ops.http` (an :class:`~keyplane.api.httpserver.RequestObserver`).
"""

from keyplane.ops.app import create_ops_app, ops_endpoints, parse_address, serve_ops
from keyplane.ops.metrics import HttpMetrics, Ops
from keyplane.ops.readiness import Readiness, ReadinessCheck, ReadinessReport

__all__ = [
    "HttpMetrics",
    "Ops",
    "Readiness",
    "ReadinessCheck",
    "ReadinessReport",
    "create_ops_app",
    "ops_endpoints",
    "parse_address",
    "serve_ops",
]
