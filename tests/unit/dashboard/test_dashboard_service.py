"""The dashboard of one process: fed from its event stream and the bus; controls over the bus."""

from __future__ import annotations

import asyncio

import httpx

from keyplane.bus import MemoryBus, Message
from keyplane.clock import VirtualClock
from keyplane.config import load_topology
from keyplane.dashboard.service import Dashboard
from keyplane.events import EventStream, EventType
from keyplane.messages import LinkAlarm, LinkTelemetry
from keyplane.physical.wire import LinkCommand, LinkCommandReply, control_topic
from tests.support.deadlines import DEADLINE_S

TOPO = load_topology("paper_poc")


async def test_restore_from_the_page_undoes_a_cut_and_an_eavesdropper() -> None:
    bus = MemoryBus()
    got: list[LinkCommand] = []

    async def link(topic: str, msg: Message) -> Message | None:
        assert isinstance(msg, LinkCommand)
        got.append(msg)
        return LinkCommandReply(link_id=msg.link_id, ok=True, state="up")

    await bus.subscribe(control_topic("km4-km5"), link)
    dash = Dashboard(TOPO, bus, controls=True)
    async with dash, httpx.AsyncClient(transport=httpx.ASGITransport(app=dash.app),
                                       base_url="http://test") as c:
        h = {"X-Keyplane-Dashboard": "1"}
        assert (await c.post("/api/links/km4-km5/eve", headers=h)).status_code == 200
        assert (await c.post("/api/links/km4-km5/restore", headers=h)).json()["state"] == "up"
    assert [(m.action, m.fraction) for m in got] == [("eve", 1.0), ("restore", 1.0),
                                                     ("eve", 0.0)]
    await bus.close()


async def test_the_view_follows_the_stream_and_the_bus_until_closed() -> None:
    bus = MemoryBus()
    clock = VirtualClock(start=1.0)
    events = EventStream(clock)
    dash = Dashboard(TOPO, bus, events=events)
    async with dash:
        events.emit(EventType.session_operative, "km", node="km2", session="s-1")
        await bus.publish("keyplane.telemetry.link.km0-km2", LinkTelemetry(
            link_id="km0-km2", node="km0", block_id=1, skr_bps=5.0, qber=0.02, t=2.0))
        await bus.publish("keyplane.alarms.km4-km5", LinkAlarm(link_id="km4-km5",
                                                               kind="qber_high", t=3.0))
        async with asyncio.timeout(DEADLINE_S):
            while not dash.view.snapshot()["alarms"]:
                await asyncio.sleep(0.01)  # poll interval; the timeout above bounds it
        snap = dash.view.snapshot()
        assert [s["id"] for s in snap["sessions"]] == ["s-1"]
        assert next(x for x in snap["links"] if x["id"] == "km0-km2")["skr_bps"] == 5.0
    assert dash.feed not in events.sinks
    version = dash.view.version
    events.emit(EventType.session_operative, "km", node="km3", session="s-2")
    assert dash.view.version == version  # closed: no longer following
    await bus.close()
