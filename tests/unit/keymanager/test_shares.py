"""Weighted shares of scarce link key (keymanager/shares.py): the pure core, no I/O.

Example tests pin the rule (split on arrival by ``priority + 1``, the pool, expiry at the
deadline); property tests drive random request/supply/time/cancel sequences and check the
invariants after every step: the stock is exactly what was supplied minus what was granted,
no ticket is granted twice or both granted and expired, no waiter fits the key it may use,
and no waiter outlives its deadline once ``due`` ran.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.keymanager.shares import Expired, Grant, LinkShares, weight


def shares(cap: int = 1 << 20, idle_s: float = 60.0) -> LinkShares:
    return LinkShares(cap, idle_s)


def tickets(decisions: list[Grant] | list[Grant | Expired], kind: type = Grant) -> list[object]:
    return [d.ticket for d in decisions if isinstance(d, kind)]


def test_weight_is_priority_plus_one_clamped() -> None:
    assert [weight(p) for p in (-1, 0, 3, 7, 9)] == [1, 1, 4, 8, 8]


def test_key_before_any_flow_goes_to_the_pool_and_serves_anyone_at_once() -> None:
    sh = shares()
    assert sh.supply(100, 0.0) == []
    assert sh.pool == sh.stock == 100
    assert tickets(sh.request("t", "a", 0, 60, 10.0, 0.0)) == ["t"]
    assert sh.pool == sh.stock == 40


def test_new_key_is_split_by_weight_among_flows_and_waiters_served_from_their_share() -> None:
    sh = shares()
    assert sh.request("hi", "a", 7, 64, 10.0, 0.0) == []
    assert sh.request("lo", "b", 0, 64, 10.0, 0.0) == []
    # 90 bytes: 80 to the weight-8 flow, 10 to the weight-1 flow; only "hi" fits
    assert tickets(sh.supply(90, 1.0)) == ["hi"]
    assert sh.credit("a") == 16 and sh.credit("b") == 10 and sh.pool == 0
    assert sh.waiting_of("b") == 1


def test_under_sustained_contention_shares_follow_the_weights_whatever_the_block_size() -> None:
    for block in (64, 640, 16_384):
        sh = shares()
        served: Counter[str] = Counter()
        level = 0
        waiting = {"a": 0, "b": 0}
        seq = 0
        for step in range(400):
            for flow, prio in (("a", 7), ("b", 0)):
                while waiting[flow] < 4:  # four workers each, always asking again
                    seq += 1
                    got = sh.request((flow, seq), flow, prio, 64, 1e9, float(step))
                    if got:
                        served[flow] += 1
                    else:
                        waiting[flow] += 1
            level = sh.stock + block
            for g in sh.supply(level, float(step)):
                assert isinstance(g.ticket, tuple)
                served[g.flow] += 1
                waiting[g.flow] -= 1
        assert served["a"] >= 3 * served["b"], (block, served)
        assert 7 <= served["a"] / served["b"] <= 9, (block, served)


def test_equal_priorities_share_equally() -> None:
    sh = shares()
    served: Counter[str] = Counter()
    for step in range(200):
        for flow in ("a", "b"):
            if not sh.waiting_of(flow):
                for g in sh.request((flow, step), flow, 3, 64, 1e9, float(step)):
                    served[g.flow] += 1
        for g in sh.supply(sh.stock + 96, float(step)):
            served[g.flow] += 1
    assert abs(served["a"] - served["b"]) <= 1


def test_a_share_beyond_the_cap_goes_to_the_pool() -> None:
    sh = shares(cap=50)
    sh.request("x", "a", 0, 1000, 10.0, 0.0)
    sh.supply(200, 0.0)
    assert sh.credit("a") == 50 and sh.pool == 150


def test_waiter_expires_at_its_deadline_not_before() -> None:
    sh = shares()
    assert sh.request("t", "a", 0, 64, 5.0, 0.0) == []
    assert sh.due(4.999) == []
    assert sh.next_deadline() == 5.0
    assert tickets(sh.due(5.0), Expired) == ["t"]
    assert sh.waiting == 0


def test_a_request_whose_deadline_passed_expires_at_once_unless_key_is_there() -> None:
    sh = shares()
    assert tickets(sh.request("t", "a", 0, 64, 0.0, 0.0), Expired) == ["t"]
    sh.supply(64, 0.0)
    assert tickets(sh.request("u", "a", 0, 64, 0.0, 0.0)) == ["u"]


def test_urgent_requests_may_use_other_flows_credit() -> None:
    sh = shares()
    sh.request("big", "a", 7, 10_000, 10.0, 0.0)
    sh.supply(100, 0.0)  # all of it credited to "a" (the only flow)
    assert sh.request("c", "b", 0, 32, 10.0, 0.0) == []  # "b" has no share yet
    assert tickets(sh.request("u", "b", 0, 32, 10.0, 0.0, urgent=True)) == ["u"]
    assert sh.stock == 68


def test_what_urgent_frames_borrow_is_a_debt_repaid_from_their_own_later_share() -> None:
    sh = LinkShares(1 << 20, 60.0, debt_bytes=64)
    sh.request("big", "a", 3, 10_000, 100.0, 0.0)
    sh.request("c0", "b", 0, 32, 100.0, 0.0, urgent=True)  # "b" exists, nothing to lend yet
    # "a" 400, "b" 100 (weights 4:1) but it only confirms here: 64 kept, 36 to the pool;
    # c0 takes 32 of b's own
    assert tickets(sh.supply(500, 0.0)) == ["c0"]
    assert sh.credit("b") == 32 and sh.pool == 36 and sh.debt("b") == 0
    for i in range(4):  # 32 of its own, 36 from the pool, then 60 lent by "a"
        assert tickets(sh.request(f"c{i + 1}", "b", 0, 32, 100.0, 0.0, urgent=True))
    assert sh.debt("b") == 60 and sh.credit("b") == 0 and sh.pool == 0
    assert sh.request("c5", "b", 0, 32, 100.0, 0.0, urgent=True) == []  # 4 more lent: waits
    # b's 100 repays its 60 (to "a"), 40 are its own: c5 is served from them
    assert tickets(sh.supply(sh.stock + 500, 1.0)) == ["c5"]
    assert sh.debt("b") == 0 and sh.credit("b") == 8
    assert sh.credit("a") == 400 - 60 + 400 + 60


def test_a_low_priority_flows_urgent_frames_cost_its_own_share_under_contention() -> None:
    """Session 11's fault matrix: an ETSI 004 stream (priority 0) confirmed every key back
    over the link a priority-3 ETSI 014 session sends on; its urgent frames took ~55 % of the
    link. They now get their weighted share (1/5) plus the debt bound, no more, and the 014
    session's 2,080-byte frames are never starved past their 10 s deadline."""
    sh = LinkShares(1 << 20, 60.0, debt_bytes=4096)
    level, now, seq = 0, 0.0, 0
    got: Counter[str] = Counter()
    expired: Counter[str] = Counter()

    def settle(decisions: list[Grant] | list[Grant | Expired]) -> None:
        nonlocal level
        for d in decisions:
            if isinstance(d, Grant):
                level -= d.nbytes
                got[d.flow] += d.nbytes
            else:
                expired[d.flow] += 1

    for _ in range(300):  # 1,000 bytes per step; 40 confirmations (1,280 bytes) asked per step
        level += 1000
        settle(sh.supply(level, now))
        if not sh.waiting_of("k"):
            settle(sh.request(object(), "k", 3, 2080, now + 10.0, now))
        for _ in range(40):
            seq += 1
            settle(sh.request(seq, "c", 0, 32, now + 1.0, now, urgent=True))
        settle(sh.due(now + 0.999))
        now += 1.0
        settle(sh.due(now))
    supplied = 300 * 1000
    # its fifth, the (late) loan bound, and the first step's key (in the pool: no flow existed
    # yet); before the bound: 87 % of it
    assert got["c"] <= supplied // 5 + 4096 + 1024 + 1000
    assert got["k"] >= supplied * 4 // 5 - 2 * 2080 - 4096 - 1024 - 1000
    assert not expired["k"]

def test_a_confirmation_at_its_deadline_gets_a_late_loan_rather_than_being_dropped() -> None:
    # dropping it would waste the forward key of the frame it confirms and fail the request
    sh = LinkShares(1 << 20, 60.0, debt_bytes=128)
    sh.request("big", "a", 3, 10_000, 100.0, 0.0)
    sh.supply(1000, 0.0)  # all "a"'s
    for i in range(4):  # the bound: 128 bytes lent
        assert tickets(sh.request(i, "b", 0, 32, 5.0, 0.0, urgent=True)) == [i]
    assert sh.request("late", "b", 0, 32, 5.0, 0.0, urgent=True) == []  # waits ...
    assert sh.due(4.9) == []
    assert tickets(sh.due(5.0)) == ["late"]  # ... and at its deadline borrows 32 more
    assert sh.debt("b") == 160 == 128 + 128 // 4
    sh.request("no", "b", 0, 32, 6.0, 0.0, urgent=True)
    assert tickets(sh.due(6.0), Expired) == ["no"]  # beyond a quarter more: dropped
    # a request that is not urgent never borrows, late or not
    sh.request("frame", "c", 0, 32, 7.0, 0.0)
    assert tickets(sh.due(7.0), Expired) == ["frame"]


def test_a_flow_that_only_confirms_here_holds_no_more_than_the_debt_bound() -> None:
    """The backward direction of a relay: a priority-7 session's confirmations must not
    hoard 8/9 of the link while a priority-0 session's frames wait for key."""
    sh = LinkShares(1 << 20, 60.0, debt_bytes=256)
    sh.request("c", "conf", 7, 32, 100.0, 0.0, urgent=True)
    sh.request("f", "frames", 0, 5000, 100.0, 0.0)
    sh.supply(900, 0.0)  # conf: 800 of it, capped at 256 (32 taken at once), the rest pooled
    assert sh.credit("conf") == 256 - 32
    sh.supply(sh.stock + 4500, 1.0)
    assert sh.credit("conf") <= 256
    assert sh.waiting == 0  # "frames" got its 5,000 from its share and the pool


def test_a_level_below_the_stock_is_taken_from_the_pool_then_the_credits() -> None:
    sh = shares()
    sh.supply(100, 0.0)
    sh.request("x", "a", 0, 1000, 10.0, 0.0)
    sh.supply(200, 0.0)
    assert sh.pool == 100 and sh.credit("a") == 100
    sh.supply(50, 0.0)
    assert sh.stock == 50 and sh.pool == 0 and sh.credit("a") == 50


def test_an_ended_or_idle_flow_gives_its_credit_back() -> None:
    sh = shares(idle_s=5.0)
    sh.request("x", "a", 0, 1000, 1.0, 0.0)
    sh.supply(100, 0.0)
    assert sh.credit("a") == 100
    sh.due(1.0)  # "x" expired: "a" no longer waits
    sh.forget("a")
    assert sh.pool == 100
    sh.request("y", "b", 0, 1000, 1.0, 2.0)
    sh.supply(200, 2.0)
    sh.due(3.0)
    assert sh.credit("b") == 100
    sh.supply(200, 8.0)  # "b" idle for 6 s > 5 s
    assert "b" not in sh.flows and sh.pool == 200


def test_cancel_removes_only_a_waiting_ticket() -> None:
    sh = shares()
    sh.request("t", "a", 0, 64, 10.0, 0.0)
    assert sh.cancel("t") and not sh.cancel("t")
    assert sh.supply(64, 1.0) == []


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        LinkShares(-1, 1.0)
    with pytest.raises(ValueError):
        LinkShares(1, 0.0)
    with pytest.raises(ValueError):
        shares().request("t", "a", 0, 0, 1.0, 0.0)


# ---- properties ---------------------------------------------------------------------------
OPS = st.lists(st.one_of(
    st.tuples(st.just("request"), st.sampled_from("abc"), st.integers(0, 7),
              st.integers(1, 300), st.floats(0.0, 5.0), st.booleans()),
    st.tuples(st.just("supply"), st.integers(-100, 600)),
    st.tuples(st.just("time"), st.floats(0.0, 2.0)),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
    st.tuples(st.just("forget"), st.sampled_from("abc")),
    st.tuples(st.just("withdraw"), st.sampled_from("abc")),
), max_size=80)


@settings(max_examples=300, deadline=None)
@given(ops=OPS, cap=st.integers(0, 500), idle=st.floats(0.5, 10.0), debt=st.integers(0, 300))
def test_no_key_handed_twice_and_no_waiter_outlives_its_deadline_while_key_fits(
        ops: list[tuple[object, ...]], cap: int, idle: float, debt: int) -> None:
    sh = LinkShares(cap, idle, debt)
    now = 0.0
    level = 0  # what the store holds (the shell's truth)
    supplied_total = 0
    granted: Counter[object] = Counter()
    expired: set[object] = set()
    waiting: dict[object, tuple[str, int, float, bool]] = {}
    issued: list[object] = []
    late: set[str] = set()  # flows granted a late loan

    def settle(decisions: list[Grant] | list[Grant | Expired]) -> None:
        nonlocal level
        for d in decisions:
            assert d.ticket not in expired and granted[d.ticket] == 0, "decided twice"
            if isinstance(d, Grant):
                granted[d.ticket] += 1
                if waiting[d.ticket][2] <= now and waiting[d.ticket][3]:
                    late.add(d.flow)
                level -= d.nbytes  # the shell takes it from the store at once
                assert level >= 0, "granted more key than the store holds"
            else:
                expired.add(d.ticket)
                assert waiting[d.ticket][2] <= now, "expired before its deadline"
            waiting.pop(d.ticket, None)

    for op in ops:
        if op[0] == "request":
            _, flow, prio, nbytes, wait, urgent = op
            t = object()
            issued.append(t)
            waiting[t] = (str(flow), int(nbytes), now + float(wait), bool(urgent))
            settle(sh.request(t, str(flow), int(prio), int(nbytes), now + float(wait), now,
                              urgent=bool(urgent)))
        elif op[0] == "supply":
            delta = int(op[1])  # negative: key left the store another way
            delta = max(delta, -level)
            level += delta
            supplied_total += max(0, delta)
            settle(sh.supply(level, now))
        elif op[0] == "time":
            now += float(op[1])
            settle(sh.due(now))
        elif op[0] == "cancel":
            if issued:
                t = issued[int(op[1]) % len(issued)]
                if sh.cancel(t):
                    waiting.pop(t)
        elif op[0] == "withdraw":  # as the shell does: the tickets fail, key offered again
            for t in sh.withdraw(str(op[1])):
                waiting.pop(t)
            settle(sh.supply(level, now))
        else:  # as the shell does: forget, then offer the store's key again
            sh.forget(str(op[1]))
            settle(sh.supply(level, now))
        # the scheduler never promises more than the store holds
        assert 0 <= sh.stock <= level
        assert sh.stock == sh.pool + sum(f.credit for f in sh.flows.values())
        assert sh.pool >= 0 and all(f.credit >= 0 for f in sh.flows.values())
        # urgent frames borrow other flows' credit only up to the bound, or at their deadline
        # (a late loan) a quarter more
        assert all(0 <= f.debt <= debt + debt // 4 for f in sh.flows.values())
        assert all(f.debt <= debt for name, f in sh.flows.items() if name not in late)
        assert all(not f.credit for f in sh.flows.values() if f.debt), "in debt, yet credit"
        # no waiter fits the key it may use (its credit and the pool, and if urgent what
        # the others may still lend it)
        for _t, (flow, nbytes, _deadline, urgent) in waiting.items():
            usable = sh.credit(flow) + sh.pool
            if urgent:  # a loan from the flows not in debt, within its bound
                lenders = sum(f.credit for name, f in sh.flows.items()
                              if name != flow and not f.debt)
                usable += min(lenders, max(0, debt - sh.debt(flow)))
            assert usable <= sh.stock
            assert nbytes > usable, "a request waits while key it may use is there"
        assert sh.waiting == len(waiting)
    now += 10.0
    settle(sh.due(now))
    assert sh.waiting == 0 and not waiting
    assert sum(granted.values()) == len(granted)  # each ticket at most once


def test_a_rerouted_flow_withdraws_its_waiters_and_keeps_the_others() -> None:
    sh = shares()
    sh.request("a1", "a", 0, 64, 10.0, 0.0)
    sh.request("b1", "b", 0, 64, 10.0, 0.0)
    sh.request("a2", "a", 0, 64, 10.0, 0.0)
    assert sh.withdraw("a") == ["a1", "a2"]
    assert sh.waiting == 1 and sh.waiting_of("b") == 1
    assert tickets(sh.supply(200, 1.0)) == ["b1"]


def test_a_rerouted_flow_gives_its_credit_to_the_pool_and_holds_no_more_than_urgent_flows() -> None:
    """A session rerouted off a link may still send the old path's confirmations over it,
    but must not keep (or go on receiving) the share it held while its frames crossed."""
    sh = LinkShares(1 << 20, 60.0, debt_bytes=64)
    assert tickets(sh.request("a1", "a", 0, 8, 10.0, 0.0)) == []  # a sends frames here
    sh.request("b1", "b", 0, 1 << 16, 10.0, 0.0)  # b waits for more than there is
    sh.supply(1000, 1.0)  # a1 is served from a's half: a keeps the rest, b holds its half
    assert sh.credit("a") == 500 - 8 and sh.credit("b") == 500
    assert sh.withdraw("a") == []
    assert sh.credit("a") == 0 and sh.pool == 492 and sh.stock == 992
    sh.supply(1992, 2.0)  # a's half of the next 1,000 is capped as an urgent-only flow's
    assert sh.credit("a") == 64 and sh.credit("b") == 1000
    assert sh.pool == 492 + 500 - 64 and sh.stock == 1992
    # its next frame here (the route came back) lets it hold a full share again
    assert tickets(sh.request("a2", "a", 0, 64, 10.0, 3.0)) == ["a2"]
    sh.supply(sh.stock + 1000, 4.0)
    assert sh.credit("a") == 500 and sh.credit("b") == 1500


def test_an_idle_flow_in_debt_repays_before_it_is_forgotten() -> None:
    """Forgetting a flow in debt would let a session borrow the bound again after every idle
    period, its loans never repaid: it stays until its shares have repaid them."""
    sh = LinkShares(1 << 20, 10.0, debt_bytes=128)
    sh.request("big", "a", 0, 10_000, 100.0, 0.0)
    sh.supply(1000, 0.0)  # all "a"'s
    for i in range(4):
        assert tickets(sh.request(i, "b", 0, 32, 5.0, 0.0, urgent=True)) == [i]
    assert sh.debt("b") == 128 and sh.stock == 872
    sh.supply(sh.stock, 20.0)  # "b" idle 20 s, in debt: kept; nothing new came
    assert "b" in sh.flows and sh.debt("b") == 128
    sh.supply(sh.stock + 200, 30.0)  # its half of 200 repays 100 to "a"
    assert sh.debt("b") == 28 and sh.credit("a") == 1000 - 128 + 200
    sh.supply(sh.stock + 200, 40.0)  # the rest repaid, 72 credited to it
    assert sh.debt("b") == 0 and sh.credit("b") == 72
    sh.supply(sh.stock, 41.0)  # idle without debt: forgotten, its credit to the pool
    assert "b" not in sh.flows and sh.pool == 72
