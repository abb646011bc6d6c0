"""Prometheus metrics of one process: a registry of its own, and HTTP request metrics.

A registry per process (not prometheus-client's global one), so several processes'
worth of elements in one interpreter (tests, ``keyplane run``) never collide, and
``/metrics`` shows exactly this process's series. Names follow Prometheus conventions:
``keyplane_`` prefix, base units in the name (``_seconds``, ``_bps``, ``_bytes``),
counters ending in ``_total``.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp

from keyplane.ops.readiness import Readiness, ReadinessCheck

__all__ = ["HttpMetrics", "Ops"]

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                      5.0, 10.0, 30.0)


class HttpMetrics:
    """Requests, statuses and latency per interface (a ``RequestObserver``).

    Series: ``keyplane_http_requests_total{interface,method,status}`` and
    ``keyplane_http_request_duration_seconds{interface}`` (histogram). ``status`` is the
    HTTP status sent, ``0`` when the client left before an answer.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("keyplane_http_requests", "HTTP requests served",
                                ["interface", "method", "status"], registry=registry)
        self.latency = Histogram("keyplane_http_request_duration_seconds",
                                 "Time from request head to the end of the response",
                                 ["interface"], buckets=_LATENCY_BUCKETS_S, registry=registry)

    def observe(self, interface: str, method: str, status: int, seconds: float) -> None:
        """Record one finished request."""
        self.requests.labels(interface, method, str(status)).inc()
        self.latency.labels(interface).observe(seconds)


class Ops:
    """The operations surface of one process: its metrics registry and readiness checks.

    Args:
        process: what this process is (``run``, ``controller``, ``node-km0``); exported
            as ``keyplane_process_info{process=...} 1``.
        readiness_timeout_s: upper bound on each readiness check.
    """

    def __init__(self, process: str, *, readiness_timeout_s: float = 5.0) -> None:
        self.process = process
        self.registry = CollectorRegistry(auto_describe=True)
        self.readiness = Readiness(readiness_timeout_s)
        self.http = HttpMetrics(self.registry)
        self.mounts: dict[str, ASGIApp] = {}
        self.urls: dict[str, str] = {}  # what is served where, once serving (endpoints.json)
        Gauge("keyplane_process_info", "This keyplane process", ["process"],
              registry=self.registry).labels(process).set(1)

    def mount(self, path: str, app: ASGIApp) -> None:
        """Serve ``app`` under ``path`` (e.g. the dashboard at ``/dashboard``) beside the
        operations endpoints; call before the endpoints are served.

        Raises:
            ValueError: ``path`` does not start with ``/``, or is taken.
        """
        if not path.startswith("/") or path.rstrip("/") in ("", "/healthz", "/readyz",
                                                             "/metrics"):
            raise ValueError(f"cannot mount at {path!r}")
        if path in self.mounts:
            raise ValueError(f"{path!r} is already mounted")
        self.mounts[path] = app

    def add_readiness_check(self, name: str, check: ReadinessCheck) -> None:
        """Register a readiness check (see :class:`~keyplane.ops.readiness.Readiness`).

        Raises:
            ValueError: ``name`` is already registered.
        """
        self.readiness.add(name, check)

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        """A counter in this process's registry (``name`` without ``_total``)."""
        return Counter(name, documentation, list(labels), registry=self.registry)

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        """A gauge in this process's registry."""
        return Gauge(name, documentation, list(labels), registry=self.registry)

    def histogram(self, name: str, documentation: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = _LATENCY_BUCKETS_S) -> Histogram:
        """A histogram in this process's registry."""
        return Histogram(name, documentation, list(labels), buckets=list(buckets),
                         registry=self.registry)
