"""Admission Control's indexes (deadline heap, live sessions per user) against a brute-force
recount over every session, through random open / pair / route / configure / keep-alive /
reroute / close / delete / expire / restore sequences (issue #15)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.config import SlaProfile, User
from keyplane.control import AdmissionCore, AdmissionSettings, AdmissionState
from keyplane.control.admission import AdmissionSession, SendDeletes, StoreSession
from keyplane.control.admission.index import DeadlineHeap, LiveCounts
from keyplane.control.wire import RerouteOrder
from keyplane.messages import KeepAlive, SessionClose
from keyplane.store.admitted import AdmittedSession
from tests.support.control import open_request

NODES = ("n0", "n1", "n2", "n3")
USERS = {f"u{i}": User(id=f"u{i}", sla=SlaProfile(max_sessions=3, idle_timeout_s=t))
         for i, t in enumerate((5.0, 10.0, 20.0))}
OWNER = {i: f"u{i % 3}" for i in range(len(NODES))}  # SAE s<i> at n<i>
SIDS = tuple(f"k{i}" for i in range(4))

op = st.tuples(st.integers(0, 10), st.integers(0, 3), st.integers(0, 3), st.integers(0, 3),
               st.integers(0, 40))


def brute_next_deadline(core: AdmissionCore) -> float | None:
    return min((d for s in core.sessions.values()
                for d in (s.peer_deadline, s.timer_deadline) if d is not None), default=None)


def brute_live(core: AdmissionCore, user: str) -> int:
    return sum(1 for s in core.sessions.values()
               if s.state is not AdmissionState.terminated and user in s.users)


def check(core: AdmissionCore) -> None:
    assert core.next_deadline() == brute_next_deadline(core)
    for u in USERS:
        assert core.live_sessions_of(u) == brute_live(core, u)
    armed = core._deadlines.armed()
    for sid, s in core.sessions.items():
        for kind, d in (("peer", s.peer_deadline), ("timer", s.timer_deadline)):
            if d is not None:  # the heap holds an entry no later than the deadline
                assert armed[(sid, kind)] <= d
    assert all(core.sessions.get(t) is not None for t in core._aliases.values())


class Driver:
    """Feeds the core events the way the shell would, answering its effects on demand."""

    def __init__(self) -> None:
        self.core = AdmissionCore(AdmissionSettings(peer_wait_timeout_s=3.0,
                                                    session_timer_grace_s=0.5))
        self.now = 0.0
        self.records: list[AdmittedSession] = []
        self.deletes: list[SendDeletes] = []

    def take(self, effects: list[object]) -> None:
        for e in effects:
            if isinstance(e, StoreSession):
                self.records.append(e.record)
            elif isinstance(e, SendDeletes):
                self.deletes.append(e)

    def advance(self, sess: AdmissionSession, a: int, t: int) -> None:
        """The session's next step: the peer opens, the route comes, the KMs answer."""
        core, sid = self.core, sess.session_id
        if sess.state is AdmissionState.requested:  # the peer opens the mirrored pair
            init = sess.initiator
            peer = int(sess.destination_node[1])
            req = open_request(sid, sess.destination_node, OWNER[peer], init.peer_sae,
                               init.sae_id, timeout_ms=1000 * (t % 4))
            self.take(core.open(req, USERS[OWNER[peer]], init.node, self.now,
                                source_node=sess.destination_node)[1])
        elif "route" in sess.inflight:
            path = [sess.initiator.node, *([NODES[a]] if NODES[a] not in (
                sess.initiator.node, sess.destination_node) else []), sess.destination_node]
            self.take(core.route_found(sid, sess.epoch, path, self.now) if t % 7
                      else core.route_failed(sid, sess.epoch, "none", self.now))
        else:  # every KM of a pending epoch answers
            for flag in sorted(f for f in sess.inflight if f.startswith("config:")):
                epoch = int(flag.split(":")[1])
                nodes = sess.pending_path or sess.path
                failed = {nodes[0]: "refused"} if t % 6 == 0 else {}
                self.take(core.configs_applied(sid, epoch, tuple(nodes), failed, self.now))

    def step(self, kind: int, k: int, a: int, b: int, t: int) -> None:
        core, sid = self.core, SIDS[k]
        sess = core.sessions.get(sid)
        if kind == 0:  # an endpoint opens (004 with the timeout t, or 014 when t is odd)
            iface = "etsi014" if t % 5 == 1 else "etsi004"
            req = open_request(sid, NODES[a], OWNER[a], f"s{a}", f"s{b}", interface=iface,
                               timeout_ms=1000 * (t % 4))
            self.take(core.open(req, USERS[OWNER[a]], NODES[b], self.now,
                                source_node=NODES[a])[1])
        elif kind in (1, 2, 3) and sess is not None:
            self.advance(sess, a, t)
        elif kind == 4 and sess is not None:
            node = sess.endpoint_nodes[a % 2]
            self.take(core.keepalive(KeepAlive(session_id=sid, node=node), self.now))
        elif kind == 5 and sess is not None:
            node = sess.endpoint_nodes[a % 2]
            self.take(core.close(SessionClose(session_id=sid, node=node, reason="close"),
                                 self.now))
        elif kind == 6 and self.deletes:  # one batch of deletions is confirmed
            d = self.deletes.pop(a % len(self.deletes))
            self.take(core.deletes_done(d.session_id, d.purpose, d.epoch,
                                        tuple(x.node for x in d.deletes), (), self.now))
        elif kind == 7 and sess is not None and sess.state is AdmissionState.active:
            order = RerouteOrder(session_id=sid, old_epoch=sess.route_epoch,
                                 new_epoch=sess.route_epoch + 1,
                                 path=[sess.initiator.node, NODES[b], sess.destination_node])
            self.take(core.reroute(order, self.now)[1])
        elif kind == 8 and self.records:  # a stored session comes back (restart)
            self.take(core.restore(self.records[a % len(self.records)], self.now))
        else:  # the clock moves on and the due timers fire
            self.now += t / 4
            due = {sid for sid, s in core.sessions.items()
                   if any(d is not None and d <= self.now
                          for d in (s.peer_deadline, s.timer_deadline))}
            self.take(core.tick(self.now))
            for sid in due:
                s = core.sessions.get(sid)
                assert s is None or s.state is AdmissionState.terminated or s.closing
            assert all(d is None or d > self.now for s in core.sessions.values()
                       for d in (s.peer_deadline, s.timer_deadline))


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=120))
def test_admission_indexes_match_a_brute_force_recount_after_every_event(
        ops: list[tuple[int, int, int, int, int]]) -> None:
    drv = Driver()
    for o in ops:
        drv.step(*o)
        check(drv.core)


def test_admission_keepalives_do_not_grow_the_deadline_heap() -> None:
    drv = Driver()
    for k in range(3):
        for kind in (0, 1, 2, 3):
            drv.step(kind, k, k, k + 1, 2)
    assert {s.state for s in drv.core.sessions.values()} == {AdmissionState.active}
    size = len(drv.core._deadlines)
    for i in range(1000):
        drv.now += 0.01
        drv.step(4, i % 3, 0, 0, 0)
    assert len(drv.core._deadlines) == size
    check(drv.core)


@given(st.lists(st.tuples(st.integers(0, 4), st.sampled_from(("peer", "timer")),
                          st.one_of(st.none(), st.integers(0, 50))), max_size=60),
       st.integers(0, 50))
def test_deadline_heap_earliest_and_due_match_the_deadlines_it_stands_for(
        sets: list[tuple[int, str, int | None]], now: int) -> None:
    deadlines: dict[tuple[str, str], float] = {}
    heap = DeadlineHeap(deadlines.get)
    for k, kind, at in sets:
        key = (f"s{k}", kind)
        if at is None:
            deadlines.pop(key, None)  # cleared: the heap is not told
        else:
            deadlines[key] = float(at)
            heap.arm(key, float(at))
        top = heap.earliest()
        want = min(deadlines.values(), default=None)
        assert (top[0] if top else None) == want
    fired = []
    while (key := heap.pop_due(now)) is not None:
        fired.append(key)
        deadlines.pop(key)
    assert sorted(fired) == sorted(k for k, d in {**deadlines, **dict.fromkeys(fired, 0.0)}
                                   .items() if d <= now)
    assert all(d > now for d in deadlines.values())


@given(st.lists(st.tuples(st.integers(0, 5), st.frozensets(st.sampled_from("abc"))),
                max_size=40))
def test_live_counts_match_a_recount(sets: list[tuple[int, frozenset[str]]]) -> None:
    live, truth = LiveCounts(), {}
    for k, users in sets:
        live.set(f"s{k}", users)
        truth[f"s{k}"] = users
        for u in "abc":
            assert live.of(u) == sum(u in us for us in truth.values())
    assert all(n > 0 for n in live.counts().values())


def test_admission_restored_session_counts_for_both_users_and_arms_its_timer() -> None:
    drv = Driver()
    for kind in (0, 1, 2, 3):
        drv.step(kind, 0, 0, 1, 2)  # s0 (u0) with s1 (u1), active
    (rec,) = drv.records
    drv.step(5, 0, 0, 0, 0)  # closed by an endpoint
    drv.step(6, 0, 0, 0, 0)  # the deletions are confirmed: forgotten
    assert drv.core.sessions == {} and drv.core.live_sessions_of("u0") == 0
    drv.now = 100.0
    drv.step(8, 0, 0, 0, 0)
    assert drv.core.live_sessions_of("u0") == drv.core.live_sessions_of("u1") == 1
    assert drv.core.next_deadline() == 100.0 + 5.0 + 0.5  # u0's idle timeout, the lower
    check(drv.core)
