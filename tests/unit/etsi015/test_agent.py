"""The agent shell: live figures from the bus, notifications on the bus, statistics periods."""

from __future__ import annotations

import asyncio

from etsi015_support import assert_valid
from tests.support.deadlines import DEADLINE_S

from keyplane.api.etsi015 import (
    QkdApplication,
    SdnAgent,
    VirtualLink,
    app_id,
    qkdl_id,
    qkdn_id,
    validate_notification,
)
from keyplane.api.etsi015.model import ROOT_MEMBER, identity
from keyplane.bus import Bus, Message, topics
from keyplane.clock import VirtualClock
from keyplane.config import Topology
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.messages import KmTelemetry, LinkAlarm, LinkState, LinkTelemetry, SdnNotification


async def collect(bus: Bus, node: str) -> list[SdnNotification]:
    seen: list[SdnNotification] = []

    async def on(topic: str, msg: Message) -> None:
        assert isinstance(msg, SdnNotification)
        seen.append(msg)

    await bus.subscribe(topics.sdn_notifications(node), on)
    return seen


async def wait_until(pred, timeout_s: float = DEADLINE_S) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout_s):
        while not pred():
            await asyncio.sleep(0.01)  # poll interval of a bounded wait


def link_of(agent: SdnAgent, link_id: str) -> dict:  # type: ignore[type-arg]
    doc = agent.get(ROOT_MEMBER)
    assert_valid(doc)
    return next(x for x in doc[ROOT_MEMBER]["qkd_links"]["qkd_link"]
                if x["qkdl_id"] == qkdl_id(link_id))


async def test_telemetry_and_alarms_over_the_bus_drive_status_and_notifications(
        topology: Topology, bus: Bus, clock: VirtualClock) -> None:
    sink = MemorySink()
    seen = await collect(bus, "km0")
    async with SdnAgent("km0", topology, bus, clock, EventStream(clock, [sink])) as agent:
        await bus.publish(topics.link_telemetry("km0-km1"), LinkTelemetry(
            link_id="km0-km1", node="km0", skr_bps=2500.0, qber=0.021))
        await wait_until(lambda: link_of(agent, "km0-km1").get("qkdl_status")
                         == identity("ACTIVE"))
        perf = link_of(agent, "km0-km1")["qkdl_performance"]
        assert perf["skr"] == 2500
        assert perf["phys_perf"][0]["value"] == "0.021"
        # an alarm for a link of another node is ignored; ours marks the link down
        await bus.publish(topics.alarm("km4-km5"), LinkAlarm(link_id="km4-km5", kind="link_down"))
        await bus.publish(topics.alarm("km0-km1"), LinkAlarm(
            link_id="km0-km1", kind="link_down", message="fibre cut"))
        await wait_until(lambda: link_of(agent, "km0-km1")["qkdl_status"] == identity("OFF"))
        await bus.publish(topics.alarm("km0-km1"), LinkAlarm(
            link_id="km0-km1", kind="qber_high", qber=0.2, severity="MAJOR"))
        await wait_until(lambda: any(n.name == "alarm" and "qber_high" in
                                     n.content["link"]["message"] for n in seen))
        await bus.flush()
        await wait_until(lambda: {"event", "sdqkdn_link_perf_update", "sdqkdn_link_down",
                                  "alarm"} <= {n.name for n in seen})
    for note in seen:
        assert note.node == "km0" and note.qkdn_id == qkdn_id("km0")
        validate_notification(note.name, note.content)
    down = next(n for n in seen if n.name == "sdqkdn_link_down")
    assert down.content == {"qkd_link": {"qkdl_id": qkdl_id("km0-km1"), "reason": "fibre cut"}}
    assert sink.of_type(EventType.element_started) and sink.of_type(EventType.link_state)


async def test_link_with_stored_key_goes_passive_not_off(agent: SdnAgent) -> None:
    await agent.bus.publish(topics.km_telemetry("km0"), KmTelemetry(
        node="km0", buffer_bits={"km0-km2": 4096}))
    for state in (LinkState.up, LinkState.down):
        await agent.bus.publish(topics.link_telemetry("km0-km2"), LinkTelemetry(
            link_id="km0-km2", node="km2", state=state, skr_bps=100.0))
    await wait_until(lambda: link_of(agent, "km0-km2")["qkdl_status"] == identity("PASSIVE"))


async def test_perf_update_only_on_major_change(agent: SdnAgent) -> None:
    ds = agent.datastore
    wall = agent.clock.wall()
    first = ds.apply_telemetry("km0-km3", state=LinkState.up, skr_bps=1000, qber=0.02,
                               wall_s=wall)
    assert [n.name for n in first] == ["event", "sdqkdn_link_perf_update"]
    assert ds.apply_telemetry("km0-km3", state=LinkState.up, skr_bps=1050, qber=0.021,
                              wall_s=wall) == []
    assert [n.name for n in ds.apply_telemetry("km0-km3", state=LinkState.up, skr_bps=800,
                                               qber=0.021, wall_s=wall)] == [
        "sdqkdn_link_perf_update"]
    assert [n.name for n in ds.apply_telemetry("km0-km3", state=LinkState.up, skr_bps=800,
                                               qber=0.03, wall_s=wall)] == [
        "sdqkdn_link_perf_update"]


async def test_overloaded_link_is_notified_once(agent: SdnAgent) -> None:
    ds = agent.datastore
    wall = agent.clock.wall()
    ds.apply_telemetry("km0-km2", state=LinkState.up, skr_bps=1000, qber=0.02, wall_s=wall)
    notes = ds.add_virtual_link(VirtualLink(qkdl_id("v"), qkdn_id("km3"), qkdn_id("km2"),
                                            (qkdn_id("km3"),), 4000), wall)
    over = [n for n in notes if n.name == "sdqkdn_link_overloaded"]
    assert [n.content["qkd_link"]["qkdl_id"] for n in over] == [qkdl_id("km0-km2")]
    for n in over:
        validate_notification(n.name, n.content)
    again = ds.apply_telemetry("km0-km2", state=LinkState.up, skr_bps=990, qber=0.02,
                               wall_s=wall)
    assert "sdqkdn_link_overloaded" not in {n.name for n in again}


async def test_application_lifecycle_notifications_and_statistics(
        agent: SdnAgent, clock: VirtualClock) -> None:
    feed = agent.subscribe()
    session = "9b2f0f64-8d0e-4c39-a3b1-2b8f2b5d7a10"
    await agent.register_application(QkdApplication(
        app_id(session), "urn:keyplane:sae:sae0", ("urn:keyplane:sae:sae1",),
        max_bandwidth_bps=1000, priority=5, backing_qkdl_ids=(qkdl_id("km0-km1"),),
        remote_qkdn_id=qkdn_id("km1")))
    agent.record_consumption(session, 256)
    agent.record_consumption(session, 256)
    await clock.advance(agent.settings.statistics_period_s)
    agent.record_consumption(session, 128)
    await clock.advance(agent.settings.statistics_period_s)
    app = agent.get(f"{ROOT_MEMBER}/qkd_applications/qkd_app={session}")[
        "etsi-qkd-sdn-node:qkd_app"][0]
    assert [s["consumed_bits"] for s in app["app_statistics"]["statistics"]] == [512, 128]
    assert app["local_qkdn_id"] == qkdn_id("km0")
    assert_valid(agent.get(""))
    await agent.merge(f"{ROOT_MEMBER}/qkd_applications/qkd_app={session}", {
        "etsi-qkd-sdn-node:qkd_app": [{"app_id": session, "app_priority": 7}]})
    await agent.remove_application(session)
    names = []
    async with asyncio.timeout(DEADLINE_S):
        async for note in feed:
            names.append(note.name)
            validate_notification(note.name, note.content)
            if note.name == "sdqkdn_application_disconnected":
                break
    feed.close()
    assert names == ["sdqkdn_application_new", "sdqkdn_application_qos_update",
                     "sdqkdn_application_disconnected"]


async def test_close_is_idempotent_and_marks_node_out(agent: SdnAgent) -> None:
    await agent.close()
    await agent.close()
    assert agent.get(ROOT_MEMBER)[ROOT_MEMBER]["qkdn_status"] == identity("OUT")
