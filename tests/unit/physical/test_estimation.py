"""Decoy-state bounds, secure length and the analytic key rate."""

from __future__ import annotations

import math

import pytest

from keyplane.config import QuantumLink
from keyplane.physical import (
    DecoyCounts,
    LinkPhysics,
    asymptotic_key_rate,
    decoy_bounds,
    plob_bound,
    secure_length,
)
from keyplane.physical.physics import DARK_COUNT_ERROR


def _physics(length_km: float) -> LinkPhysics:
    return LinkPhysics.from_link(QuantumLink(endpoints=("a", "b"), length_km=length_km))


def _expected_counts(p: LinkPhysics, pulses: int) -> DecoyCounts:
    """Noise-free counts: the bounds must then bracket the true single-photon values."""
    n = [round(pulses * x) for x in p.class_probabilities]
    det = [round(n[c] * p.gain(mu)) for c, mu in enumerate(p.intensities)]
    sifted = [d // 2 for d in det]
    errors = [round(s * p.error_rate(mu)) for s, mu in zip(sifted, p.intensities, strict=True)]
    return DecoyCounts(pulses=tuple(n), detections=tuple(det), sifted=tuple(sifted),
                       errors=tuple(errors))  # type: ignore[arg-type]


@pytest.mark.parametrize("length_km", [10.0, 50.0, 100.0])
def test_decoy_bounds_bracket_true_single_photon_yield_and_error(length_km: float) -> None:
    p = _physics(length_km)
    eta, y0 = p.transmittance(), p.dark_count_probability
    y1 = y0 + eta - y0 * eta
    e1 = (DARK_COUNT_ERROR * y0 + p.misalignment * eta) / y1
    b = decoy_bounds(p.intensities, _expected_counts(p, 10**12), 1e-10)
    assert 0.85 * y1 < b.y1_lower <= y1
    assert e1 <= b.e1_upper < e1 + 0.01


def test_decoy_bounds_tighten_with_more_pulses() -> None:
    p = _physics(25.0)
    small = decoy_bounds(p.intensities, _expected_counts(p, 10**8), 1e-10)
    large = decoy_bounds(p.intensities, _expected_counts(p, 10**11), 1e-10)
    assert small.y1_lower < large.y1_lower
    assert small.e1_upper > large.e1_upper


def test_secure_length_drops_with_leakage_and_is_zero_when_overspent() -> None:
    p = _physics(25.0)
    b = decoy_bounds(p.intensities, _expected_counts(p, 10**10), 1e-10)
    a = secure_length(100_000, b, p.decoy.mu_signal, 10_000, 127, 1e-10)
    c = secure_length(100_000, b, p.decoy.mu_signal, 20_000, 127, 1e-10)
    assert 0 < c < a and a - c == pytest.approx(10_000, abs=1)
    assert secure_length(100_000, b, p.decoy.mu_signal, 100_000, 127, 1e-10) == 0


def test_analytic_rate_follows_formula_and_stays_below_plob() -> None:
    previous = math.inf
    for length in range(0, 201, 10):
        p = _physics(float(length))
        r = asymptotic_key_rate(p)
        assert r < plob_bound(p.transmittance())
        assert r <= previous
        previous = r
    # the linear regime: R ~ eta, 10 dB more loss gives ~10x less key
    r50, r100 = asymptotic_key_rate(_physics(50.0)), asymptotic_key_rate(_physics(100.0))
    assert r50 / r100 == pytest.approx(10.0, rel=0.1)


def test_analytic_rate_vanishes_at_long_distance() -> None:
    assert asymptotic_key_rate(_physics(300.0)) == 0.0
