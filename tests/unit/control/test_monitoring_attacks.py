"""The Monitoring Element against real emulated links, on the virtual clock: a 25 %
intercept-resend eavesdropper is flagged within 5 s of clock time and Routing avoids the
link; a constant fault holds one alarm for as long as it lasts.

The links are the twin's own (:class:`~keyplane.physical.LinkRunner`, telemetry and link
tests over the bus); only the repetition rate is scaled down (10 MHz, with 100,000-bit
blocks: the smallest that leave key under the finite-key bound at 10 km) so that a minute
of clock time costs seconds of CPU. Clock time is what the 5 s is measured in:
the result does not depend on how busy the machine is.
"""

from __future__ import annotations

import pytest

from keyplane.bus import MemoryBus
from keyplane.clock import VirtualClock
from keyplane.config import Eavesdropper, Topology, parse_topology
from keyplane.control import MonitoringElement, MonitoringSettings, RoutingElement
from keyplane.events import Event, EventStream, EventType, MemorySink
from keyplane.physical import LinkRunner, MemoryKeySink
from tests.support.deadlines import DEADLINE_S
from tests.support.fake_kms import wait_until

WAIT_S = DEADLINE_S  # real-time bound on background work (KEYPLANE_TEST_DEADLINE_S)
DETECT_WITHIN_S = 5.0  # issue #17, "Done when"

# a-e-d is the shortest a→d path; a-b-c-d the detour (tests/support/control.py's shape)
TOPOLOGY = """
version: 1
name: attack-test
nodes: [{{id: a}}, {{id: b}}, {{id: c}}, {{id: d}}, {{id: e}}]
links:
  - {{endpoints: [a, b], length_km: 10}}
  - {{endpoints: [b, c], length_km: 10}}
  - {{endpoints: [c, d], length_km: 10}}
  - {{endpoints: [a, e], length_km: 10, protocol: {protocol}, repetition_rate_hz: 1.0e7,
     postprocessing: {{block_size_bits: 100000}}}}
  - {{endpoints: [e, d], length_km: 10}}
"""

# an analytic link reports its expected QBER every frame, on the test sample the emulated
# protocol would have had (analytic_stream.analytic_qber_sample): both modes are judged alike
MODES = ["bb84-decoy", "analytic"]


def _topology(protocol: str) -> Topology:
    return parse_topology(TOPOLOGY.format(protocol=protocol), "attack-test")


def _alarms(sink: MemorySink, kind: str | None = None) -> list[Event]:
    return [e for e in sink.of_type(EventType.alarm)
            if e.element == "monitoring" and (kind is None or e.data["kind"] == kind)]


async def _run_until(clock: VirtualClock, runner: LinkRunner, until_s: float,
                     done: object = None) -> None:
    """Advance the clock frame by frame up to ``until_s`` (or until ``done()`` holds)."""
    while clock.now() < until_s:
        await clock.advance(min(runner.frame_duration_s, until_s - clock.now()))
        if callable(done) and done():
            return


@pytest.mark.parametrize("protocol", MODES)
async def test_eavesdropper_25_percent_is_flagged_within_5_s_and_routing_avoids_the_link(
        protocol: str) -> None:
    topology = _topology(protocol)
    clock = VirtualClock()
    sink = MemorySink()
    events = EventStream(clock, [sink])
    link = next(lk for lk in topology.links if lk.link_id == "a-e")
    async with MemoryBus() as bus, \
            LinkRunner(link, clock=clock, seed=25, alice_sink=MemoryKeySink(),
                       bob_sink=MemoryKeySink(), bus=bus, events=events) as runner, \
            MonitoringElement(topology, bus, clock, events,
                              settings=MonitoringSettings(probe_interval_s=5.0)) as monitoring, \
            RoutingElement(topology, bus, clock, events) as routing:
        await _run_until(clock, runner, 20.0)  # healthy: the link's own baseline
        health = monitoring.core.links["a-e"]
        assert health.verdict is not None and health.verdict.armed
        assert health.probe_answered  # the link tests reach the twin's modules
        assert _alarms(sink) == []
        assert routing.core.compute_path("a", "d").nodes == ("a", "e", "d")

        t_eve = clock.now()
        runner.set_eavesdropper(Eavesdropper(position_km=5.0, fraction=0.25))
        await _run_until(clock, runner, t_eve + DETECT_WITHIN_S,
                         lambda: _alarms(sink, "eavesdropper_suspected"))
        (alarm,) = _alarms(sink, "eavesdropper_suspected")
        assert alarm.t - t_eve <= DETECT_WITHIN_S
        assert alarm.data["qber"] < link.postprocessing.qber_threshold  # below abort
        assert not _alarms(sink, "qber_high")
        await wait_until(lambda: not routing.core.usable("a-e"), timeout_s=WAIT_S,
                         what="routing takes the link out")
        assert routing.core.compute_path("a", "d").nodes == ("a", "b", "c", "d")


async def test_constant_attack_holds_one_alarm_and_clears_once_after_it_ends() -> None:
    """60 s of a constant 25 % attack on an emulated link: one raise of each kind it
    causes, no clear while it lasts; one clear after it ends."""
    topology = _topology("bb84-decoy")
    clock = VirtualClock()
    sink = MemorySink()
    events = EventStream(clock, [sink])
    link = next(lk for lk in topology.links if lk.link_id == "a-e")
    settings = MonitoringSettings(probe_interval_s=5.0)
    async with MemoryBus() as bus, \
            LinkRunner(link, clock=clock, seed=60, alice_sink=MemoryKeySink(),
                       bob_sink=MemoryKeySink(), bus=bus, events=events) as runner, \
            MonitoringElement(topology, bus, clock, events, settings=settings):
        await _run_until(clock, runner, 20.0)
        runner.set_eavesdropper(Eavesdropper(position_km=5.0, fraction=0.25))
        await _run_until(clock, runner, 80.0)
        during = [e.data["kind"] for e in _alarms(sink)]
        assert "eavesdropper_suspected" in during
        assert "cleared" not in during
        assert len(during) == len(set(during))  # each kind raised once
        runner.set_eavesdropper(None)
        t_off = clock.now()
        await _run_until(clock, runner, t_off + 60.0)
        after = [e for e in _alarms(sink) if e.t >= t_off]
        assert [e.data["kind"] for e in after] == ["cleared"]
        assert after[0].t - t_off >= settings.clear_hold_s
