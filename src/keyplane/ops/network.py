"""Prometheus series of the network, from what its elements already publish on the bus.

:class:`NetworkMetrics` subscribes to the telemetry the QKD modules
(:class:`~keyplane.messages.LinkTelemetry`) and the KMs
(:class:`~keyplane.messages.KmTelemetry`, :mod:`keyplane.keymanager.telemetry`) publish and to
the Monitoring Element's alarms, and keeps gauges and counters in the process's
:class:`~keyplane.ops.Ops` registry. Nothing here reaches into an element: a process exports
what it sees on the bus, scoped to what it runs (a node process: its own KM and links; the
controller and ``keyplane run``: the whole network). :class:`HealthSampler` turns the
process's ``bus`` and ``store`` readiness checks into series.

Series (docs/operations.md has the table with units; deploy/grafana/ plots them):

* per link: ``keyplane_link_skr_bps``, ``keyplane_link_qber``, ``keyplane_link_up``,
  ``keyplane_link_secret_bits_total``, ``keyplane_link_alarm{kind}``;
* per KM and link: ``keyplane_keystore_bits``, ``keyplane_link_sessions``;
  per KM: ``keyplane_km_queue_depth``;
* per session (at its endpoint KMs, removed when it ends):
  ``keyplane_session_keys_per_second``, ``keyplane_session_keys_delivered_total``,
  ``keyplane_session_queue_depth``, ``keyplane_session_token_bucket_bits``,
  ``keyplane_session_token_bucket_size_bits``;
* health: ``keyplane_bus_up``, ``keyplane_store_up``, ``keyplane_ready``.

Session labels are Key_stream_IDs (not secret, already in every event), bounded by the live
sessions: a session's series go when its KM stops reporting it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping

from keyplane.bus import Bus, Message, Subscription, topics, unsubscribe_all
from keyplane.clock import Clock, RealClock
from keyplane.lifecycle import Service
from keyplane.messages import KmTelemetry, LinkAlarm, LinkState, LinkTelemetry
from keyplane.ops.metrics import Ops

__all__ = ["SERIES", "HealthSampler", "NetworkMetrics"]

logger = logging.getLogger(__name__)

SERIES: dict[str, str] = {
    "keyplane_link_skr_bps": "Secret key rate of a QKD link, bit/s (last block or period)",
    "keyplane_link_qber": "Quantum bit error rate of a QKD link (last estimate, 0-1)",
    "keyplane_link_up": "1 while a QKD link's modules report it up",
    "keyplane_link_secret_bits": "Secret key bits a QKD link distilled",
    "keyplane_link_alarm": "1 while the Monitoring Element holds an alarm of this kind on a link",
    "keyplane_keystore_bits": "Unused link key a KM holds for a link, bits",
    "keyplane_link_sessions": "Live sessions a KM relays or ends over a link",
    "keyplane_km_queue_depth": "Key requests waiting for one of a KM's exchange slots",
    "keyplane_session_keys_per_second": "Keys a KM handed to a session's application, per "
                                        "second over the KM's rate window",
    "keyplane_session_keys_delivered": "Keys a KM handed to a session's application",
    "keyplane_session_queue_depth": "Key requests of a session inside its KM (waiting on the "
                                    "token bucket, for a slot, or being served)",
    "keyplane_session_token_bucket_bits": "Token-bucket level of a session at its KM, bits",
    "keyplane_session_token_bucket_size_bits": "Token-bucket size of a session at its KM, bits",
    "keyplane_bus_up": "1 when the last bus round trip succeeded",
    "keyplane_store_up": "1 when the database answered the last ping",
    "keyplane_ready": "1 when every readiness check of the process passed at the last sample",
}
"""Every series this module exports (counters without their ``_total``), with its help."""

_SESSION_SERIES = ("keyplane_session_keys_per_second", "keyplane_session_queue_depth",
                   "keyplane_session_token_bucket_bits",
                   "keyplane_session_token_bucket_size_bits")


class NetworkMetrics(Service):
    """Keeps the network's series current from the bus (see the module docstring).

    Args:
        ops: the process's operations surface (its registry gets the series).
        bus: where the elements publish.
        links: the links to report (None: every link).
        nodes: the KMs to report (None: every KM).
        buses: node or link id -> the connection its series are subscribed on (a process
            of several nodes: each node's own, which may read only its own topics; a link
            on one of its local ends' node's); absent: ``bus``.
    """

    def __init__(self, ops: Ops, bus: Bus, *, links: Iterable[str] | None = None,
                 nodes: Iterable[str] | None = None,
                 buses: Mapping[str, Bus] | None = None) -> None:
        self.bus = bus
        self.buses = dict(buses or {})
        self.links = None if links is None else sorted(set(links))
        self.nodes = None if nodes is None else sorted(set(nodes))
        s = SERIES
        self.skr = ops.gauge("keyplane_link_skr_bps", s["keyplane_link_skr_bps"], ["link"])
        self.qber = ops.gauge("keyplane_link_qber", s["keyplane_link_qber"], ["link"])
        self.up = ops.gauge("keyplane_link_up", s["keyplane_link_up"], ["link"])
        self.secret = ops.counter("keyplane_link_secret_bits", s["keyplane_link_secret_bits"],
                                  ["link"])
        self.alarm = ops.gauge("keyplane_link_alarm", s["keyplane_link_alarm"],
                               ["link", "kind"])
        self.store = ops.gauge("keyplane_keystore_bits", s["keyplane_keystore_bits"],
                               ["node", "link"])
        self.link_sessions = ops.gauge("keyplane_link_sessions", s["keyplane_link_sessions"],
                                       ["node", "link"])
        self.queue = ops.gauge("keyplane_km_queue_depth", s["keyplane_km_queue_depth"],
                               ["node"])
        self.session = {name: ops.gauge(name, s[name], ["node", "session"])
                        for name in _SESSION_SERIES}
        self.delivered = ops.counter("keyplane_session_keys_delivered",
                                     s["keyplane_session_keys_delivered"], ["node", "session"])
        self._delivered_seen: dict[tuple[str, str], int] = {}
        self._alarms: dict[str, set[str]] = {}
        self._rated: set[str] = set()  # links whose rate was reported at least once
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        """Subscribe; the series follow the network from now on."""
        b = self.bus
        link_topics = ([(b, topics.link_telemetry("*"))] if self.links is None
                       else [(self.buses.get(lid, b), topics.link_telemetry(lid))
                             for lid in self.links])
        km_topics = ([(b, topics.km_telemetry("*"))] if self.nodes is None
                     else [(self.buses.get(n, b), topics.km_telemetry(n)) for n in self.nodes])
        alarm_topics = ([(b, topics.alarm("*"))] if self.links is None
                        else [(self.buses.get(lid, b), topics.alarm(lid))
                              for lid in self.links])
        for bus, pattern in [*link_topics, *km_topics, *alarm_topics]:
            self._subs.append(await bus.subscribe(pattern, self._on_message))

    async def close(self) -> None:
        """Unsubscribe (idempotent); the series keep their last values."""
        await unsubscribe_all(self._subs)
        self._subs.clear()

    async def _on_message(self, topic: str, msg: Message) -> Message | None:
        if isinstance(msg, LinkTelemetry):
            self.on_link_telemetry(msg)
        elif isinstance(msg, KmTelemetry):
            self.on_km_telemetry(msg)
        elif isinstance(msg, LinkAlarm):
            self.on_alarm(msg)
        return None

    def on_link_telemetry(self, msg: LinkTelemetry) -> None:
        """A link's figures for one block or period (or a state change)."""
        lid = msg.link_id
        self.up.labels(lid).set(1.0 if msg.state == LinkState.up else 0.0)
        # the modules report their current rate (0 while every block aborts); only a state
        # report before any figure carries none
        if msg.block_id is not None or msg.skr_bps or lid in self._rated:
            self._rated.add(lid)
            self.skr.labels(lid).set(msg.skr_bps)
        self.secret.labels(lid).inc(max(0, msg.secret_bits))
        if msg.qber is not None:
            self.qber.labels(lid).set(msg.qber)

    def on_km_telemetry(self, msg: KmTelemetry) -> None:
        """A KM's stores, sessions per link and live sessions."""
        node = msg.node
        for lid, bits in msg.buffer_bits.items():
            self.store.labels(node, lid).set(bits)
        for lid, n in msg.sessions.items():
            self.link_sessions.labels(node, lid).set(n)
        self.queue.labels(node).set(msg.queued_requests)
        for sid, fig in msg.streams.items():
            self.session["keyplane_session_keys_per_second"].labels(node, sid).set(
                fig.keys_per_s)
            self.session["keyplane_session_queue_depth"].labels(node, sid).set(
                fig.pending_requests)
            if fig.bucket_bits is not None:
                self.session["keyplane_session_token_bucket_bits"].labels(node, sid).set(
                    fig.bucket_bits)
            if fig.bucket_size_bits is not None:
                self.session["keyplane_session_token_bucket_size_bits"].labels(
                    node, sid).set(fig.bucket_size_bits)
            seen = self._delivered_seen.setdefault((node, sid), 0)
            counter = self.delivered.labels(node, sid)
            if fig.keys_delivered > seen:
                counter.inc(fig.keys_delivered - seen)
                self._delivered_seen[(node, sid)] = fig.keys_delivered
        for key in [k for k in self._delivered_seen if k[0] == node and k[1] not in msg.streams]:
            self._forget_session(*key)

    def _forget_session(self, node: str, sid: str) -> None:
        del self._delivered_seen[(node, sid)]
        for gauge in (*self.session.values(), self.delivered):
            with contextlib.suppress(KeyError):
                gauge.remove(node, sid)

    def on_alarm(self, msg: LinkAlarm) -> None:
        """The Monitoring Element raised or cleared an alarm on a link: the link's series
        follow the message's ``active`` kinds (a missed message is corrected by the next)."""
        held = set() if msg.kind == "cleared" else {msg.kind, *msg.active}
        was = self._alarms.get(msg.link_id, set())
        for kind in was - held:
            self.alarm.labels(msg.link_id, kind).set(0.0)
        for kind in held:
            self.alarm.labels(msg.link_id, kind).set(1.0)
        self._alarms[msg.link_id] = held


class HealthSampler(Service):
    """Samples the process's readiness checks into ``keyplane_bus_up``, ``keyplane_store_up``
    and ``keyplane_ready`` every ``interval_s`` (a scrape never waits on a check).

    ``keyplane_bus_up`` and ``keyplane_store_up`` exist only when the process has a ``bus`` or
    ``store`` check when the sampler is made: a device without a bus or a database exports
    no 0 that an alert would read as an outage.

    Args:
        ops: the process's operations surface (checks and registry).
        interval_s: time between samples.
        clock: the clock to wait on.
    """

    def __init__(self, ops: Ops, *, interval_s: float = 10.0, clock: Clock | None = None
                 ) -> None:
        self.ops = ops
        self.interval_s = interval_s
        self.clock = clock or RealClock()
        checks = ops.readiness.names
        self.bus_up = (ops.gauge("keyplane_bus_up", SERIES["keyplane_bus_up"])
                       if "bus" in checks else None)
        self.store_up = (ops.gauge("keyplane_store_up", SERIES["keyplane_store_up"])
                         if "store" in checks else None)
        self.ready = ops.gauge("keyplane_ready", SERIES["keyplane_ready"])
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def sample(self) -> None:
        """Run the checks once and set the series."""
        report = await self.ops.readiness.run()
        for gauge, name in ((self.bus_up, "bus"), (self.store_up, "store")):
            if gauge is not None:
                gauge.set(1.0 if report.checks.get(name) == "ok" else 0.0)
        self.ready.set(1.0 if report.ready else 0.0)
        self.samples += 1

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:  # never let a sampling bug end the process's metrics
                logger.exception("health sample failed")
            await self.clock.sleep(self.interval_s)

    async def start(self) -> None:
        """Sample now, then every ``interval_s``."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="health-sampler")

    async def close(self) -> None:
        """Stop sampling (idempotent)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
