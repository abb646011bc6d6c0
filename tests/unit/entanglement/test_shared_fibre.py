"""Shared fibre time between key streams and entanglement (issue #19, wave 4).

A fibre that carries both a QKD link and an elementary entanglement link is time-divided:
per period the key streams keep the share their reservations need, the scheduler books
entanglement only in the rest, and what the schedule books lowers the key capacity the
Routing Element sees. Property: no slot of any fibre is ever given twice (two demands, or a
demand and the key streams), however the schedule is re-planned."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.config import parse_topology
from keyplane.control.entanglement import EntanglementScheduler, SchedulerSettings
from keyplane.control.entanglement.executor import EntanglementEngine
from keyplane.control.routing import RoutingCore
from keyplane.control.settings import RoutingSettings
from tests.unit.entanglement.test_scheduler import demand, grid, nodes3

SLOT_S = 0.005
PERIOD = 40


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(nodes3), st.sampled_from(nodes3),
                          st.integers(1, 30), st.integers(1, 2), st.floats(0.6, 0.85),
                          st.floats(0.05, 3.0), st.integers(0, 7)),
                min_size=1, max_size=12),
       st.dictionaries(st.integers(0, 11), st.floats(0.0, 1.0), max_size=6),
       st.lists(st.tuples(st.integers(0, 11), st.floats(0.0, 1.0)), max_size=4))
def test_no_fibre_slot_is_booked_twice(reqs, shares, changes) -> None:  # type: ignore[no-untyped-def]
    net = grid(3, memories=4)
    link_ids = sorted(net.links)
    net.shared = frozenset(link_ids[i] for i in shares)
    net.key_share.update({link_ids[i]: v for i, v in shares.items()})
    engine = EntanglementEngine(EntanglementScheduler(
        net, SchedulerSettings(slot_s=SLOT_S, period_slots=PERIOD)), seed=7,
        keep_schedules=True)
    pending = sorted(((0.013 * i, r) for i, r in enumerate(reqs)), key=lambda x: -x[0])
    keyed = {step: change for step, change in enumerate(changes)}
    given_to: dict[tuple[str, int], str] = {}  # (link, absolute slot) -> who holds it
    for step in range(6 * PERIOD):
        now = step * SLOT_S
        while pending and pending[-1][0] <= now:
            t, (a, b, packets, size, fid, deadline, prio) = pending.pop()
            if a != b:
                engine.submit(demand(f"d{t:.3f}", a, b, packets=packets, packet_size=size,
                                     min_fidelity=fid, deadline_s=deadline, priority=prio), now)
        if step % 17 == 0 and (change := keyed.get(step // 17)) is not None:
            lid = link_ids[change[0]]  # the key streams' needs change mid-period
            if lid in net.shared:
                net.key_share[lid] = change[1]
        engine.step(now)
        sched = engine.current_schedule
        assert sched is not None
        index = engine._slot - 1
        k = math.floor(now / SLOT_S + 0.5)
        for booking in sched.slots[index]:
            for lid in booking.links:
                assert (lid, k) not in given_to, (lid, k)  # never twice to entanglement
                given_to[(lid, k)] = booking.demand_id
                if lid in net.shared:  # and never in a slot the key streams hold
                    window = net.entanglement_window(lid, PERIOD)
                    assert k % PERIOD < window, (lid, k, window, net.key_share[lid])


def test_key_share_caps_entanglement_and_entanglement_lowers_key_capacity() -> None:
    net = grid(2, memories=4)
    lid = "r0_0-r0_1"
    net.shared = frozenset({lid})
    assert net.entanglement_window(lid, 100) == 100
    net.key_share[lid] = 0.3
    assert net.entanglement_window(lid, 100) == 70
    sched = EntanglementScheduler(net, SchedulerSettings(slot_s=0.01, period_slots=100))
    sched.submit(demand("d", "r0_0", "r0_1", packets=100_000, deadline_s=1e4), 0.0)
    s = sched.schedule(0.0)
    booked = [i for i, slot in enumerate(s.slots) if any(lid in b.links for b in slot)]
    assert booked == list(range(70))  # the leading 70 % of the period, the rest is keys'
    # Routing: the key capacity of the fibre is what the entanglement schedule leaves
    topo = parse_topology("nodes: [{id: a}, {id: b}]\n"
                          "links: [{id: a-b, endpoints: [a, b], length_km: 10}]\n")
    core = RoutingCore.from_topology(topo, RoutingSettings(link_capacity_bps={"a-b": 1000.0}))
    core.route_and_reserve("s1", 0, "a", "b", 300.0)
    assert core.key_share("a-b") == 0.3
    core.set_fibre_taken("a-b", 0.7)
    assert math.isclose(core.capacity_bps("a-b"), 300.0)
    assert math.isclose(core.key_share("a-b"), 0.3)  # shares stay relative to full time
    core.set_fibre_taken("a-b", 0.0)
    assert core.capacity_bps("a-b") == 1000.0
