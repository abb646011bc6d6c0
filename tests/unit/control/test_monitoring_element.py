"""Monitoring Element: latched alarms (hysteresis, hold times), the eavesdropper test, link
tests, figures persisted and reported at a bounded rate."""

from __future__ import annotations

import random

import pytest

from keyplane.bus import Bus, MemoryBus, Message, topics
from keyplane.clock import VirtualClock
from keyplane.config import Topology
from keyplane.control import MonitoringCore, MonitoringElement, MonitoringSettings, RoutingCore
from keyplane.control.monitoring import AlarmLatch, QberBaseline
from keyplane.control.wire import MONITORING_METRICS, LinkMetricsReport
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.messages import KmTelemetry, LinkAlarm, LinkState, LinkTelemetry
from keyplane.physical.wire import LinkCommand, LinkCommandReply, control_topic
from keyplane.store import Database
from keyplane.store.topology import get_link_metrics, load_topology_into
from tests.support.fake_kms import wait_until

WAIT_S = 60.0  # real-time bound on background work (generous: the machine may be busy)

# hold times off: the tests of the alarm rules themselves
INSTANT = dict(min_hold_s=0.0, clear_hold_s=0.0, link_down_min_hold_s=0.0,
               link_down_clear_hold_s=0.0)


def _tel(link: str = "a-e", *, qber: float | None = 0.02, skr: float = 1000.0,
         state: LinkState = LinkState.up, sifted: int = 0, block: int | None = None,
         ) -> LinkTelemetry:
    return LinkTelemetry(link_id=link, node="a", state=state, qber=qber, skr_bps=skr,
                         secret_bits=int(skr), sifted_bits=sifted, block_id=block)


def _kinds(alarms: list[LinkAlarm]) -> list[str]:
    return [a.kind for a in alarms]


# ---------------------------------------------------------------------------- latches


def test_alarm_latch_raises_at_once_and_clears_after_both_holds() -> None:
    latch = AlarmLatch()
    hold = dict(min_hold_s=30.0, clear_hold_s=10.0)
    assert latch.update(True, False, 0.0, **hold) == "raised"
    assert latch.update(False, True, 5.0, **hold) is None  # clear wait starts at 5
    assert latch.due(**hold) == 30.0
    assert latch.update(False, True, 25.0, **hold) is None  # 20 s clear, but up only 25 s
    assert latch.update(False, False, 26.0, **hold) is None  # a bad sample: wait restarts
    assert latch.update(False, True, 27.0, **hold) is None
    assert latch.update(False, True, 36.9, **hold) is None
    assert latch.update(False, True, 37.0, **hold) == "cleared"
    assert not latch.raised


# ---------------------------------------------------------------------------- core rules


def test_monitoring_qber_above_link_threshold_raises_then_clears_with_hysteresis(
        topology: Topology) -> None:
    core = MonitoringCore(topology, MonitoringSettings(qber_clear_margin=0.01, **INSTANT))
    assert core.on_link_telemetry(_tel(qber=0.03), 0.0) == []
    (alarm,) = core.on_link_telemetry(_tel(qber=0.25), 1.0)
    assert (alarm.link_id, alarm.kind, alarm.severity) == ("a-e", "qber_high", "MAJOR")
    assert "possible eavesdropper" in alarm.message and alarm.qber == 0.25
    assert alarm.active == ["qber_high"]
    assert core.on_link_telemetry(_tel(qber=0.105), 2.0) == []  # within the margin: held
    (cleared,) = core.on_link_telemetry(_tel(qber=0.05), 3.0)
    assert cleared.kind == "cleared" and cleared.active == []


def test_monitoring_alarm_is_held_while_the_clear_condition_is_young(
        topology: Topology) -> None:
    core = MonitoringCore(topology, MonitoringSettings(min_hold_s=30.0, clear_hold_s=10.0,
                                                       stale_after_s=100.0))
    assert _kinds(core.on_link_telemetry(_tel(qber=0.25), 0.0)) == ["qber_high"]
    assert core.on_link_telemetry(_tel(qber=0.02), 1.0) == []  # healthy, but held
    assert core.check(20.0) == []  # 19 s healthy, up only 20 s
    assert core.next_clear_due() == 30.0
    assert _kinds(core.check(30.0)) == ["cleared"]


def test_monitoring_key_rate_collapse_against_the_baseline(topology: Topology) -> None:
    core = MonitoringCore(topology, MonitoringSettings(skr_collapse_fraction=0.1,
                                                       skr_clear_fraction=0.5, **INSTANT))
    for t in range(5):
        assert core.on_link_telemetry(_tel(skr=2000.0), float(t)) == []
    (alarm,) = core.on_link_telemetry(_tel(skr=50.0), 5.0)
    assert alarm.kind == "key_rate_collapse" and alarm.skr_bps == 50.0
    assert core.on_link_telemetry(_tel(skr=500.0), 6.0) == []  # above 10 %, below 50 %
    assert _kinds(core.on_link_telemetry(_tel(skr=1900.0), 7.0)) == ["cleared"]


def test_monitoring_state_report_is_not_a_zero_rate(topology: Topology) -> None:
    """A link's state-change message carries no block; its zero SKR is not a collapse."""
    core = MonitoringCore(topology, MonitoringSettings(**INSTANT))
    for t in range(3):
        core.on_link_telemetry(_tel(skr=2000.0), float(t))
    state_only = LinkTelemetry(link_id="a-e", node="a", state=LinkState.up, t=3.0)
    assert core.on_link_telemetry(state_only, 3.0) == []
    assert core.links["a-e"].skr_bps == 2000.0


def test_monitoring_silent_link_is_declared_down_only_after_it_reported(
        topology: Topology) -> None:
    core = MonitoringCore(topology, MonitoringSettings(stale_after_s=10.0, **INSTANT))
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


def test_monitoring_no_alarm_flaps_under_a_constant_fault(topology: Topology) -> None:
    """60 s of a constant fault whose measurements wander across every threshold: one
    raise per kind, no clear until the fault is gone and the holds have passed."""
    rng = random.Random(1701)
    settings = MonitoringSettings()  # the default hold times
    core = MonitoringCore(topology, settings)
    out: list[LinkAlarm] = []
    t = 0.0
    for _ in range(20):  # healthy: baselines
        out += core.on_link_telemetry(_tel(qber=0.02, skr=2000.0), t)
        t += 0.5
    assert out == []
    fault_start = t
    while t < fault_start + 60.0:  # QBER about the 11 % threshold, rate about 10 %
        out += core.on_link_telemetry(
            _tel(qber=rng.uniform(0.095, 0.125), skr=rng.uniform(100.0, 400.0)), t)
        if rng.random() < 0.2:
            out += core.check(t)
        t += 0.5
    assert sorted(_kinds(out)) == ["key_rate_collapse", "qber_high"]
    fault_end, out = t, []
    while t < fault_end + 60.0:
        out += core.on_link_telemetry(_tel(qber=0.02, skr=2000.0), t) + core.check(t)
        t += 0.5
    (cleared,) = out
    assert cleared.kind == "cleared"
    assert cleared.t >= fault_end + settings.clear_hold_s


# ---------------------------------------------------------------------------- eavesdropper


def _blocks(rng: random.Random, qber: float, n_sample: int, count: int) -> list[float]:
    """Measured QBERs of ``count`` samples of ``n_sample`` bits at a true ``qber``."""
    return [sum(rng.random() < qber for _ in range(n_sample)) / n_sample for _ in range(count)]


def test_eavesdropper_25_percent_raises_on_the_first_block_and_routing_avoids_the_link(
        topology: Topology) -> None:
    rng = random.Random(25)
    core = MonitoringCore(topology, MonitoringSettings(**INSTANT))
    routing = RoutingCore.from_topology(topology)
    t = 0.0
    for q in _blocks(rng, 0.02, 2000, 6):  # 20,000 sifted bits, 10 % sampled
        assert core.on_link_telemetry(_tel(qber=q, sifted=20_000, block=int(t)), t) == []
        t += 1.0
    baseline = core.links["a-e"].qber_baseline.qber
    assert baseline is not None and 0.01 < baseline < 0.03
    (q_eve,) = _blocks(rng, 0.02 + 0.25 / 4, 2000, 1)  # 25 % intercept-resend
    assert q_eve < 0.11  # below the abort threshold: qber_high stays silent
    (alarm,) = core.on_link_telemetry(_tel(qber=q_eve, sifted=20_000, block=99), t)
    assert alarm.kind == "eavesdropper_suspected" and "standard errors" in alarm.message
    assert routing.apply_alarm(alarm) and not routing.usable("a-e")
    assert routing.compute_path("a", "d").nodes == ("a", "b", "c", "d")
    assert core.links["a-e"].qber_baseline.qber == baseline  # the attack is not learnt


def test_eavesdropper_test_has_no_false_alarm_on_a_healthy_link(topology: Topology) -> None:
    """1,500 healthy blocks of binomial noise, and a harmless 0.5 % drift: no alarm."""
    rng = random.Random(7)
    core = MonitoringCore(topology, MonitoringSettings(**INSTANT))
    out: list[LinkAlarm] = []
    for i, q in enumerate(_blocks(rng, 0.02, 1000, 1500)):
        out += core.on_link_telemetry(LinkTelemetry(link_id="a-e", node="a", qber=q,
                                                    qber_sample_bits=1000, block_id=i,
                                                    skr_bps=1000.0), float(i))
    for i, q in enumerate(_blocks(rng, 0.025, 1000, 200), start=1500):
        out += core.on_link_telemetry(LinkTelemetry(link_id="a-e", node="a", qber=q,
                                                    qber_sample_bits=1000, block_id=i,
                                                    skr_bps=1000.0), float(i))
    assert out == []


def test_eavesdropper_small_rise_is_caught_by_the_pooled_window() -> None:
    """A rise too small for one 1,000-bit block is significant over three pooled."""
    rng = random.Random(11)
    base = QberBaseline(window_blocks=3)
    for q in _blocks(rng, 0.02, 10_000, 20):
        base.learn(q, 10_000, 1.0)
    rule = dict(z_raise=5.0, z_clear=2.0, min_rise=0.01, min_blocks=3)
    verdicts = [base.judge(0.035, 1000, **rule) for _ in range(3)]
    assert [v.suspicious for v in verdicts] == [False, False, True]


def test_eavesdropper_test_waits_for_a_baseline(topology: Topology) -> None:
    core = MonitoringCore(topology, MonitoringSettings(baseline_min_blocks=3, **INSTANT))
    assert core.on_link_telemetry(_tel(qber=0.02, sifted=20_000, block=0), 0.0) == []
    assert core.on_link_telemetry(_tel(qber=0.08, sifted=20_000, block=1), 1.0) == []
    assert core.links["a-e"].verdict is not None
    assert not core.links["a-e"].verdict.armed


# ---------------------------------------------------------------------------- the element


async def test_monitoring_element_persists_and_reports_at_a_bounded_rate(
        topology: Topology, db: Database, clock: VirtualClock, events: EventStream) -> None:
    """On SQLite and PostgreSQL: 200 samples in one period are one row write per link and
    one report to the Routing Element, holding the latest figures."""
    await load_topology_into(db, topology)
    reports: list[LinkMetricsReport] = []

    async def on_report(_topic: str, msg: Message) -> None:
        assert isinstance(msg, LinkMetricsReport)
        reports.append(msg)

    async with MemoryBus() as bus:
        await bus.subscribe(MONITORING_METRICS, on_report)
        element = MonitoringElement(topology, bus, clock, events, db=db,
                                    settings=MonitoringSettings(persist_interval_s=1.0,
                                                                probe_interval_s=None))
        async with element:
            for i in range(200):
                await bus.publish(topics.link_telemetry("a-e"),
                                  _tel(qber=0.02, skr=1000.0 + i))
            await bus.publish(topics.km_telemetry("a"),
                              KmTelemetry(node="a", buffer_bits={"a-e": 7777},
                                          sessions={"a-e": 1}))
            assert await get_link_metrics(db) == {}  # nothing written per sample
            assert reports == []
            await clock.advance(1.0)
            await wait_until(lambda: reports, timeout_s=WAIT_S, what="report")
            (report,) = reports
            (fig,) = report.links
            assert (fig.link_id, fig.skr_bps, fig.buffer_bits, fig.sessions) == \
                ("a-e", 1199.0, 7777, 1)
            assert await element.flush() == []  # nothing changed since
        m = (await get_link_metrics(db))["a-e"]
        assert (m.skr_bps, m.qber, m.buffer_bits, m.sessions, m.state) == \
            (1199.0, 0.02, 7777, 1, "up")


async def test_monitoring_element_publishes_alarms_and_holds_them_on_the_clock(
        topology: Topology, bus: Bus, clock: VirtualClock, events: EventStream,
        sink: MemorySink) -> None:
    """On both buses: raise at once; the clear comes from the clock once the holds pass."""
    got: list[LinkAlarm] = []

    async def on_alarm(_topic: str, msg: Message) -> None:
        assert isinstance(msg, LinkAlarm)
        got.append(msg)

    await bus.subscribe(topics.alarm("b-c"), on_alarm)
    settings = MonitoringSettings(min_hold_s=33.0, clear_hold_s=10.0, check_interval_s=60.0,
                                  stale_after_s=100.0, probe_interval_s=None)
    async with MonitoringElement(topology, bus, clock, events, settings=settings) as element:
        await bus.publish(topics.link_telemetry("b-c"), _tel("b-c", qber=0.2))
        await wait_until(lambda: got, timeout_s=WAIT_S, what="alarm")
        await clock.advance(1.0)
        await bus.publish(topics.link_telemetry("b-c"), _tel("b-c", qber=0.02))
        # the clear's hold starts when the element has taken the good sample (over NATS
        # that is later than the publish): advance the clock only once it has
        await wait_until(lambda: element.core.links["b-c"].qber == 0.02, timeout_s=WAIT_S,
                         what="the good sample taken")
        await clock.advance(31.9)
        assert [a.kind for a in got] == ["qber_high"]
        await clock.advance(0.1)  # the wake-up at the pending clear, not the next check (60 s)
        await wait_until(lambda: len(got) == 2, timeout_s=WAIT_S, what="cleared")
    assert got[1].kind == "cleared" and got[1].t == 33.0
    kinds = [e.data["kind"] for e in sink.of_type(EventType.alarm)]
    assert kinds == ["qber_high", "cleared"]


async def test_monitoring_link_tests_declare_a_module_that_stops_answering_down(
        topology: Topology, clock: VirtualClock, events: EventStream) -> None:
    """A link whose module answered tests and then stops (its process died) is declared
    down after ``probe_failures_down`` tests; links nobody ever served are left alone."""
    answering = True

    async def module(_topic: str, msg: Message) -> Message | None:  # stands in for a-e's modules
        assert isinstance(msg, LinkCommand) and msg.action == "status"
        if not answering:
            return None  # alive on the bus, but its link loop is stuck: no answer
        return LinkCommandReply(link_id=msg.link_id, ok=True, state="up")

    settings = MonitoringSettings(probe_interval_s=10.0, probe_timeout_s=1.0,
                                  probe_failures_down=2, **INSTANT)
    async with MemoryBus() as bus:
        await bus.subscribe(control_topic("a-e"), module)
        element = MonitoringElement(topology, bus, clock, events, settings=settings)
        async with element:
            assert await element.test_links(["a-e", "b-c"]) == []
            assert element.core.links["a-e"].probe_answered
            assert not element.core.links["b-c"].probe_answered  # no responders
            answering = False
            assert await element.test_links(["a-e", "b-c"]) == []
            (down,) = await element.test_links(["a-e", "b-c"])
            assert down.kind == "link_down" and "did not answer 2 link tests" in down.message
            answering = True
            assert _kinds(await element.test_links(["a-e"])) == ["cleared"]


async def test_monitoring_link_test_answer_down_raises_once_the_link_was_up(
        topology: Topology, clock: VirtualClock, events: EventStream) -> None:
    states = ["down", "up", "down"]  # starting (its ends have not met yet), up, failed

    async def module(_topic: str, msg: Message) -> Message:
        assert isinstance(msg, LinkCommand)
        return LinkCommandReply(link_id=msg.link_id, ok=True, state=states.pop(0))  # type: ignore[arg-type]

    async with MemoryBus() as bus:
        await bus.subscribe(control_topic("a-e"), module)
        element = MonitoringElement(topology, bus, clock, events,
                                    settings=MonitoringSettings(probe_interval_s=None, **INSTANT))
        async with element:
            assert await element.test_links(["a-e"]) == []  # down while starting: no alarm
            assert await element.test_links(["a-e"]) == []
            (alarm,) = await element.test_links(["a-e"])
            assert alarm.kind == "link_down" and "report the link down" in alarm.message


def test_monitoring_starting_link_reporting_down_is_not_an_alarm(topology: Topology) -> None:
    """A link reports down until its two ends meet (e.g. while node processes start): not a
    fault until it has been up once; then a short hold, not the measured alarms' 30 s."""
    settings = MonitoringSettings(link_down_min_hold_s=5.0, link_down_clear_hold_s=2.0)
    core = MonitoringCore(topology, settings)
    assert core.on_link_telemetry(_tel(state=LinkState.down, qber=None), 0.0) == []
    assert core.on_link_telemetry(_tel(), 1.0) == []
    assert _kinds(core.on_link_telemetry(_tel(state=LinkState.down, qber=None), 2.0)) == \
        ["link_down"]
    assert core.on_link_telemetry(_tel(), 3.0) == []  # back up: cleared after the holds
    assert core.check(6.9) == []
    assert _kinds(core.check(7.0)) == ["cleared"]


def test_monitoring_starting_link_is_reported_starting_and_routing_keeps_it(
        topology: Topology) -> None:
    core = MonitoringCore(topology)
    routing = RoutingCore.from_topology(topology)
    core.on_link_telemetry(LinkTelemetry(link_id="a-e", node="a", state=LinkState.down), 0.0)
    (m,) = core.take_changed()
    assert m.state == "starting"
    routing.update_metrics({m.link_id: m})
    assert routing.has_qkd_key("a-e") and routing.compute_path("a", "d").nodes == ("a", "e", "d")
    core.on_link_telemetry(_tel(), 1.0)
    core.on_link_telemetry(_tel(state=LinkState.down, qber=None), 2.0)
    (m,) = core.take_changed()
    assert m.state == "down"
    routing.update_metrics({m.link_id: m})
    assert not routing.has_qkd_key("a-e")


def test_monitoring_sample_size_without_the_twin_for_an_auto_or_fixed_bias(
        topology: Topology) -> None:
    """A report without its QBER sample size is judged on the test bits its link's basis
    bias leaves: for ``auto`` (the twin's pick, unknown here) the fewest auto can leave."""
    link = topology.links[0]
    assert link.postprocessing.z_basis_probability == "auto"  # the default
    core = MonitoringCore(topology, MonitoringSettings(**INSTANT))
    assert core.links[link.link_id].test_ratio == pytest.approx((0.15 / 0.85) ** 2)
    fixed = topology.model_copy(update={"links": [link.model_copy(update={
        "postprocessing": link.postprocessing.model_copy(
            update={"z_basis_probability": 0.5})})]})
    assert MonitoringCore(fixed).links[link.link_id].test_ratio == pytest.approx(1.0)
