"""The entanglement scheduler: conflict-free schedules, admission, fidelity and deadlines."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.control.entanglement import (
    Admitted,
    DemandState,
    EntanglementDemand,
    EntanglementLink,
    EntanglementNetwork,
    EntanglementScheduler,
    Refused,
    SchedulerSettings,
)
from keyplane.control.entanglement.executor import EntanglementEngine
from keyplane.physical.repeater import ElementaryLink


def grid(n: int, *, length_km: float = 20.0, memories: int = 4,
         coherence_time_s: float = 1.0) -> EntanglementNetwork:
    """An n x n grid of repeater nodes r<i>_<j>, every edge an entanglement link."""
    net = EntanglementNetwork(coherence_time_s=coherence_time_s)
    for i, j in itertools.product(range(n), repeat=2):
        net.memories[f"r{i}_{j}"] = memories
        for di, dj in ((0, 1), (1, 0)):
            if i + di < n and j + dj < n:
                a, b = f"r{i}_{j}", f"r{i + di}_{j + dj}"
                lid = f"{a}-{b}"
                net.links[lid] = EntanglementLink(lid, a, b, ElementaryLink(length_km))
    return net


def demand(did: str, a: str, b: str, **kw: object) -> EntanglementDemand:
    return EntanglementDemand(demand_id=did, node_a=a, node_b=b, **kw)  # type: ignore[arg-type]


nodes3 = [f"r{i}_{j}" for i in range(3) for j in range(3)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(nodes3), st.sampled_from(nodes3),
                          st.integers(1, 20), st.integers(1, 3), st.floats(0.6, 0.9),
                          st.floats(0.05, 5.0), st.integers(0, 7)),
                min_size=1, max_size=25),
       st.integers(1, 6))
def test_no_resource_is_ever_booked_beyond_its_capacity(reqs, memories) -> None:  # type: ignore[no-untyped-def]
    net = grid(3, memories=memories)
    sched = EntanglementScheduler(net, SchedulerSettings(slot_s=0.005, period_slots=200))
    for i, (a, b, packets, size, fid, deadline, prio) in enumerate(reqs):
        if a == b:
            continue
        sched.submit(demand(f"d{i}", a, b, packets=packets, packet_size=size, min_fidelity=fid,
                            deadline_s=deadline, priority=prio), now=0.01 * i)
    s = sched.schedule(now=1.0)
    for _, links, mem in s.usage():
        assert all(n == 1 for n in links.values()), links
        assert all(mem[n] <= net.memories[n] for n in mem), mem
    for plan in sched.live.values():  # every admitted plan reaches its fidelity
        assert plan.packet_fidelity >= plan.demand.min_fidelity
        assert all(n <= net.memories[node] for node, n in plan.memories().items())


def test_refusals_say_why_and_reserve_nothing() -> None:
    net = grid(3, memories=2)
    sched = EntanglementScheduler(net)
    (r,) = sched.submit(demand("far", "r0_0", "r2_2", min_fidelity=0.99), 0.0)
    assert isinstance(r, Refused) and "fidelity" in r.reason
    (r,) = sched.submit(demand("big", "r0_0", "r0_1", packet_size=3), 0.0)
    assert isinstance(r, Refused) and "memories" in r.reason
    (r,) = sched.submit(demand("nowhere", "r0_0", "x9"), 0.0)
    assert isinstance(r, Refused) and "x9" in r.reason
    net.down.update({"r0_0-r0_1", "r0_0-r1_0"})
    (r,) = sched.submit(demand("cut", "r0_0", "r2_2"), 0.0)
    assert isinstance(r, Refused)
    assert sched.live == {}


def test_a_demand_that_would_make_itself_or_others_late_is_refused() -> None:
    def line_sched() -> EntanglementScheduler:
        net = grid(2, length_km=40.0)
        net.down.update({"r0_0-r1_0", "r0_1-r1_1"})  # one path only: r0_0 - r0_1
        return EntanglementScheduler(net, SchedulerSettings(slot_s=0.01))

    (probe,) = line_sched().submit(demand("p", "r0_0", "r0_1", packets=400,
                                          deadline_s=60.0), 0.0)
    assert isinstance(probe, Admitted)
    need = probe.expected_finish_t
    sched = line_sched()
    (a,) = sched.submit(demand("a", "r0_0", "r0_1", packets=400, deadline_s=need * 1.2), 0.0)
    assert isinstance(a, Admitted)
    # earlier deadline: EDF would serve it first and push "a" past its deadline
    (b,) = sched.submit(demand("b", "r0_0", "r0_1", packets=400, deadline_s=need * 1.1), 0.0)
    assert isinstance(b, Refused) and "a" in b.reason
    # too tight for itself behind "a"
    (c,) = sched.submit(demand("c", "r0_0", "r0_1", packets=400, deadline_s=need * 1.9), 0.0)
    assert isinstance(c, Refused) and "deadline" in c.reason
    (d,) = sched.submit(demand("d", "r0_0", "r0_1", packets=400, deadline_s=need * 2.5), 0.0)
    assert isinstance(d, Admitted) and d.expected_finish_t > need * 1.9
    assert set(sched.live) == {"a", "d"}


def test_engine_serves_a_test_set_within_fidelity_and_deadline() -> None:
    net = grid(3, memories=4, coherence_time_s=0.5)
    engine = EntanglementEngine(EntanglementScheduler(net, SchedulerSettings(slot_s=0.005)),
                                seed=3)
    arrivals = [
        (0.00, demand("d0", "r0_0", "r2_2", packets=20, min_fidelity=0.8, deadline_s=4.0)),
        (0.01, demand("d1", "r0_2", "r2_0", packets=10, packet_size=2, min_fidelity=0.75,
                      deadline_s=4.0, priority=5)),
        (0.20, demand("d2", "r1_0", "r1_2", packets=40, min_fidelity=0.85, deadline_s=3.0)),
        (0.30, demand("d3", "r0_0", "r0_1", packets=60, min_fidelity=0.9, deadline_s=2.0)),
        (0.40, demand("d4", "r2_1", "r0_1", packets=5, packet_size=3, min_fidelity=0.7,
                      deadline_s=5.0)),
    ]
    t, slot, pending = 0.0, 0.005, list(arrivals)
    while t < 6.0:
        while pending and pending[0][0] <= t:
            engine.submit(pending.pop(0)[1], t)
        engine.step(t)
        t += slot
    rep = engine.report
    assert set(rep.admitted) == {"d0", "d1", "d2", "d3", "d4"}, rep.refused
    for did, plan in rep.admitted.items():
        outcome = rep.outcomes[did]
        assert outcome.state is DemandState.served, (did, outcome)
        assert rep.finished_t[did] <= plan.deadline_t + 1e-9
        pairs = rep.pairs[did]
        assert len(pairs) == plan.demand.packets * plan.demand.packet_size
        assert len({p.eid for p in pairs}) == len(pairs)
        assert all(p.fidelity >= plan.demand.min_fidelity for p in pairs)
        assert all(p.node_a == plan.demand.node_a and p.node_b == plan.demand.node_b
                   for p in pairs)


def test_a_demand_past_its_deadline_is_missed_and_frees_its_resources() -> None:
    net = grid(2)
    sched = EntanglementScheduler(net)
    (adm,) = sched.submit(demand("d", "r0_0", "r0_1", packets=5, deadline_s=1.0), 0.0)
    assert isinstance(adm, Admitted)
    (fin,) = sched.expire(1.0)
    assert fin.outcome.state is DemandState.missed
    assert sched.live == {} and sched.schedule(1.0).slots[0] == ()
