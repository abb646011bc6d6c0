"""Finite decoy-state bounds of MDI-QKD and SNS-TF-QKD (keyplane.physical.finite_decoy).

The published anchor is the theorem the bounds come with: with weak decoys and no
statistical fluctuation, the vacuum + weak decoy bounds reach the infinite-decoy limit
(Xu, Xu, Lo, PRA 89, 052333 (2014) for MDI-QKD; Wang, Yu, Hu, PRA 98, 062323 (2018) for
SNS-TF-QKD), i.e. the asymptotic curves of keyplane.physical.measured (Xu, Curty, Qi, Lo,
PRA 87, 052323 (2013) and Wang-Yu-Hu's formula). Tolerances: 4 % (MDI-QKD: the weak decoy
of 0.002 still leaves the two-photon terms) and 0.1 % (TF-QKD)."""

from __future__ import annotations

import pytest

from keyplane.config import QuantumLink
from keyplane.physical.finite_decoy import FiniteDecoy, finite_decoy_rate, fluctuation
from keyplane.physical.measured import MeasuredPhysics, measured_physics

SWEEP_KM = {"mdi-qkd": (0, 20, 50, 80, 120, 160), "tf-qkd": (0, 50, 100, 150, 200)}


def _physics(protocol: str, km: float) -> MeasuredPhysics:
    m = measured_physics(QuantumLink(endpoints=("a", "b"), length_km=km, protocol=protocol,  # type: ignore[arg-type]
                                     station="m"))
    assert m is not None
    return m


@pytest.mark.parametrize(("protocol", "weak", "tolerance"), [
    ("mdi-qkd", {"nu": 0.002}, 0.04), ("tf-qkd", {"mu1": 0.002, "mu2": 0.02}, 0.001)])
def test_bounds_reach_the_infinite_decoy_curve_without_fluctuations(
        protocol: str, weak: dict[str, float], tolerance: float) -> None:
    for km in SWEEP_KM[protocol]:
        m = _physics(protocol, km)
        asymptotic = m.asymptotic_rate()
        assert asymptotic > 0, (protocol, km)
        limit = finite_decoy_rate(m, FiniteDecoy(n_pulses=1e40, **weak))
        assert limit.rate <= asymptotic * (1 + 1e-9), (protocol, km)
        assert limit.rate >= asymptotic * (1 - tolerance), (protocol, km, limit, asymptotic)


@pytest.mark.parametrize("protocol", ["mdi-qkd", "tf-qkd"])
def test_finite_bounds_are_bounds_and_tighten_with_more_pulses(protocol: str) -> None:
    for km in SWEEP_KM[protocol]:
        m = _physics(protocol, km)
        rates = []
        for n in (1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e16):
            est = finite_decoy_rate(m, FiniteDecoy(n_pulses=n))
            # a lower bound on the single-photon yield never exceeds the true one
            assert est.single_yield_lower <= est.single_yield_model * (1 + 1e-9)
            rates.append(est.rate)
        assert rates == sorted(rates), (protocol, km, rates)  # more pulses, more key
        assert rates[-1] <= m.asymptotic_rate() * (1 + 1e-9)


def test_fewer_pulses_reach_less_far() -> None:
    def reach(protocol: str, n: float) -> int:
        return max((km for km in range(0, 400, 5)
                    if finite_decoy_rate(_physics(protocol, km),
                                         FiniteDecoy(n_pulses=n)).rate > 0), default=-1)

    for protocol in ("mdi-qkd", "tf-qkd"):
        reaches = [reach(protocol, n) for n in (1e11, 1e13, 1e15)]
        assert reaches == sorted(reaches) and reaches[0] < reaches[-1], (protocol, reaches)
    # TF-QKD's square-root scaling keeps it further than MDI-QKD at the same N
    assert reach("tf-qkd", 1e13) > reach("mdi-qkd", 1e13)


def test_fluctuation_interval_and_bad_input() -> None:
    assert fluctuation(1e-3, 1e8, 5.3, upper=True) == pytest.approx(1e-3 * (1 + 5.3 / 1e5 ** 0.5))
    assert fluctuation(1e-3, 1e8, 5.3, upper=False) == pytest.approx(1e-3 * (1 - 5.3 / 1e5 ** 0.5))
    assert fluctuation(1e-9, 1e3, 5.3, upper=False) == 0.0
    with pytest.raises(ValueError, match="no decoy states"):
        finite_decoy_rate(_physics("bbm92", 10))
    with pytest.raises(ValueError, match="0 < nu < mu"):
        finite_decoy_rate(_physics("mdi-qkd", 10), FiniteDecoy(nu=0.9))
