"""The dashboard of one process: its view, its bus feed and its app, started and stopped together.

``keyplane run`` feeds it from the process's own event stream (the feed joins the stream as
a sink) plus the bus telemetry and alarm topics, with link controls on (a loopback demo).
``keyplane controller`` feeds it entirely from the bus (``events_from_bus=True``), controls off
unless ``--dashboard-controls``. Either way it is mounted on the process's operations server
at ``/dashboard/`` (docs/dashboard.md).
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from keyplane.bus import Bus
from keyplane.config import Topology
from keyplane.dashboard.app import create_dashboard_app
from keyplane.dashboard.feed import DashboardFeed, bus_link_control
from keyplane.dashboard.view import NetworkView
from keyplane.events import EventStream
from keyplane.lifecycle import Service

__all__ = ["DASHBOARD_PATH", "Dashboard"]

DASHBOARD_PATH = "/dashboard"
"""Where the dashboard is mounted on a process's operations server."""


class Dashboard(Service):
    """A live dashboard of ``topology``.

    Args:
        topology: the network shown.
        bus: where telemetry, alarms (and with ``events_from_bus`` the events) arrive, and
            where link controls go.
        events: the process's event stream, joined as a sink (embedded mode); None when the
            events come over the bus.
        events_from_bus: take events from ``keyplane.events.>`` (distributed mode).
        controls: offer the cut / eavesdrop / restore buttons.
        control_timeout_s: how long a link has to answer a control.
        push_interval_s: the most often the page gets a new snapshot.
    """

    def __init__(self, topology: Topology, bus: Bus, *, events: EventStream | None = None,
                 events_from_bus: bool = False, controls: bool = False,
                 control_timeout_s: float = 10.0, push_interval_s: float = 0.5) -> None:
        self.view = NetworkView(topology)
        self.feed = DashboardFeed(bus, self.view, events_from_bus=events_from_bus)
        self.events = events
        self.controls = controls
        self._stopping = asyncio.Event()
        self.app: FastAPI = create_dashboard_app(
            self.view, bus_link_control(bus, control_timeout_s) if controls else None,
            push_interval_s=push_interval_s, stopping=self._stopping)

    async def start(self) -> None:
        """Start following the network."""
        self._stopping.clear()
        if self.events is not None:
            self.events.add_sink(self.feed)
        await self.feed.start()

    async def close(self) -> None:
        """Stop following it and end the open event streams (idempotent)."""
        self._stopping.set()
        if self.events is not None and self.feed in self.events.sinks:
            self.events.sinks.remove(self.feed)
        await self.feed.aclose()
