"""Monitoring Element: link telemetry into the topology database, and link alarms (paper §III).

Inputs, on ``keyplane.telemetry.>``: :class:`~keyplane.messages.LinkTelemetry` from each
link's QKD modules (SKR, QBER, state, per block or period) and
:class:`~keyplane.messages.KmTelemetry` from each KM (link key buffer levels, live
sessions per link). The latest figures of each link go to the topology database
(``link_metrics``), where the Routing Element reads them for its weights and capacities.

Alarms (:class:`~keyplane.messages.LinkAlarm` on ``keyplane.alarms.<link>``, plus an
``alarm`` event), evaluated on every telemetry message and by the periodic link
performance test (every ``check_interval_s`` on the clock):

* ``qber_high`` — QBER above the link's threshold (the settings' or the link's own
  ``postprocessing.qber_threshold``): a possible eavesdropper. Clears below threshold −
  ``qber_clear_margin``.
* ``key_rate_collapse`` — SKR below ``skr_collapse_fraction`` of the link's baseline
  (an EWMA of its healthy SKR): a failing link.
* ``link_down`` — the QKD modules report ``state=down``, or a link that has reported
  before has been silent for ``stale_after_s`` (missing telemetry). Links that never
  reported are not declared down: an idle emulation must not take the network out.
* ``cleared`` — once none of the above holds any more.

:class:`MonitoringCore` is the pure logic; :class:`MonitoringElement` the bus shell.
For each link the KM telemetry of both ends is combined: the usable buffer is the lower
of the two ends' (a relay consumes both), sessions the higher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Literal

from keyplane.bus import Bus, Message, Subscription, topics, unsubscribe_all
from keyplane.clock import Clock
from keyplane.config import Topology
from keyplane.control.settings import MonitoringSettings
from keyplane.errors import BusError, StoreError
from keyplane.events import EventStream, EventType
from keyplane.lifecycle import Service
from keyplane.messages import KmTelemetry, LinkAlarm, LinkState, LinkTelemetry, TopologyChange
from keyplane.store import Database
from keyplane.store.topology import LinkMetrics, upsert_link_metrics

__all__ = ["AlarmKind", "LinkHealth", "MonitoringCore", "MonitoringElement"]

logger = logging.getLogger(__name__)

ELEMENT = "monitoring"

AlarmKind = Literal["qber_high", "key_rate_collapse", "link_down"]

DEFAULT_QBER_THRESHOLD = 0.11


@dataclass
class LinkHealth:
    """What the Monitoring Element knows about one link."""

    link_id: str
    qber_threshold: float
    last_seen: float | None = None  # clock time of the last LinkTelemetry
    t: float = 0.0
    state: LinkState = LinkState.up
    skr_bps: float | None = None
    qber: float | None = None
    baseline_skr_bps: float | None = None
    buffer_bits: dict[str, int] = field(default_factory=dict)  # per reporting node
    sessions: dict[str, int] = field(default_factory=dict)
    alarms: set[str] = field(default_factory=set)

    def metrics(self) -> LinkMetrics:
        """The row for the topology database."""
        return LinkMetrics(link_id=self.link_id, t=self.t, state=self.state.value,
                           skr_bps=self.skr_bps, qber=self.qber,
                           sessions=max(self.sessions.values(), default=0),
                           buffer_bits=min(self.buffer_bits.values(), default=0))


class MonitoringCore:
    """Telemetry aggregation and alarm logic (no I/O; callers pass the clock's time).

    Args:
        topology: the links to watch and their QBER thresholds.
        settings: thresholds and periods.
    """

    def __init__(self, topology: Topology, settings: MonitoringSettings | None = None) -> None:
        self.settings = settings or MonitoringSettings()
        self.links: dict[str, LinkHealth] = {}
        for link in topology.links:
            self.add_link(link.link_id, link.postprocessing.qber_threshold)

    def add_link(self, link_id: str, qber_threshold: float = DEFAULT_QBER_THRESHOLD) -> None:
        """Watch a link (idempotent)."""
        if link_id not in self.links:
            threshold = self.settings.qber_alarm_threshold or qber_threshold
            self.links[link_id] = LinkHealth(link_id, threshold)

    def remove_link(self, link_id: str) -> None:
        """Stop watching a link."""
        self.links.pop(link_id, None)

    def on_link_telemetry(self, msg: LinkTelemetry, now: float) -> list[LinkAlarm]:
        """Take a QKD module's figures; returns the alarms they raise or clear."""
        h = self.links.get(msg.link_id)
        if h is None:
            return []
        h.last_seen, h.t, h.state = now, msg.t or now, msg.state
        h.skr_bps = msg.skr_bps
        if msg.qber is not None:
            h.qber = msg.qber
        return self._evaluate(h, now)

    def on_km_telemetry(self, msg: KmTelemetry) -> list[str]:
        """Take a KM's buffer levels and session counts; returns the links it touched."""
        touched = []
        for link_id in set(msg.buffer_bits) | set(msg.sessions):
            h = self.links.get(link_id)
            if h is None:
                continue
            if link_id in msg.buffer_bits:
                h.buffer_bits[msg.node] = msg.buffer_bits[link_id]
            if link_id in msg.sessions:
                h.sessions[msg.node] = msg.sessions[link_id]
            touched.append(link_id)
        return sorted(touched)

    def check(self, now: float) -> list[LinkAlarm]:
        """The periodic link performance test: freshness, QBER and SKR of every link."""
        out: list[LinkAlarm] = []
        for h in self.links.values():
            out += self._evaluate(h, now)
        return out

    def _conditions(self, h: LinkHealth, now: float) -> set[str]:
        s = self.settings
        active: set[str] = set()
        silent = h.last_seen is not None and now - h.last_seen > s.stale_after_s
        if h.state is LinkState.down or silent:
            active.add("link_down")
        if h.qber is not None:
            limit = h.qber_threshold - (s.qber_clear_margin if "qber_high" in h.alarms else 0.0)
            if h.qber > limit:
                active.add("qber_high")
        if h.skr_bps is not None and not silent:
            base = h.baseline_skr_bps
            if base is not None and base > 0 and h.skr_bps < s.skr_collapse_fraction * base:
                active.add("key_rate_collapse")
            elif h.state is LinkState.up and "qber_high" not in active:
                a = s.skr_baseline_alpha
                h.baseline_skr_bps = h.skr_bps if base is None else (1 - a) * base + a * h.skr_bps
        return active

    def _evaluate(self, h: LinkHealth, now: float) -> list[LinkAlarm]:
        active = self._conditions(h, now)
        raised = sorted(active - h.alarms)
        was_alarmed = bool(h.alarms)
        h.alarms = active
        out = [self._alarm(h, kind, now) for kind in raised]  # type: ignore[arg-type]
        if was_alarmed and not active:
            out.append(self._alarm(h, "cleared", now))
        return out

    def _alarm(self, h: LinkHealth,
               kind: Literal["qber_high", "key_rate_collapse", "link_down", "cleared"],
               now: float) -> LinkAlarm:
        if kind == "qber_high":
            text = (f"QBER {h.qber:.4f} above {h.qber_threshold:.4f}: possible eavesdropper"
                    if h.qber is not None else "QBER high")
        elif kind == "key_rate_collapse":
            text = (f"SKR {h.skr_bps:g} bps below {self.settings.skr_collapse_fraction:g} of "
                    f"its baseline {h.baseline_skr_bps or 0:g} bps")
        elif kind == "link_down":
            text = ("QKD modules report the link down" if h.state is LinkState.down else
                    f"no telemetry for {self.settings.stale_after_s:g} s")
        else:
            text = "link healthy again"
        return LinkAlarm(link_id=h.link_id, kind=kind,
                         severity="MINOR" if kind == "cleared" else "MAJOR",
                         qber=h.qber, skr_bps=h.skr_bps, message=text, t=now)


class MonitoringElement(Service):
    """The Monitoring Element on the bus (runnable alone).

    Args:
        topology: the links to watch.
        bus: telemetry in, alarms out.
        clock: drives the periodic link performance test.
        events: receives ``alarm`` events.
        db: the topology database the figures are written to (``None``: not persisted).
        settings: :class:`~keyplane.control.settings.MonitoringSettings`.
    """

    def __init__(self, topology: Topology, bus: Bus, clock: Clock, events: EventStream, *,
                 db: Database | None = None, settings: MonitoringSettings | None = None) -> None:
        self.settings = settings or MonitoringSettings()
        self.core = MonitoringCore(topology, self.settings)
        self.bus = bus
        self.clock = clock
        self.events = events
        self.db = db
        self._subs: list[Subscription] = []
        self._loop_task: asyncio.Task[None] | None = None
        self._db_lock = asyncio.Lock()
        self._closed = False

    async def start(self) -> None:
        """Subscribe to telemetry and topology changes; start the periodic test."""
        if self._subs:
            return
        self._subs.append(await self.bus.subscribe("keyplane.telemetry.>", self._on_telemetry))
        self._subs.append(await self.bus.subscribe(topics.SDN, self._on_sdn))
        self._loop_task = asyncio.get_running_loop().create_task(self._check_loop())
        self.events.emit(EventType.element_started, ELEMENT, links=len(self.core.links))

    async def _on_telemetry(self, _topic: str, msg: Message) -> None:
        now = self.clock.now()
        if isinstance(msg, LinkTelemetry):
            alarms = self.core.on_link_telemetry(msg, now)
            await self._persist([msg.link_id])
            await self._raise(alarms)
        elif isinstance(msg, KmTelemetry):
            await self._persist(self.core.on_km_telemetry(msg))

    async def _on_sdn(self, _topic: str, msg: Message) -> None:
        if not isinstance(msg, TopologyChange) or not msg.link_id:
            return
        if msg.change == "link_added":
            self.core.add_link(msg.link_id)
        elif msg.change == "link_removed":
            self.core.remove_link(msg.link_id)

    async def check_links(self) -> list[LinkAlarm]:
        """Run the link performance test now (also run every ``check_interval_s``)."""
        alarms = self.core.check(self.clock.now())
        await self._persist(sorted({a.link_id for a in alarms}))
        await self._raise(alarms)
        return alarms

    async def _check_loop(self) -> None:
        while True:
            await self.clock.sleep(self.settings.check_interval_s)
            await self.check_links()

    async def _persist(self, link_ids: list[str]) -> None:
        if self.db is None:
            return
        async with self._db_lock:
            for lid in link_ids:
                h = self.core.links.get(lid)
                if h is None:
                    continue
                try:
                    await upsert_link_metrics(self.db, h.metrics())
                except StoreError:
                    logger.warning("cannot write metrics of %s", lid, exc_info=True)

    async def _raise(self, alarms: list[LinkAlarm]) -> None:
        for alarm in alarms:
            self.events.emit(EventType.alarm, ELEMENT, link=alarm.link_id, kind=alarm.kind,
                             severity=alarm.severity, qber=alarm.qber, skr_bps=alarm.skr_bps,
                             message=alarm.message)
            try:
                await self.bus.publish(topics.alarm(alarm.link_id), alarm)
            except BusError:
                logger.warning("cannot publish alarm for %s", alarm.link_id)

    async def close(self) -> None:
        """Unsubscribe and stop the periodic test (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await unsubscribe_all(self._subs)
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._subs:
            self.events.emit(EventType.element_stopped, ELEMENT)

