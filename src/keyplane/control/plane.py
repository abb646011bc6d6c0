"""The control plane as one object, and the entry point of ``keyplane controller``.

:class:`ControlPlane` starts any subset of the five elements on one bus, database, clock
and event stream. Each element is also constructible and startable alone (see their
modules), so a distributed deployment runs one ``run_controller(..., elements=[...])``
process per element, or several elements in one, without code changes.

Start order (dependencies first): SDN Controller (writes the topology file into the
database and answers snapshot requests), Routing Element (asks the SDN for its snapshot),
Monitoring Element, Access Control, Admission Control. Close runs in reverse.

Started on a database a previous run used, the plane takes back that run's live sessions:
Admission Control reloads them and, before it takes a new request, has the Routing Element
hold their capacity again (docs/control.md, "Controller restart").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from keyplane.bus import Bus, BusSecurity, connect
from keyplane.clock import Clock, RealClock
from keyplane.config import Topology, load_topology
from keyplane.control.access import AccessControl
from keyplane.control.admission import AdmissionControl
from keyplane.control.monitoring import MonitoringElement
from keyplane.control.routing import RoutingElement, WeightFunction
from keyplane.control.sdn import SdnController
from keyplane.control.settings import ControlSettings
from keyplane.events import BusSink, EventSink, EventStream, JsonlSink
from keyplane.lifecycle import Service
from keyplane.store import Database

if TYPE_CHECKING:
    from keyplane.api.etsi015 import Etsi015Driver

__all__ = ["ELEMENTS", "ControlPlane", "run_controller"]

logger = logging.getLogger(__name__)

ELEMENTS: tuple[str, ...] = ("sdn", "routing", "monitoring", "access", "admission")
"""Element names, in start order."""


class _Element(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...


class ControlPlane(Service):
    """Any subset of the control-plane elements sharing one bus, database and clock.

    Args:
        topology: the topology file.
        bus: the bus every element talks on.
        db: the user/SLA and topology database.
        clock: protocol timers.
        events: the event stream.
        settings: every element's settings.
        elements: which elements to run (default: all of :data:`ELEMENTS`).
        weight_fn: a custom Routing Element weight function.
        sdn_driver: the SDN Controller's ETSI 015 driver (see
            :class:`~keyplane.control.sdn.SdnController`; ``None``: nodes are not driven).

    Raises:
        ValueError: an unknown element name.
    """

    def __init__(self, topology: Topology, bus: Bus, db: Database, clock: Clock,
                 events: EventStream, settings: ControlSettings | None = None, *,
                 elements: Iterable[str] | None = None,
                 weight_fn: WeightFunction | None = None,
                 sdn_driver: Etsi015Driver | None = None) -> None:
        wanted = set(ELEMENTS if elements is None else elements)
        unknown = wanted - set(ELEMENTS)
        if unknown:
            raise ValueError(f"unknown control-plane elements {sorted(unknown)}; "
                             f"choose from {list(ELEMENTS)}")
        self.settings = s = settings or ControlSettings()
        self.sdn = (SdnController(topology, bus, clock, events, db=db, settings=s.sdn,
                                  driver=sdn_driver)
                    if "sdn" in wanted else None)
        self.routing = (RoutingElement(topology, bus, clock, events, db=db, settings=s.routing,
                                       weight_fn=weight_fn)
                        if "routing" in wanted else None)
        self.monitoring = (MonitoringElement(topology, bus, clock, events, db=db,
                                             settings=s.monitoring)
                           if "monitoring" in wanted else None)
        self.access = (AccessControl(bus, db, clock, events, settings=s.access)
                       if "access" in wanted else None)
        self.admission = (AdmissionControl(bus, db, clock, events, settings=s.admission)
                          if "admission" in wanted else None)
        self._started: list[_Element] = []
        self._closed = False

    @property
    def elements(self) -> list[str]:
        """Names of the elements this plane runs, in start order."""
        return [n for n in ELEMENTS if getattr(self, n) is not None]

    async def start(self) -> None:
        """Start the elements in dependency order; on a failure, close those started."""
        if self._started:
            return
        try:
            for name in ELEMENTS:
                element: _Element | None = getattr(self, name)
                if element is not None:
                    await element.start()
                    self._started.append(element)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the started elements in reverse order (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for element in reversed(self._started):
            try:
                await element.close()
            except Exception:
                logger.exception("closing %r failed", element)



async def run_controller(topology_path: str | Path, bus_url: str | None, db_url: str,
                         elements: list[str] | None = None, *,
                         settings: ControlSettings | None = None,
                         events_path: str | Path | None = None,
                         ready: asyncio.Event | None = None,
                         security: BusSecurity | None = None) -> None:
    """Run control-plane elements until cancelled (the caller maps SIGTERM to cancel).

    Args:
        topology_path: the topology YAML file.
        bus_url: ``nats://host:port`` (``None`` / ``memory://``: an in-process bus, only
            useful when every element and KM runs in this process).
        db_url: the database URL (SQLite file or PostgreSQL).
        elements: which elements (default: all).
        settings: element settings.
        events_path: also append events to this JSON-lines file.
        ready: set once every element has started.
        security: the bus identity (required for NATS; see :func:`keyplane.bus.connect`).

    Raises:
        ConfigError: the topology file is invalid.
        BusError: the bus cannot be reached.
        StoreError: the database cannot be opened.
    """
    topology = load_topology(topology_path)
    clock = RealClock()
    bus = await connect(bus_url, name="keyplane-controller", security=security)
    db: Database | None = None
    sinks: list[EventSink] = [BusSink(bus)]
    if events_path is not None:
        sinks.append(JsonlSink(events_path))
    events = EventStream(clock, sinks)
    try:
        db = await Database.open(db_url)
        async with ControlPlane(topology, bus, db, clock, events, settings, elements=elements):
            if ready is not None:
                ready.set()
            await asyncio.Event().wait()
    finally:
        events.close()
        if db is not None:
            await db.close()
        await bus.close()
