"""A KM's telemetry: key-store levels, sessions per link, per-session figures, on the bus.

:class:`KmTelemetryPublisher` publishes a :class:`~keyplane.messages.KmTelemetry` on
``keyplane.telemetry.km.<node>`` for the Monitoring Element (buffer levels and sessions per
link feed the Routing Element's weights), the node's ETSI 015 agent (a down link holding
key is PASSIVE, not OFF), the operators' dashboard and the Prometheus series of every
process that listens (:mod:`keyplane.ops.network`).

What it reads: the KM's link key stores and forwarding table (public), its
:meth:`~keyplane.keymanager.km.KeyManager.stream_figures` (token buckets, requests inside
the KM) and, as a sink of the process's event stream, the ``key_delivered`` events of its
node (keys handed out per session: a count and a rate over ``rate_window_s``).

It publishes when a figure changed, at most every ``interval_s`` and at least every
``heartbeat_s`` (an idle node sends almost nothing; a listener that joined late still
learns the levels).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from keyplane.bus import Bus, topics
from keyplane.clock import Clock
from keyplane.errors import KeyplaneError
from keyplane.events import Event, EventStream, EventType
from keyplane.lifecycle import Service
from keyplane.messages import KmTelemetry

if TYPE_CHECKING:
    from keyplane.keymanager.km import KeyManager

__all__ = ["KmTelemetryPublisher", "KmTelemetrySettings", "km_telemetry"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KmTelemetrySettings:
    """How often a KM reports.

    Attributes:
        interval_s: the shortest time between two reports.
        heartbeat_s: the longest time between two reports (sent even if nothing changed).
        rate_window_s: window of the per-session keys/s figure.
    """

    interval_s: float = 1.0
    heartbeat_s: float = 30.0
    rate_window_s: float = 10.0


def km_telemetry(km: KeyManager, now: float, delivered: dict[str, int] | None = None,
                 rates: dict[str, float] | None = None) -> KmTelemetry:
    """The KM's figures at ``now`` (pure apart from reading ``km``).

    Args:
        km: the key manager.
        now: the clock's time, stamped on the message.
        delivered, rates: keys handed out so far and keys/s, per session.
    """
    stores = km.link_stores
    by_peer = {store.peer_id: link_id for link_id, store in stores.items()}
    sessions: collections.Counter[str] = collections.Counter()
    for sid in km.forwarding.sessions():
        entry = km.forwarding.current(sid)
        if entry is None:
            continue
        for hop in {entry.prev_km, entry.next_km} - {None}:
            link_id = by_peer.get(str(hop))
            if link_id is not None:
                sessions[link_id] += 1
    delivered = delivered or {}
    rates = rates or {}
    streams = {sid: fig.model_copy(update={"keys_delivered": delivered.get(sid, 0),
                                           "keys_per_s": round(rates.get(sid, 0.0), 3)})
               for sid, fig in km.stream_figures().items()}
    return KmTelemetry(node=km.node_id,
                       buffer_bits={lid: store.stored_bits for lid, store in stores.items()},
                       sessions={lid: sessions.get(lid, 0) for lid in stores},
                       queued_requests=km.queued_requests, streams=streams, t=now)


class KmTelemetryPublisher(Service):
    """Publishes one KM's telemetry (see the module docstring).

    Args:
        km: the key manager to report on.
        bus: where to publish.
        clock: the clock (timers and the rate window).
        events: the process's event stream; the publisher joins it as a sink to count the
            keys its node hands out.
        settings: report intervals.
    """

    def __init__(self, km: KeyManager, bus: Bus, clock: Clock, events: EventStream,
                 settings: KmTelemetrySettings | None = None) -> None:
        self.km = km
        self.bus = bus
        self.clock = clock
        self.events = events
        self.settings = settings or KmTelemetrySettings()
        self.published = 0
        self._delivered: collections.Counter[str] = collections.Counter()
        self._recent: dict[str, collections.deque[tuple[float, int]]] = {}
        self._last: KmTelemetry | None = None
        self._last_t = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._router: _NodeRouter | None = None

    # -- key_delivered events of this node (the publisher's sink on the stream) -----------
    def _on_event(self, event: Event) -> None:
        """Count the keys this node hands to applications, per session."""
        if event.type is not EventType.key_delivered or event.node != self.km.node_id:
            return
        if not event.session:
            return
        n = int(event.data.get("key_count") or len(event.data.get("key_ids") or []) or 1)
        self._delivered[event.session] += n
        self._recent.setdefault(event.session, collections.deque(maxlen=4096)).append(
            (event.t, n))

    def _rates(self, now: float) -> dict[str, float]:
        window = self.settings.rate_window_s
        out = {}
        for sid, q in self._recent.items():
            while q and q[0][0] < now - window:
                q.popleft()
            out[sid] = sum(n for _, n in q) / window
        return out

    # -- publishing -----------------------------------------------------------------------
    def snapshot(self) -> KmTelemetry:
        """The figures now (what the next report would carry)."""
        now = self.clock.now()
        msg = km_telemetry(self.km, now, dict(self._delivered), self._rates(now))
        live = set(msg.streams)
        for sid in [s for s in self._delivered if s not in live]:  # ended sessions
            del self._delivered[sid]
            self._recent.pop(sid, None)
        return msg

    async def publish_now(self) -> KmTelemetry:
        """Publish the current figures at once (tests; the loop calls it when due).

        Raises:
            BusError: the bus refused the message.
        """
        return await self._publish(self.snapshot())

    async def _publish(self, msg: KmTelemetry) -> KmTelemetry:
        await self.bus.publish(topics.km_telemetry(self.km.node_id), msg)
        self._last, self._last_t = msg, msg.t
        self.published += 1
        return msg

    def _changed(self, msg: KmTelemetry) -> bool:
        # a field-by-field comparison, not two dumps: every KM checks every interval_s
        last = self._last
        return last is None or msg != last.model_copy(update={"t": msg.t})

    async def _run(self) -> None:
        st = self.settings
        while True:
            try:
                msg = self.snapshot()
                if self._changed(msg) or msg.t - self._last_t >= st.heartbeat_s:
                    await self._publish(msg)  # the snapshot just taken, not a second one
            except KeyplaneError as exc:  # the bus is down: report again next time
                logger.debug("node %s: telemetry not published: %s", self.km.node_id, exc)
            await self.clock.sleep(st.interval_s)

    async def start(self) -> None:
        """Join the event stream and start reporting."""
        self._router = _NodeRouter.of(self.events)
        self._router.add(self.km.node_id, self._on_event)
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"km-telemetry-{self.km.node_id}")

    async def close(self) -> None:
        """Stop reporting and leave the event stream (idempotent)."""
        if self._router is not None:
            self._router.remove(self.km.node_id, self._on_event)
            self._router = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class _NodeRouter:
    """One sink on an event stream for every publisher of a process: each event goes to
    the publishers of its node only. With a sink per publisher, each event of a
    1,000-node process made 1,000 calls (the link workers' block events alone, about
    10,000 a second, took the process's whole CPU)."""

    _by_stream: ClassVar[weakref.WeakKeyDictionary[EventStream, _NodeRouter]] = (
        weakref.WeakKeyDictionary())

    def __init__(self, events: EventStream) -> None:
        self._events = events
        self._by_node: dict[str | None, list[Callable[[Event], None]]] = {}

    @classmethod
    def of(cls, events: EventStream) -> _NodeRouter:
        """The router of ``events`` (attached as a sink on first use)."""
        router = cls._by_stream.get(events)
        if router is None or router not in events.sinks:
            router = cls._by_stream[events] = cls(events)
            events.add_sink(router)
        return router

    def add(self, node: str, write: Callable[[Event], None]) -> None:
        """Pass ``node``'s events to ``write``."""
        self._by_node.setdefault(node, []).append(write)

    def remove(self, node: str, write: Callable[[Event], None]) -> None:
        """Stop passing events to ``write``; the last one out detaches the router."""
        targets = self._by_node.get(node, [])
        if write in targets:
            targets.remove(write)
        if not targets:
            self._by_node.pop(node, None)
        if not self._by_node and self in self._events.sinks:
            self._events.sinks.remove(self)
            self._by_stream.pop(self._events, None)

    def write(self, event: Event) -> None:
        """An event of the stream: to its node's publishers."""
        for write in self._by_node.get(event.node, ()):
            write(event)

    def close(self) -> None:
        """Nothing to release."""
