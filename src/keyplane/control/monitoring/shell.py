"""The Monitoring Element on the bus: the thin asyncio shell around :class:`.core.MonitoringCore`.

* Telemetry in (``keyplane.telemetry.>``): each sample updates the core in memory; alarms
  it raises or clears go out at once (``keyplane.alarms.<link>`` and an ``alarm`` event).
* Figures out at a bounded rate: every ``persist_interval_s`` the links that changed are
  written to ``link_metrics`` in one statement and sent to the Routing Element in one
  :class:`~keyplane.control.wire.LinkMetricsReport` (issue #21: one SQL upsert per sample
  took a quarter of the process under relay load).
* Active link tests (the paper's "performance tests over the physical links"): every
  ``probe_interval_s`` up to ``probe_links_per_round`` links, round-robin, are asked for
  their status over the link's own command topic — the path operators and the CLI use to
  drive the physical layer (:class:`~keyplane.physical.wire.LinkCommand` ``status``). The
  answer comes from the QKD module itself, not from the telemetry stream, so it tells a
  dead module from a quiet one and a broken telemetry path from a broken link.
* The clock: a periodic check (``check_interval_s``) for silent links, and a wake-up at
  the earliest pending alarm clear.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from keyplane.bus import Bus, Message, Subscription, topics, unsubscribe_all
from keyplane.clock import Clock
from keyplane.config import Topology
from keyplane.control.monitoring.core import MonitoringCore
from keyplane.control.settings import MonitoringSettings
from keyplane.control.wire import MONITORING_METRICS, LinkFigures, LinkMetricsReport
from keyplane.errors import BusError, NoResponders, StoreError
from keyplane.events import EventStream, EventType
from keyplane.lifecycle import Service
from keyplane.messages import KmTelemetry, LinkAlarm, LinkTelemetry, TopologyChange
from keyplane.store import Database
from keyplane.store.topology import LinkMetrics, upsert_link_metrics, upsert_link_metrics_many

__all__ = ["ELEMENT", "MonitoringElement"]

logger = logging.getLogger(__name__)

ELEMENT = "monitoring"


class MonitoringElement(Service):
    """The Monitoring Element on the bus (runnable alone).

    Args:
        topology: the links to watch.
        bus: telemetry in; alarms, figures and link tests out.
        clock: drives the periodic check, the persistence period and the link tests.
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
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._probe_cursor = 0
        self._unwritten: dict[str, LinkMetrics] = {}  # taken from the core, not yet stored
        self._started = False
        self._closed = False

    async def start(self) -> None:
        """Subscribe to telemetry and topology changes; start the clock-driven loops."""
        if self._started:
            return
        self._started = True
        self._subs.append(await self.bus.subscribe("keyplane.telemetry.>", self._on_telemetry))
        self._subs.append(await self.bus.subscribe(topics.SDN, self._on_sdn))
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._check_loop()))
        self._tasks.append(loop.create_task(self._persist_loop()))
        if self.settings.probe_interval_s is not None:
            self._tasks.append(loop.create_task(self._probe_loop(self.settings.probe_interval_s)))
        self.events.emit(EventType.element_started, ELEMENT, links=len(self.core.links))

    async def _on_telemetry(self, _topic: str, msg: Message) -> None:
        if isinstance(msg, LinkTelemetry):
            await self._raise(self.core.on_link_telemetry(msg, self.clock.now()))
            if self.core.clear_started:
                self.core.clear_started = False
                self._wake.set()  # a clear became pending: wake up when it is due
        elif isinstance(msg, KmTelemetry):
            self.core.on_km_telemetry(msg)

    async def _on_sdn(self, _topic: str, msg: Message) -> None:
        if not isinstance(msg, TopologyChange) or not msg.link_id:
            return
        if msg.change == "link_added":
            self.core.add_link(msg.link_id)
        elif msg.change == "link_removed":
            self.core.remove_link(msg.link_id)

    # ------------------------------------------------------------------ the clock

    async def check_links(self) -> list[LinkAlarm]:
        """Run the periodic check now (also run every ``check_interval_s``)."""
        alarms = self.core.check(self.clock.now())
        await self._raise(alarms)
        return alarms

    async def _check_loop(self) -> None:
        """The periodic check, and a wake-up at the earliest pending clear."""
        next_check = self.clock.now() + self.settings.check_interval_s
        while True:
            due = self.core.next_clear_due()
            deadline = next_check if due is None else min(next_check, due)
            self._wake.clear()
            waker = asyncio.ensure_future(self._wake.wait())
            sleeper = asyncio.ensure_future(self.clock.sleep_until(deadline))
            try:
                await asyncio.wait({waker, sleeper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waker.cancel()
                sleeper.cancel()
            if self.clock.now() >= deadline:
                if self.clock.now() >= next_check:
                    next_check = self.clock.now() + self.settings.check_interval_s
                await self.check_links()

    async def _persist_loop(self) -> None:
        while True:
            await self.clock.sleep(self.settings.persist_interval_s)
            await self.flush()

    async def flush(self) -> list[LinkMetrics]:
        """Persist and report the figures of the links that changed (also run every
        ``persist_interval_s``); returns them."""
        changed = self.core.take_changed()
        if not changed:
            return changed
        report = LinkMetricsReport(links=[LinkFigures(
            link_id=m.link_id, t=m.t, state=m.state, skr_bps=m.skr_bps, qber=m.qber,
            sessions=m.sessions, buffer_bits=m.buffer_bits) for m in changed])
        try:
            await self.bus.publish(MONITORING_METRICS, report)
        except BusError:
            logger.warning("cannot send link figures to the Routing Element")
        if self.db is not None:
            self._unwritten.update((m.link_id, m) for m in changed)
            await self._store(list(self._unwritten.values()))
        return changed

    async def _store(self, changed: list[LinkMetrics]) -> None:
        """Write ``changed``; what was written leaves :attr:`_unwritten` (a write cut short
        by :meth:`close` is done again there)."""
        assert self.db is not None
        try:
            await upsert_link_metrics_many(self.db, changed)
            self._forget_written(changed)
            return
        except StoreError:
            logger.warning("cannot write the figures of %d links at once; one by one",
                           len(changed), exc_info=True)
        for m in changed:  # isolate the row that fails (e.g. a link not in the database)
            try:
                await upsert_link_metrics(self.db, m)
            except StoreError:
                logger.warning("cannot write metrics of %s", m.link_id, exc_info=True)
        self._forget_written(changed)  # a row that cannot be written is not retried forever

    def _forget_written(self, written: list[LinkMetrics]) -> None:
        for m in written:
            if self._unwritten.get(m.link_id) is m:
                del self._unwritten[m.link_id]

    # ------------------------------------------------------------------ link tests

    async def _probe_loop(self, interval_s: float) -> None:
        while True:
            await self.clock.sleep(interval_s)
            await self.test_links()

    async def test_links(self, link_ids: list[str] | None = None) -> list[LinkAlarm]:
        """Run the active link test on ``link_ids`` (default: the next round-robin batch)."""
        if link_ids is None:
            ids = sorted(self.core.links)
            if not ids:
                return []
            n = min(len(ids), self.settings.probe_links_per_round)
            start = self._probe_cursor % len(ids)
            link_ids = (ids + ids)[start:start + n]
            self._probe_cursor = start + n
        results = await asyncio.gather(*(self._probe(lid) for lid in link_ids))
        alarms: list[LinkAlarm] = []
        now = self.clock.now()
        for lid, (state, unreachable) in zip(link_ids, results, strict=True):
            alarms += self.core.on_probe(lid, state, now, unreachable=unreachable)
        await self._raise(alarms)
        if self.core.clear_started:
            self.core.clear_started = False
            self._wake.set()
        return alarms

    async def _probe(self, link_id: str) -> tuple[str | None, bool]:
        """One link test: the state the link's modules answer, and whether nobody serves
        the link's test topic (``(None, True)``)."""
        # imported here: the physical package is heavy and only its wire model is needed
        from keyplane.physical.wire import LinkCommand, LinkCommandReply, control_topic

        bound = self.settings.probe_timeout_s
        try:
            reply: Any = await self.clock.wait_for(
                self.bus.request(control_topic(link_id),
                                 LinkCommand(link_id=link_id, action="status"),
                                 timeout_s=bound), bound)
        except NoResponders:
            return None, True
        except (TimeoutError, BusError):
            return None, False
        if isinstance(reply, LinkCommandReply) and reply.ok:
            return reply.state, False
        return None, False

    # ------------------------------------------------------------------ alarms out

    async def _raise(self, alarms: list[LinkAlarm]) -> None:
        if alarms:
            self._wake.set()  # a clear may now be pending: re-plan the wake-up
        for alarm in alarms:
            self.events.emit(EventType.alarm, ELEMENT, link=alarm.link_id, kind=alarm.kind,
                             severity=alarm.severity, qber=alarm.qber, skr_bps=alarm.skr_bps,
                             message=alarm.message, active=alarm.active)
            try:
                await self.bus.publish(topics.alarm(alarm.link_id), alarm)
            except BusError:
                logger.warning("cannot publish alarm for %s", alarm.link_id)

    async def close(self) -> None:
        """Unsubscribe, stop the loops, write the last figures (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await unsubscribe_all(self._subs)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._started and self.db is not None:
            self._unwritten.update((m.link_id, m) for m in self.core.take_changed())
            if self._unwritten:
                await self._store(list(self._unwritten.values()))
        if self._started:
            self.events.emit(EventType.element_stopped, ELEMENT)
