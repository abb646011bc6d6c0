"""The repeater-chain model against its closed forms and against its own sampler."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from keyplane.physical.repeater import (
    C_FIBRE_KM_S,
    ElementaryLink,
    PacketSource,
    RepeaterChain,
    bbpssw,
    decohere,
    expected_max_geometric,
    fidelity_of,
    werner_of,
)


def test_werner_and_fidelity_are_inverse() -> None:
    for f in (0.25, 0.5, 0.8, 0.97, 1.0):
        assert fidelity_of(werner_of(f)) == pytest.approx(f)


def test_bbpssw_matches_bennett_et_al_and_only_helps_above_one_half() -> None:
    p, f = bbpssw(0.8)
    g = 0.2 / 3
    assert p == pytest.approx(0.64 + 2 * 0.8 * g + 5 * g * g)
    assert f == pytest.approx((0.64 + g * g) / p)
    assert f > 0.8
    assert bbpssw(0.5)[1] == pytest.approx(0.5)  # the fixed point
    assert bbpssw(0.45)[1] < 0.5


def test_expected_max_geometric_single_link_is_one_over_p_and_two_links_by_hand() -> None:
    assert expected_max_geometric(0.1, 1) == pytest.approx(10.0)
    p, q = 0.2, 0.8
    assert expected_max_geometric(p, 2) == pytest.approx(2 / (1 - q) - 1 / (1 - q * q))
    with pytest.raises(ValueError):
        expected_max_geometric(0.0, 2)


def test_expected_max_geometric_agrees_with_sampling() -> None:
    rng = random.Random(11)
    p, n = 0.05, 4
    draws = [max(math.ceil(math.log(1 - rng.random()) / math.log1p(-p)) for _ in range(n))
             for _ in range(20_000)]
    assert statistics.fmean(draws) == pytest.approx(expected_max_geometric(p, n), rel=0.03)


def test_decoherence_is_exponential_in_the_wait() -> None:
    assert decohere(0.9, 0.0, 1.0) == 0.9
    assert decohere(0.9, 0.5, 1.0) == pytest.approx(0.9 * math.exp(-1.0))
    assert decohere(0.9, 10.0, math.inf) == 0.9


def test_single_link_chain_time_is_attempts_times_period_plus_signalling() -> None:
    link = ElementaryLink(length_km=20.0)
    est = RepeaterChain((link,)).estimate()
    expected = link.attempt_period_s / link.success_probability + 20.0 / C_FIBRE_KM_S
    assert est.pair_time_s == pytest.approx(expected)
    assert est.fidelity <= link.initial_fidelity


def test_longer_chains_are_slower_and_worse_and_purification_trades_rate_for_fidelity() -> None:
    short = RepeaterChain((ElementaryLink(25.0),) * 2, coherence_time_s=0.1)
    long = RepeaterChain((ElementaryLink(25.0),) * 6, coherence_time_s=0.1)
    assert long.estimate().pair_time_s > short.estimate().pair_time_s
    assert long.estimate().fidelity < short.estimate().fidelity
    once = short.estimate(1)
    assert once.fidelity > short.estimate().fidelity
    assert once.pair_time_s > 2 * short.estimate().pair_time_s
    best = short.best_for(once.fidelity - 1e-9)
    assert best is not None and best.purification_rounds == 1
    assert short.best_for(0.999) is None


def test_packet_source_mean_packet_time_matches_the_estimate() -> None:
    chain = RepeaterChain((ElementaryLink(30.0), ElementaryLink(30.0)), swap_probability=0.8)
    est = chain.estimate()
    src = PacketSource(chain, 0, 1, random.Random(5))
    horizon = 4000 * est.pair_time_s
    produced = sum(src.run(horizon / 100) for _ in range(100))
    assert produced == pytest.approx(4000, rel=0.05)


def test_packet_source_only_progresses_when_granted() -> None:
    chain = RepeaterChain((ElementaryLink(10.0),))
    src = PacketSource(chain, 0, 3, random.Random(1))
    assert src.run(0.0) == 0
    assert src.run(1e-9) == 0
