"""Feeding the dashboard from the bus, and its link controls over the bus.

:class:`DashboardFeed` subscribes to what the elements already publish (link and KM
telemetry, the Monitoring Element's alarms and, in distributed mode, the event stream on
``keyplane.events.>``) and folds it into a :class:`~keyplane.dashboard.view.NetworkView`.
In embedded mode the feed is also an event sink of the process's stream, so events reach the
view without a round trip over the bus. :func:`bus_link_control` sends the same
:class:`~keyplane.physical.wire.LinkCommand` as ``keyplane link``.
"""

from __future__ import annotations

import logging

from keyplane.bus import Bus, Message, Subscription, unsubscribe_all
from keyplane.dashboard.app import LinkControl
from keyplane.dashboard.view import NetworkView
from keyplane.errors import BusError
from keyplane.events import Event, EventMessage
from keyplane.messages import KmTelemetry, LinkAlarm, LinkTelemetry
from keyplane.physical.wire import LinkCommand, LinkCommandReply, control_topic

__all__ = ["DashboardFeed", "bus_link_control"]

logger = logging.getLogger(__name__)


class DashboardFeed:
    """Bus subscriptions (and an event sink) that keep a view current.

    Args:
        bus: the bus to listen on.
        view: the view to fold into.
        events_from_bus: also take events from ``keyplane.events.>`` (distributed mode; in
            embedded mode add the feed to the process's event sinks instead).
    """

    def __init__(self, bus: Bus, view: NetworkView, *, events_from_bus: bool = False) -> None:
        self.bus = bus
        self.view = view
        self._events_from_bus = events_from_bus
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        """Subscribe; the view updates from now on."""
        patterns = ["keyplane.telemetry.link.*", "keyplane.telemetry.km.*",
                    "keyplane.alarms.*"]
        if self._events_from_bus:
            patterns.append("keyplane.events.>")
        for pattern in patterns:
            self._subs.append(await self.bus.subscribe(pattern, self._on_message))

    async def _on_message(self, topic: str, msg: Message) -> Message | None:
        if isinstance(msg, LinkTelemetry):
            self.view.on_link_telemetry(msg)
        elif isinstance(msg, KmTelemetry):
            self.view.on_km_telemetry(msg)
        elif isinstance(msg, LinkAlarm):
            self.view.on_alarm(msg)
        elif isinstance(msg, EventMessage):
            self.view.on_event(msg.event)
        return None

    def write(self, event: Event) -> None:
        """Event-sink side (embedded mode)."""
        self.view.on_event(event)

    def close(self) -> None:
        """Event-sink side: nothing to release (the subscriptions end in :meth:`aclose`)."""

    async def aclose(self) -> None:
        """Drop the subscriptions."""
        await unsubscribe_all(self._subs)
        self._subs.clear()


def bus_link_control(bus: Bus, timeout_s: float = 10.0) -> LinkControl:
    """A :data:`~keyplane.dashboard.app.LinkControl` that asks the link over ``bus``."""

    async def send(cmd: LinkCommand) -> str:
        try:
            reply = await bus.request(control_topic(cmd.link_id), cmd, timeout_s=timeout_s)
        except BusError as exc:
            raise BusError(f"link {cmd.link_id} did not answer: {exc}") from exc
        if not isinstance(reply, LinkCommandReply) or not reply.ok:
            raise RuntimeError(getattr(reply, "message", "") or "refused")
        return reply.state

    async def control(link_id: str, action: str, fraction: float) -> str:
        if action == "eve":
            commands = [LinkCommand(link_id=link_id, action="eve", fraction=fraction)]
        elif action == "cut":
            commands = [LinkCommand(link_id=link_id, action="cut")]
        elif action == "restore":
            # the page's one button undoes every fault it can set: the fibre's (a cut, extra
            # loss) and the eavesdropper (the modules' restore leaves her in place)
            commands = [LinkCommand(link_id=link_id, action="restore"),
                        LinkCommand(link_id=link_id, action="eve", fraction=0.0)]
        else:
            raise ValueError(f"unknown action {action!r}")
        state = ""
        for cmd in commands:
            state = await send(cmd)
        logger.info("dashboard: %s %s -> %s", action, link_id, state)
        return state

    return control
