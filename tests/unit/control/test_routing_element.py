"""Routing Element: weights, capacity, reroute planning; generative and property tests."""

from __future__ import annotations

import contextlib
import math

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.clock import VirtualClock
from keyplane.config import Topology
from keyplane.control import (
    MetricWeight,
    NoRoute,
    RoutingCore,
    RoutingElement,
    RoutingSettings,
    hop_weight,
)
from keyplane.events import EventStream
from keyplane.messages import LinkAlarm
from keyplane.store import Database
from keyplane.store.topology import LinkMetrics, load_topology_into, upsert_link_metrics
from tests.support.fake_kms import wait_until

MAX_ATLAS_GRAPHS = 300


def _core_from_graph(g: nx.Graph, settings: RoutingSettings | None = None) -> RoutingCore:
    core = RoutingCore(settings)
    for n in g.nodes:
        core.add_node(f"n{n}")
    for u, v in g.edges:
        core.add_link(f"l{u}-{v}", f"n{u}", f"n{v}")
    return core


def test_routing_without_metrics_takes_fewest_hops(topology: Topology) -> None:
    core = RoutingCore.from_topology(topology)
    route = core.compute_path("a", "d")
    assert route.nodes == ("a", "e", "d") and route.links == ("a-e", "e-d")
    assert route.cost == 2.0


def test_routing_metrics_change_the_chosen_path(topology: Topology) -> None:
    core = RoutingCore.from_topology(topology)
    core.set_metrics({
        "a-e": LinkMetrics("a-e", t=1.0, skr_bps=50.0, qber=0.04, buffer_bits=0),
        "e-d": LinkMetrics("e-d", t=1.0, skr_bps=5000.0, qber=0.01, buffer_bits=10**6),
        **{lid: LinkMetrics(lid, t=1.0, skr_bps=5000.0, qber=0.01, buffer_bits=10**6)
           for lid in ("a-b", "b-c", "c-d")},
    })
    assert core.weight("a-e") > 3 * core.weight("a-b")
    assert core.compute_path("a", "d").nodes == ("a", "b", "c", "d")


def test_routing_hops_mode_ignores_metrics(topology: Topology) -> None:
    core = RoutingCore.from_topology(topology, RoutingSettings(weight="hops",
                                                              use_skr_as_capacity=False))
    core.set_metrics({"a-e": LinkMetrics("a-e", skr_bps=1.0, qber=0.2)})
    assert core.compute_path("a", "d").nodes == ("a", "e", "d")


def test_routing_custom_weight_function_is_used(topology: Topology) -> None:
    def by_qber(m: LinkMetrics | None) -> float:
        return 1.0 + 100 * (m.qber or 0.0) if m else 1.0

    core = RoutingCore.from_topology(topology, weight_fn=by_qber)
    core.set_metrics({"e-d": LinkMetrics("e-d", qber=0.05)})
    assert core.compute_path("a", "d").nodes == ("a", "b", "c", "d")


def test_metric_weight_grows_with_each_figure() -> None:
    w = MetricWeight()
    base = LinkMetrics("l", t=1.0, skr_bps=1000.0, qber=0.01, sessions=0, buffer_bits=10**5)
    assert w(None) == 1.0 == hop_weight(base)
    for worse in (LinkMetrics("l", t=1.0, skr_bps=100.0, qber=0.01, buffer_bits=10**5),
                  LinkMetrics("l", t=1.0, skr_bps=1000.0, qber=0.05, buffer_bits=10**5),
                  LinkMetrics("l", t=1.0, skr_bps=1000.0, qber=0.01, sessions=3,
                              buffer_bits=10**5),
                  LinkMetrics("l", t=1.0, skr_bps=1000.0, qber=0.01, buffer_bits=10**3)):
        assert w(worse) > w(base)


def test_routing_skr_is_the_capacity_and_full_links_are_avoided(topology: Topology) -> None:
    core = RoutingCore.from_topology(topology)
    core.set_metrics({lid: LinkMetrics(lid, skr_bps=1000.0) for lid in
                      ("a-b", "b-c", "c-d", "a-e", "e-d")})
    first = core.route_and_reserve("s1", 0, "a", "d", 700)
    second = core.route_and_reserve("s2", 0, "a", "d", 700)
    assert first.route.nodes == ("a", "e", "d") and second.route.nodes == ("a", "b", "c", "d")
    with pytest.raises(NoRoute):
        core.route_and_reserve("s3", 0, "a", "d", 700)
    assert core.reserved_bps("a-e") == 700 and core.capacity_bps("a-e") == 1000
    core.release("s1")
    assert core.route_and_reserve("s3", 0, "a", "d", 700).route.nodes == ("a", "e", "d")


def test_routing_unknown_or_identical_endpoints_raise_no_route(topology: Topology) -> None:
    core = RoutingCore.from_topology(topology)
    with pytest.raises(NoRoute, match="unknown node"):
        core.compute_path("a", "zz")
    with pytest.raises(NoRoute, match="same node"):
        core.compute_path("a", "a")


def test_routing_alarm_takes_link_out_and_cleared_brings_it_back(topology: Topology) -> None:
    core = RoutingCore.from_topology(topology)
    core.route_and_reserve("s1", 0, "a", "d", 0)
    assert core.apply_alarm(LinkAlarm(link_id="a-e", kind="qber_high", qber=0.2))
    assert not core.apply_alarm(LinkAlarm(link_id="a-e", kind="link_down"))  # already out
    assert [r.session_id for r in core.affected_by("a-e")] == ["s1"]
    new = core.plan_reroute(core.affected_by("a-e")[0])
    assert new.epoch == 1 and new.route.nodes == ("a", "b", "c", "d")
    assert core.current("s1") == new
    core.apply_alarm(LinkAlarm(link_id="a-e", kind="cleared"))
    assert core.compute_path("a", "d").nodes == ("a", "e", "d")


def test_routing_reroute_counts_a_session_once_on_shared_links() -> None:
    g = nx.Graph()  # (networkx 3.2's Graph(edges) warns when pandas is absent)
    g.add_edges_from([(0, 1), (1, 2), (2, 3), (1, 3)])
    core = _core_from_graph(g, RoutingSettings(default_capacity_bps=1000))
    res = core.reserve("s", 0, core.compute_path("n0", "n3", 800), 800)
    assert res.route.nodes == ("n0", "n1", "n3")
    core.apply_alarm(LinkAlarm(link_id="l1-3", kind="link_down"))
    new = core.plan_reroute(res)  # n0-n1 is shared with the old epoch: still 800 of 1000
    assert new.route.nodes == ("n0", "n1", "n2", "n3")
    assert core.reserved_bps("l0-1") == 800
    core.release("s", 0)
    assert core.reserved_bps("l0-1") == 800 and core.reserved_bps("l1-3") == 0


def test_routing_graph_atlas_paths_are_shortest_and_avoid_failed_links() -> None:
    """Every connected graph of up to 7 nodes (capped), every pair (faucet-style)."""
    checked = 0
    for g in nx.graph_atlas_g()[1:]:
        if checked >= MAX_ATLAS_GRAPHS:
            break
        if g.number_of_nodes() < 2 or not nx.is_connected(g):
            continue
        checked += 1
        core = _core_from_graph(g)
        nodes = sorted(g.nodes)
        bridges = {frozenset(e) for e in nx.bridges(g)}
        for i, u in enumerate(nodes):
            for v in nodes[i + 1:]:
                route = core.compute_path(f"n{u}", f"n{v}")
                assert len(route.links) == nx.shortest_path_length(g, u, v)
                assert route.nodes[0] == f"n{u}" and route.nodes[-1] == f"n{v}"
                assert len(set(route.nodes)) == len(route.nodes)  # loop-free
        # take one link out: paths avoid it; a bridge leaves some pair unreachable
        u, v = next(iter(g.edges))
        core.apply_alarm(LinkAlarm(link_id=f"l{u}-{v}", kind="link_down"))
        h = g.copy()
        h.remove_edge(u, v)
        for a in nodes:
            for b in nodes:
                if a >= b:
                    continue
                if nx.has_path(h, a, b):
                    route = core.compute_path(f"n{a}", f"n{b}")
                    assert f"l{u}-{v}" not in route.links
                    assert len(route.links) == nx.shortest_path_length(h, a, b)
                else:
                    assert frozenset((u, v)) in bridges
                    with pytest.raises(NoRoute):
                        core.compute_path(f"n{a}", f"n{b}")
    assert checked == MAX_ATLAS_GRAPHS


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6),
       ops=st.lists(st.tuples(st.sampled_from(["reserve", "release", "reroute"]),
                              st.integers(0, 7), st.integers(0, 7), st.integers(1, 900)),
                    max_size=40))
def test_routing_reserved_rate_never_exceeds_capacity(seed: int,
                                                      ops: list[tuple[str, int, int, int]]
                                                      ) -> None:
    g = nx.connected_watts_strogatz_graph(8, 3, 0.4, seed=seed)
    caps = {f"l{u}-{v}": 500.0 + (seed + 97 * i) % 1500 for i, (u, v) in enumerate(g.edges)}
    core = _core_from_graph(g, RoutingSettings(link_capacity_bps=caps))
    for n, (op, a, b, bps) in enumerate(ops):
        sid = f"s{a % 4}"
        if op == "reserve" and a != b:
            try:
                core.route_and_reserve(f"s{n}", 0, f"n{a}", f"n{b}", bps)
            except NoRoute:
                pass
        elif op == "release":
            core.release(sid)
        elif op == "reroute":
            res = core.current(sid)
            if res is not None and res.route.links:
                core.apply_alarm(LinkAlarm(link_id=res.route.links[0], kind="link_down"))
                try:
                    core.plan_reroute(res)
                except NoRoute:
                    pass
                core.release(sid, res.epoch)
        for lid, cap in caps.items():
            assert core.reserved_bps(lid) <= cap + 1e-9
            assert math.isfinite(core.capacity_bps(lid))


async def test_routing_element_reads_metrics_from_the_database(
        topology: Topology, db: Database, clock: VirtualClock, events: EventStream) -> None:
    """On SQLite and PostgreSQL: monitored figures in the store move the route."""
    from keyplane.bus import MemoryBus

    await load_topology_into(db, topology)
    async with MemoryBus() as bus:
        routing = RoutingElement(topology, bus, clock, events, db=db,
                                 settings=RoutingSettings(metrics_refresh_s=5.0))
        async with routing:
            assert routing.core.compute_path("a", "d").nodes == ("a", "e", "d")
            await upsert_link_metrics(db, LinkMetrics("e-d", t=1.0, skr_bps=10.0, qber=0.09))
            await clock.advance(5.0)  # the periodic refresh
            await wait_until(lambda: routing.core.compute_path("a", "d").nodes
                             == ("a", "b", "c", "d"), what="metrics refreshed")
            assert routing.core.compute_path("a", "d").nodes == ("a", "b", "c", "d")
            assert routing.core.capacity_bps("e-d") == 10.0


def _reference_ledger(core: RoutingCore, link_id: str) -> tuple[float, dict[str, float]]:
    """The slow reference: a link's reserved rate summed from every live reservation
    (per session, its largest epoch on that link)."""
    per_session: dict[str, float] = {}
    for res in core.reservations():
        if link_id in res.route.links:
            per_session[res.session_id] = max(per_session.get(res.session_id, 0.0),
                                               res.min_bps)
    return sum(per_session.values()), per_session


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10**6),
       ops=st.lists(st.tuples(st.sampled_from(["reserve", "release", "release_epoch",
                                               "reroute", "restore"]),
                              st.integers(0, 7), st.integers(0, 7), st.integers(1, 900)),
                    max_size=50))
def test_routing_capacity_ledgers_match_the_reservations(
        seed: int, ops: list[tuple[str, int, int, int]]) -> None:
    """The O(1) per-link ledgers (running totals) agree with a sum over every reservation,
    through reserves, releases, reroutes (two epochs held) and restores."""
    g = nx.connected_watts_strogatz_graph(8, 3, 0.4, seed=seed)
    core = _core_from_graph(g, RoutingSettings(default_capacity_bps=5000.0,
                                               use_skr_as_capacity=False))
    for n, (op, a, b, bps) in enumerate(ops):
        sid = f"s{a % 4}"
        if op == "reserve" and a != b:
            with contextlib.suppress(NoRoute):
                core.route_and_reserve(sid, n, f"n{a}", f"n{b}", bps)
        elif op == "release":
            core.release(sid)
        elif op == "release_epoch" and (res := core.current(sid)) is not None:
            core.release(sid, res.epoch)
        elif op == "reroute" and (res := core.current(sid)) is not None:
            with contextlib.suppress(NoRoute):
                core.plan_reroute(res)  # old and new epoch both held
        elif op == "restore" and a != b:
            core.restore(sid, n, [f"n{a}", f"n{b}"], bps)
        for lid in (f"l{u}-{v}" for u, v in g.edges):
            total, per_session = _reference_ledger(core, lid)
            assert core.reserved_bps(lid) == pytest.approx(total, abs=1e-6)
            link = core._links[lid]
            for s, bps_held in per_session.items():
                assert link.free_for(s) == pytest.approx(5000.0 - total + bps_held, abs=1e-6)
        for res in core.reservations():  # the per-link session index finds each one
            if core.current(res.session_id) is res:
                for lid in res.route.links:
                    assert res in core.affected_by(lid)


async def test_routing_element_reweighs_only_the_links_monitoring_reports(
        topology: Topology, clock: VirtualClock, events: EventStream) -> None:
    """The Monitoring Element's report moves the route without a database read."""
    from keyplane.bus import MemoryBus
    from keyplane.control.wire import MONITORING_METRICS, LinkFigures, LinkMetricsReport

    async with MemoryBus() as bus, RoutingElement(topology, bus, clock, events) as routing:
        routing.core.set_metrics({"a-b": LinkMetrics("a-b", t=1.0, skr_bps=3000.0)})
        assert routing.core.compute_path("a", "d").nodes == ("a", "e", "d")
        await bus.publish(MONITORING_METRICS, LinkMetricsReport(links=[
            LinkFigures(link_id="e-d", t=2.0, skr_bps=10.0, qber=0.09)]))
        await wait_until(lambda: routing.core.capacity_bps("e-d") == 10.0,
                         timeout_s=60.0, what="report applied")
        assert routing.core.compute_path("a", "d").nodes == ("a", "b", "c", "d")
        assert routing.core.capacity_bps("a-b") == 3000.0  # untouched links keep theirs
