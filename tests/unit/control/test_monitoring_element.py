"""Monitoring Element: telemetry into the topology database; QBER, SKR and silence alarms."""

from __future__ import annotations

import asyncio

from keyplane.bus import Bus, MemoryBus, Message, topics
from keyplane.clock import VirtualClock
from keyplane.config import Topology
from keyplane.control import MonitoringCore, MonitoringElement, MonitoringSettings
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.messages import KmTelemetry, LinkAlarm, LinkState, LinkTelemetry
from keyplane.store import Database
from keyplane.store.topology import LinkMetrics, get_link_metrics, load_topology_into
from tests.support.fake_kms import wait_until


def _tel(link: str = "a-e", *, qber: float | None = 0.02, skr: float = 1000.0,
         state: LinkState = LinkState.up) -> LinkTelemetry:
    return LinkTelemetry(link_id=link, node="a", state=state, qber=qber, skr_bps=skr,
                         secret_bits=int(skr))


def test_monitoring_qber_above_link_threshold_raises_then_clears_with_hysteresis(
        topology: Topology) -> None:
    core = MonitoringCore(topology, MonitoringSettings(qber_clear_margin=0.01))
    assert core.on_link_telemetry(_tel(qber=0.03), 0.0) == []
    (alarm,) = core.on_link_telemetry(_tel(qber=0.25), 1.0)
    assert (alarm.link_id, alarm.kind, alarm.severity) == ("a-e", "qber_high", "MAJOR")
    assert "possible eavesdropper" in alarm.message and alarm.qber == 0.25
    assert core.on_link_telemetry(_tel(qber=0.105), 2.0) == []  # within the margin: held
    (cleared,) = core.on_link_telemetry(_tel(qber=0.05), 3.0)
    assert cleared.kind == "cleared"


def test_monitoring_key_rate_collapse_against_the_baseline(topology: Topology) -> None:
    core = MonitoringCore(topology, MonitoringSettings(skr_collapse_fraction=0.1))
    for t in range(5):
        assert core.on_link_telemetry(_tel(skr=2000.0), float(t)) == []
    (alarm,) = core.on_link_telemetry(_tel(skr=50.0), 5.0)
    assert alarm.kind == "key_rate_collapse" and alarm.skr_bps == 50.0
    assert [a.kind for a in core.on_link_telemetry(_tel(skr=1900.0), 6.0)] == ["cleared"]


def test_monitoring_silent_link_is_declared_down_only_after_it_reported(
        topology: Topology) -> None:
    core = MonitoringCore(topology, MonitoringSettings(stale_after_s=10.0))
    assert core.check(100.0) == []  # never reported: not down
    core.on_link_telemetry(_tel(), 100.0)
    assert core.check(109.0) == []
    (alarm,) = core.check(111.0)
    assert alarm.kind == "link_down" and "no telemetry" in alarm.message
    assert [a.kind for a in core.on_link_telemetry(_tel(), 112.0)] == ["cleared"]
    (down,) = core.on_link_telemetry(_tel(state=LinkState.down), 113.0)
    assert down.kind == "link_down" and "report the link down" in down.message


def test_monitoring_km_telemetry_takes_lowest_buffer_and_highest_sessions(
        topology: Topology) -> None:
    core = MonitoringCore(topology)
    core.on_km_telemetry(KmTelemetry(node="a", buffer_bits={"a-e": 9000, "zz": 1},
                                     sessions={"a-e": 1}))
    assert core.on_km_telemetry(KmTelemetry(node="e", buffer_bits={"a-e": 4000},
                                            sessions={"a-e": 2})) == ["a-e"]
    m = core.links["a-e"].metrics()
    assert (m.buffer_bits, m.sessions) == (4000, 2)


async def test_monitoring_element_writes_metrics_and_publishes_alarms(
        topology: Topology, db: Database, clock: VirtualClock, events: EventStream,
        sink: MemorySink) -> None:
    """On SQLite and PostgreSQL."""
    await load_topology_into(db, topology)
    alarms: list[LinkAlarm] = []

    async def on_alarm(topic: str, msg: Message) -> None:
        assert topic == topics.alarm("a-e") and isinstance(msg, LinkAlarm)
        alarms.append(msg)

    async with MemoryBus() as bus:
        await bus.subscribe(topics.alarm("*"), on_alarm)
        async with MonitoringElement(topology, bus, clock, events, db=db,
                                     settings=MonitoringSettings(check_interval_s=5.0,
                                                                 stale_after_s=12.0)):
            await bus.publish(topics.link_telemetry("a-e"), _tel(qber=0.021, skr=1500.0))
            await bus.publish(topics.km_telemetry("a"),
                              KmTelemetry(node="a", buffer_bits={"a-e": 7777},
                                          sessions={"a-e": 1}))
            metrics: dict[str, LinkMetrics] = {}
            for _ in range(500):  # real-time poll: the writes are database I/O
                metrics = await get_link_metrics(db)
                m = metrics.get("a-e")
                if m is not None and m.buffer_bits == 7777 and m.skr_bps == 1500.0:
                    break
                await asyncio.sleep(0.01)
            m = metrics["a-e"]
            assert (m.qber, m.sessions, m.state) == (0.021, 1, "up")
            await bus.publish(topics.link_telemetry("a-e"), _tel(qber=0.27, skr=0.0))
            await wait_until(lambda: [a.kind for a in alarms] == ["key_rate_collapse",
                                                                    "qber_high"],
                             what="alarms")
            await clock.advance(15.0)  # periodic test: silent for > 12 s
            await wait_until(lambda: alarms[-1].kind == "link_down", what="link down")
            kinds = [e.data["kind"] for e in sink.of_type(EventType.alarm)]
            assert kinds == ["key_rate_collapse", "qber_high", "link_down"]


async def test_monitoring_element_follows_telemetry_on_both_buses(
        topology: Topology, bus: Bus, clock: VirtualClock, events: EventStream) -> None:
    got: list[LinkAlarm] = []

    async def on_alarm(_topic: str, msg: Message) -> None:
        assert isinstance(msg, LinkAlarm)
        got.append(msg)

    await bus.subscribe(topics.alarm("b-c"), on_alarm)
    async with MonitoringElement(topology, bus, clock, events):
        await bus.publish(topics.link_telemetry("b-c"), _tel("b-c", qber=0.2))
        await wait_until(lambda: got, what="alarm")
    assert got[0].kind == "qber_high" and got[0].link_id == "b-c"
