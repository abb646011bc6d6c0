"""Finite-key security (Lim et al., PRA 89, 022307 (2014)): the statistics, the bound, the
published curve, per-block counts, and the twin against the bound's curve."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.clock import VirtualClock
from keyplane.config import PostProcessing, QuantumLink
from keyplane.physical import LinkPhysics, LinkRunner, MemoryKeySink, plob_bound
from keyplane.physical.analytic import (
    finite_key_block,
    finite_key_rate,
    signal_statistics,
    single_photon_statistics,
)
from keyplane.physical.bits import binary_entropy
from keyplane.physical.finite_key import (
    BlockCounts,
    LimSystem,
    chernoff_interval,
    finite_key_length,
    hoeffding_interval,
    lim_gamma,
)
from keyplane.physical.sifting import SiftedKeyBuffer, split_bases


def _physics(length_km: float, **kw: object) -> LinkPhysics:
    return LinkPhysics.from_link(QuantumLink(endpoints=("a", "b"), length_km=length_km, **kw))


# ------------------------------------------------------------------ statistics


@settings(max_examples=60, deadline=None)
@given(x=st.floats(0.0, 1e9), eps=st.floats(1e-15, 0.1))
def test_chernoff_interval_brackets_the_observation(x: float, eps: float) -> None:
    lo, hi = chernoff_interval(x, eps)
    assert 0.0 <= lo <= x <= hi
    # wider for rarer failure
    lo2, hi2 = chernoff_interval(x, eps / 10)
    assert lo2 <= lo and hi2 >= hi


@pytest.mark.parametrize("mean", [3.0, 40.0, 2000.0])
def test_chernoff_interval_covers_the_expectation_as_often_as_promised(mean: float) -> None:
    eps = 0.02
    draws = np.random.default_rng(int(mean)).poisson(mean, 20_000)
    bounds = np.array([chernoff_interval(float(x), eps) for x in draws])
    assert np.mean(bounds[:, 0] > mean) <= eps
    assert np.mean(bounds[:, 1] < mean) <= eps


def test_hoeffding_interval_is_lims_deviation() -> None:
    lo, hi = hoeffding_interval(100.0, 10_000.0, 1e-10)
    d = math.sqrt(10_000 / 2 * math.log(1e10))
    assert (lo, hi) == pytest.approx((100.0 - d, 100.0 + d))


def test_gamma_shrinks_with_more_events() -> None:
    assert lim_gamma(1e-11, 0.02, 1e4, 1e4) > lim_gamma(1e-11, 0.02, 1e6, 1e6) > 0
    assert lim_gamma(1e-11, 0.0, 1e4, 1e4) == 0.5


# ------------------------------------------------------------------ the bound


@pytest.mark.parametrize("length_km", [10.0, 50.0, 100.0])
@pytest.mark.parametrize("statistics", ["chernoff", "hoeffding"])
def test_bound_brackets_the_true_single_photon_terms_on_huge_blocks(
        length_km: float, statistics: str) -> None:
    p = _physics(length_km)
    n_key = 1e13
    block = finite_key_block(p, n_key)
    key, test, errors = block.counts
    bound = finite_key_length(BlockCounts(key=key, test=test, test_errors=errors),  # type: ignore[arg-type]
                              p.intensities, p.class_probabilities, leaked_ec_bits=0.0,
                              leaked_verify_bits=127, eps_sec=1e-10,
                              statistics=statistics)  # type: ignore[arg-type]
    y1, e1 = single_photon_statistics(p)
    # true single-photon detections in the key: pulses x P(1 photon) x Y1 x q_x^2
    tau1 = sum(pk * mu * math.exp(-mu) for pk, mu in zip(p.class_probabilities, p.intensities,
                                                         strict=True))
    true_s1 = block.pulses * 0.25 * tau1 * y1
    assert 0.9 * true_s1 < bound.s_x1 <= true_s1
    assert e1 <= bound.phase_error < e1 + 0.01


def test_length_falls_bit_for_bit_with_leakage_and_is_zero_when_overspent() -> None:
    p = _physics(25.0)
    key, test, errors = finite_key_block(p, 1e6).counts
    counts = BlockCounts(key=tuple(round(x) for x in key),  # type: ignore[arg-type]
                         test=tuple(round(x) for x in test),  # type: ignore[arg-type]
                         test_errors=tuple(round(x) for x in errors))  # type: ignore[arg-type]

    def length(leak: int) -> int:
        return finite_key_length(counts, p.intensities, p.class_probabilities,
                                 leaked_ec_bits=leak, leaked_verify_bits=127,
                                 eps_sec=1e-10).length

    a, c = length(10_000), length(20_000)
    assert 0 < c < a and a - c == pytest.approx(10_000, abs=1)
    assert length(1_000_000) == 0


def test_bound_refuses_intensities_outside_its_conditions() -> None:
    counts = BlockCounts(key=(10, 10, 10), test=(10, 10, 10), test_errors=(1, 1, 1))
    with pytest.raises(ValueError, match="mu1 > mu2 \\+ mu3"):
        finite_key_length(counts, (0.3, 0.2, 0.15), (0.5, 0.3, 0.2), leaked_ec_bits=0,
                          leaked_verify_bits=0, eps_sec=1e-10)


# ------------------------------------------------------------------ the published curve

# Lim et al., section IV and Fig. 1 (dedicated fibre, rates optimized over mu1, mu2,
# p_mu1, p_mu2, q_x): "at a fiber length of 100 km, the secret key rate obtained with
# n_X = 10^9 is about 1.75 times the one based on n_X = 10^7". Our implementation of the
# bound and their system model gives 1.71; tolerance 10 %.
PUBLISHED_RATIO_100KM = 1.75
RATIO_TOLERANCE = 0.10


def test_lim_figure_1_ratio_of_block_sizes_at_100_km() -> None:
    system = LimSystem()
    r7 = system.optimized_key_rate(100.0, 1e7)
    r9 = system.optimized_key_rate(100.0, 1e9)
    assert r7 > 0
    assert r9 / r7 == pytest.approx(PUBLISHED_RATIO_100KM, rel=RATIO_TOLERANCE)


def test_lim_curve_falls_with_distance_and_stays_below_plob() -> None:
    system = LimSystem()
    rates = [system.optimized_key_rate(km, 1e8) for km in (0.0, 50.0, 100.0)]
    assert rates[0] > rates[1] > rates[2] > 0
    # the linear regime: 10 dB of fibre costs about 10x
    assert rates[1] / rates[2] == pytest.approx(10.0, rel=0.25)
    eta = 10 ** (-0.2 * 100 / 10) * system.detector_efficiency
    assert rates[2] < plob_bound(eta)


# ------------------------------------------------------------------ per-block counts


def test_each_block_carries_exactly_its_own_test_events() -> None:
    rng = np.random.default_rng(5)
    alice, bob = SiftedKeyBuffer(), SiftedKeyBuffer()
    truth: list[tuple[int, int, int]] = []  # (class, is_key, error) in stream order
    for _ in range(7):
        n = int(rng.integers(500, 3000))
        bits = rng.integers(0, 2, n, dtype=np.uint8)
        bases = rng.integers(0, 2, n, dtype=np.uint8)
        classes = rng.choice(np.array([0, 1, 2], dtype=np.uint8), n, p=[0.7, 0.2, 0.1])
        errors = rng.random(n) < 0.1
        sift = split_bases(bits, bases, classes, key_basis=0)
        bob.add(sift, errors[bases == 1], pulses=10 * n, duration_s=0.01)
        alice.add(sift, None, pulses=10 * n, duration_s=0.01)
        truth += [(int(c), int(b == 0), int(e)) for c, b, e in zip(classes, bases, errors,
                                                                    strict=True)]
    block = 1000
    keys_seen = 0
    pos = 0
    while bob.size >= block:
        key_b, counts_b, _, _ = bob.take(block)
        key_a, counts_a, _, _ = alice.take(block)
        assert np.array_equal(key_a, key_b) and key_a.shape[0] == block
        assert counts_a.key == counts_b.key and counts_a.test == counts_b.test
        # the block's own events: up to and including its last key event
        own: list[tuple[int, int, int]] = []
        while keys_seen < block:
            own.append(truth[pos])
            keys_seen += truth[pos][1]
            pos += 1
        keys_seen = 0
        key_count = tuple(sum(1 for c, k, _ in own if k and c == x) for x in range(3))
        test_count = tuple(sum(1 for c, k, _ in own if not k and c == x) for x in range(3))
        err_count = tuple(sum(1 for c, k, e in own if not k and e and c == x)
                          for x in range(3))
        assert (counts_b.key, counts_b.test, counts_b.test_errors) == (
            key_count, test_count, err_count)
        assert counts_a.test_errors == (0, 0, 0)  # Alice learns them from Bob


# ------------------------------------------------------------------ the twin


async def _key_per_pulse(length_km: float, block_bits: int, blocks: int, seed: int
                         ) -> tuple[float, float]:
    clock = VirtualClock()
    link = QuantumLink(endpoints=("a", "b"), length_km=length_km,
                       postprocessing=PostProcessing(block_size_bits=block_bits))
    sa, sb = MemoryKeySink(), MemoryKeySink()
    async with LinkRunner(link, clock=clock, seed=seed, alice_sink=sa, bob_sink=sb) as r:
        while r.stats.delivered_blocks + r.stats.aborted_blocks < blocks:
            await clock.advance(r.frame_duration_s)
        pulses = r.stats.sifted_bits / LinkPhysics.from_link(link).expected_sifted_fraction()
        measured = r.stats.delivered_bits / pulses
    a = [(b.block_id, b.material) for b in sa.drain()]
    assert a == [(b.block_id, b.material) for b in sb.drain()]
    curve = finite_key_rate(LinkPhysics.from_link(link), block_bits, eps_sec=1e-10)
    return measured, curve


@pytest.mark.parametrize(("length_km", "seed"), [(10.0, 41), (50.0, 42), (100.0, 43)])
def test_twin_key_per_pulse_reaches_the_finite_key_curve(length_km: float, seed: int) -> None:
    # the Done-when of issue 22: at least 0.8x the bound's curve for the same link and
    # block size (the curve assumes f_EC = 1.16; the twin leaks what it really leaks)
    measured, curve = asyncio.run(_key_per_pulse(length_km, 400_000, 3, seed))
    assert curve > 0
    assert measured >= 0.8 * curve
    assert measured <= 1.3 * curve


def test_finite_key_curve_approaches_the_asymptote_of_the_same_protocol() -> None:
    p = _physics(25.0)
    rates = [finite_key_rate(p, n, eps_sec=1e-10) for n in (1e5, 1e6, 1e8, 1e12)]
    assert rates == sorted(rates)
    # infinite key, exact decoy estimates: key basis of every intensity, q_x^2 = 1/4
    y0 = p.dark_count_probability
    y1, e1 = single_photon_statistics(p)
    asymptote = 0.0
    for pk, mu in zip(p.class_probabilities, p.intensities, strict=True):
        s = signal_statistics(p, mu)
        asymptote += pk * (y0 * math.exp(-mu) + y1 * mu * math.exp(-mu) * (
            1 - binary_entropy(e1)) - 1.16 * s.gain * binary_entropy(s.error_rate))
    asymptote *= 0.25
    # three intensities bound Y1 and e1 only to within a few per cent even for infinite keys
    assert 0.9 * asymptote < rates[-1] <= asymptote
