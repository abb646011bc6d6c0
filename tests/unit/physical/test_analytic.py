"""Analytic link model: every fault moves it as it moves the emulator; the reference GLLP
rate reproduces the published GYS cut-off."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq, minimize_scalar

from keyplane.clock import VirtualClock
from keyplane.config import DecoySettings, Eavesdropper, PostProcessing, QuantumLink
from keyplane.physical import LinkPhysics, LinkRunner, MemoryKeySink, emulate_frame
from keyplane.physical.analytic import (
    analytic_key_rate,
    analytic_qber,
    analytic_rate_bps,
    single_photon_statistics,
)

# Tolerance of the analytic QBER against the emulated one: 5 standard errors of the
# emulated estimate plus 0.001 absolute (the analytic model and the emulator share the
# physics; what is left is sampling noise).
QBER_SIGMAS = 5.0
QBER_ABS = 1e-3


def _physics(length_km: float = 10.0, **kw: object) -> LinkPhysics:
    return LinkPhysics.from_link(QuantumLink(endpoints=("a", "b"), length_km=length_km, **kw))


def _emulated_qber(p: LinkPhysics, pulses: int, seed: int) -> tuple[float, int]:
    alice, bob = emulate_frame(p, pulses, np.random.default_rng(seed))
    sift = (alice.bases == bob.bases) & (alice.intensity_class == 0)
    n = int(sift.sum())
    return float(np.count_nonzero(alice.bits[sift] != bob.bits[sift])) / max(n, 1), n


SWEEP = [
    # (length, extra loss dB, misalignment, eve position fraction, eve fraction)
    (10.0, 0.0, 0.015, 0.5, 0.0),
    (10.0, 0.0, 0.015, 0.5, 0.1),
    (10.0, 0.0, 0.015, 0.2, 0.25),
    (10.0, 0.0, 0.015, 0.9, 0.5),
    (10.0, 0.0, 0.015, 0.0, 1.0),
    (30.0, 6.0, 0.015, 0.5, 0.0),
    (30.0, 6.0, 0.015, 0.5, 0.25),
    (50.0, 0.0, 0.0, 0.5, 0.0),
    (50.0, 0.0, 0.04, 0.5, 0.0),
    (50.0, 3.0, 0.06, 0.5, 0.15),
    (80.0, 10.0, 0.015, 0.5, 0.0),
]


@pytest.mark.parametrize(("length", "extra_db", "e_d", "at", "fraction"), SWEEP)
def test_analytic_qber_agrees_with_the_emulator_under_every_fault(
        length: float, extra_db: float, e_d: float, at: float, fraction: float) -> None:
    p = _physics(length, misalignment=e_d).with_changes(
        extra_loss_db=extra_db,
        eavesdropper=Eavesdropper(position_km=at * length, fraction=fraction)
        if fraction else None)
    # enough pulses for ~4e5 sifted signal bits whatever the loss
    pulses = int(min(2e9, 4e5 / (0.4 * p.gain(p.decoy.mu_signal))))
    measured, n = _emulated_qber(p, pulses, seed=int(length * 100 + extra_db * 10 + fraction * 7))
    expected = analytic_qber(p)
    sigma = math.sqrt(expected * (1 - expected) / n)
    assert abs(measured - expected) <= QBER_SIGMAS * sigma + QBER_ABS


def test_cut_link_qber_is_that_of_dark_counts_and_rate_is_zero() -> None:
    p = _physics(10.0).with_changes(cut=True)
    assert analytic_qber(p) == pytest.approx(0.5)
    assert analytic_key_rate(p) == 0.0


def test_analytic_rate_falls_with_each_fault() -> None:
    base = _physics(25.0)
    r0 = analytic_key_rate(base, qber_threshold=0.11)
    assert r0 > 0
    assert analytic_key_rate(base.with_changes(extra_loss_db=6.0)) < r0 / 3
    assert analytic_key_rate(base.with_changes(misalignment=0.04)) < r0 / 2
    eve = [analytic_key_rate(base.with_changes(eavesdropper=Eavesdropper(
        position_km=12.5, fraction=f)), qber_threshold=0.11) for f in (0.1, 0.2, 0.3, 1.0)]
    assert r0 > eve[0] > eve[1] > eve[2] == eve[3] == 0.0
    # intercept-resend of a fifth of the pulses leaves under a sixth of the key
    assert eve[1] < r0 / 6


def test_single_photon_error_under_full_intercept_resend_is_a_quarter() -> None:
    p = _physics(20.0, misalignment=0.0).with_changes(
        eavesdropper=Eavesdropper(position_km=0.0, fraction=1.0))
    _, e1 = single_photon_statistics(p)
    assert e1 == pytest.approx(0.25, abs=1e-3)


def test_runner_analytic_rate_follows_faults() -> None:
    link = QuantumLink(endpoints=("a", "b"), length_km=20.0, protocol="analytic")
    runner = LinkRunner(link, clock=VirtualClock(), seed=1, alice_sink=MemoryKeySink(),
                        bob_sink=MemoryKeySink())
    healthy = runner.analytic_rate_bps()
    assert healthy == pytest.approx(analytic_rate_bps(LinkPhysics.from_link(link),
                                                      qber_threshold=0.11))
    runner.set_eavesdropper(Eavesdropper(position_km=10.0, fraction=0.3))
    assert runner.analytic_rate_bps() == 0.0
    runner.set_eavesdropper(None)
    runner.degrade(6.0)
    assert 0 < runner.analytic_rate_bps() < healthy / 3
    runner.cut()
    assert runner.analytic_rate_bps() == 0.0


def _gys(length_km: float, mu: float, formula: str) -> float:
    """Ma, Qi, Zhao, Lo (PRA 72, 012326), Table I, GYS: 0.21 dB/km, e_d 3.3 %, Y0 1.7e-6,
    eta_Bob 4.5 %, f(e) = 1.22, q = 1/2 (every pulse a signal pulse, unbiased bases)."""
    link = QuantumLink(
        endpoints=("a", "b"), length_km=length_km, attenuation_db_per_km=0.21,
        insertion_loss_db=0.0, detector_efficiency=0.045, dark_count_probability=1.7e-6,
        misalignment=0.033,
        decoy=DecoySettings(mu_signal=mu, mu_decoy=0.0, p_signal=1.0, p_decoy=0.0,
                            p_vacuum=0.0),
        postprocessing=PostProcessing(analytic_formula=formula))  # type: ignore[arg-type]
    return analytic_key_rate(LinkPhysics.from_link(link), formula=formula,  # type: ignore[arg-type]
                             ec_efficiency=1.22)


def _optimal(length_km: float, formula: str) -> float:
    res = minimize_scalar(lambda mu: -_gys(length_km, mu, formula), bounds=(0.05, 1.0),
                          method="bounded", options={"xatol": 1e-4})
    return float(-res.fun)


def _cutoff(formula: str) -> float:
    return float(brentq(lambda km: _optimal(km, formula) - 1e-12, 100.0, 200.0, xtol=0.01))


def test_reference_gllp_cutoff_with_gys_parameters_is_142_km() -> None:
    assert abs(_cutoff("gllp") - 142.0) <= 1.0


def test_gllp_with_vacuum_term_reaches_a_few_km_further() -> None:
    ref, vac = _cutoff("gllp"), _cutoff("gllp-vacuum")
    assert 2.0 < vac - ref < 8.0
    # at short range the vacuum term is negligible
    assert _optimal(20.0, "gllp-vacuum") == pytest.approx(_optimal(20.0, "gllp"), rel=1e-3)


def test_unknown_formula_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown analytic formula"):
        analytic_key_rate(_physics(), formula="bogus")  # type: ignore[arg-type]
