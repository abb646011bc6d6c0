"""Finite decoy-state analysis of the measured links: MDI-QKD and SNS-TF-QKD.

:mod:`keyplane.physical.measured` takes the decoy estimates at their asymptotic limit (the
single-photon yields are the model's). Here they are *bounded* the way a real system does
it, from a finite number ``N`` of pulses split over a few intensities, each gain known only
within its statistical fluctuation:

* **Fluctuations** (Ma, Razavi, "Statistical fluctuation analysis for
  measurement-device-independent QKD", PRA 86, 052305 (2012), eq. 7): a gain ``Q`` measured
  over ``M`` pulses lies in ``Q (1 -+ n_alpha / sqrt(M Q))`` except with the Gaussian tail
  of ``n_alpha`` standard deviations (``n_alpha = 5.3``: ~1e-7 per bound).
* **MDI-QKD** (vacuum + weak decoy + signal, both users, X basis for estimation; the
  analytic bounds of Xu, Xu, Lo, "Protocol choice and parameter optimization in
  decoy-state MDI-QKD", PRA 89, 052333 (2014)):
  ``S_x = e^{2x} Q_xx - e^x (Q_x0 + Q_0x) + Q_00 = sum_{n,m>=1} x^{n+m} Y_nm / (n! m!)``, so
  ``Y11 >= (mu^3 S_nu - nu^3 S_mu) / (mu^2 nu^2 (mu - nu))`` (every other term of the
  difference is <= 0 for ``mu > nu``) and ``e11 Y11 <= T_nu / nu^2`` with ``T`` the same
  combination of error gains ``Q E``. Each gain enters at the side of its fluctuation
  interval that makes the bound worst. Key: ``R = p_Z^2 [mu^2 e^{-2 mu} Y11^L
  (1 - h(e11^U)) - f Q_Z h(E_Z)]`` per pulse pair.
* **SNS-TF-QKD** (Wang, Yu, Hu, PRA 98, 062323 (2018); finite size after Jiang, Yu, Hu,
  Wang, PRA 100, 062337 (2019)): X windows in which one user sends ``mu1`` or ``mu2`` (the
  other vacuum) bound the single-photon yield of the Z windows,
  ``s1 >= (mu2^2 e^{mu1} S_1 - mu1^2 e^{mu2} S_2 - (mu2^2 - mu1^2) S_0) /
  (mu1 mu2 (mu2 - mu1))`` (the BB84 decoy bound of Ma et al., PRA 72, 012326 (2005));
  ``n1 = 2 eps (1 - eps) mu e^{-mu} s1^L`` per window.

Limits: the phase error of SNS single photons is the model's ``e1`` plus a Hoeffding term
over the bounded single-photon events (the phase-matched X windows of Wang-Yu-Hu are not
modelled); the privacy-amplification terms of a composable finite-key proof (Curty et al.,
Nat. Commun. 5, 3732 (2014)) are not subtracted, only the decoy estimates are finite. The
emulated links still use the asymptotic estimates per block (they do not emulate decoy
pulses); these functions serve the analytic figures (bench/measured_links.py --finite).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from keyplane.physical.bits import binary_entropy
from keyplane.physical.measured import E0, EC_EFFICIENCY, SNS_SEND_PROBABILITY, MeasuredPhysics

__all__ = ["FiniteDecoy", "FiniteDecoyEstimate", "finite_decoy_rate", "fluctuation",
           "mdi_gain_x", "sns_window_yield"]


def _h(p: float) -> float:
    return binary_entropy(min(max(p, 0.0), 0.5))


@dataclass(frozen=True)
class FiniteDecoy:
    """How the pulses are split and how sure the bounds must be.

    Args:
        n_pulses: pulse pairs (MDI-QKD) or windows (TF-QKD) sent in total.
        nu: MDI-QKD weak decoy intensity (the signal is the link's ``mu``).
        p_z: MDI-QKD probability of the Z (key) basis per user (None: the link's
            ``z_basis_probability``, as the asymptotic rate takes it); X pulses pick signal,
            weak decoy or vacuum with equal probability.
        mu1, mu2: SNS-TF-QKD decoy intensities of the X windows.
        p_z_window: SNS-TF-QKD share of Z windows (None: both users in Z, ``p_z^2``, as
            the asymptotic rate takes it); X windows pick 0, ``mu1``, ``mu2`` with equal
            probability per user.
        n_alpha: standard deviations of each fluctuation bound.
        ec_efficiency: ``f_EC``.
    """

    n_pulses: float = 1e12
    nu: float = 0.1
    p_z: float | None = None
    mu1: float = 0.1
    mu2: float = 0.4
    p_z_window: float | None = None
    n_alpha: float = 5.3
    ec_efficiency: float = EC_EFFICIENCY


@dataclass(frozen=True)
class FiniteDecoyEstimate:
    """The bounds and the rate they give (per pulse pair or window)."""

    single_yield_lower: float
    """``Y11^L`` (MDI-QKD) or ``s1^L`` (TF-QKD)."""
    single_yield_model: float
    """What the model's asymptotic limit takes (the bound's target)."""
    phase_error_upper: float
    rate: float


def fluctuation(q: float, m: float, n_alpha: float, *, upper: bool) -> float:
    """``Q (1 +- n_alpha / sqrt(M Q))`` (Ma-Razavi 2012), clamped to ``[0, 1]``; a gain
    with no expected count (``M Q`` < 1e-300) stays as it is."""
    if m <= 0 or q <= 0:
        return q
    d = n_alpha * math.sqrt(q / m)
    return min(1.0, q + d) if upper else max(0.0, q - d)


def mdi_gain_x(p: MeasuredPhysics, a: float, b: float) -> tuple[float, float]:
    """``(Q, E Q)`` of X-basis pulses of intensities ``a`` (Alice) and ``b`` (Bob).

    Ma, Razavi, PRA 86, 062319 (2012): with ``x = sqrt(eta_a a eta_b b) / 2`` and
    ``y = (1 - pd) e^{-(eta_a a + eta_b b) / 4}``,
    ``Q = 2 y^2 [1 + 2 y^2 - 4 y I0(x) + I0(2x)]``,
    ``E Q = e0 Q - 2 (e0 - e_d) y^2 [I0(2x) - 1]`` (symmetric arms here).
    """
    eta, pd, ed = p.eta_arm, p.dark_count_probability, p.misalignment
    x = math.sqrt(eta * a * eta * b) / 2.0
    y = (1 - pd) * math.exp(-(eta * a + eta * b) / 4.0)
    i0x, i02x = float(np.i0(x)), float(np.i0(2.0 * x))
    q = 2 * y * y * (1 + 2 * y * y - 4 * y * i0x + i02x)
    return q, E0 * q - 2 * (E0 - ed) * y * y * (i02x - 1)


def sns_window_yield(p: MeasuredPhysics, a: float) -> float:
    """Probability of exactly one click in an X window where one user sends ``a`` (phase
    randomized) and the other nothing: ``2 (1-pd) e^{-eta a/2} [1 - (1-pd) e^{-eta a/2}]``
    (``a = 0``: ``2 pd (1-pd)``), Wang-Yu-Hu 2018."""
    pd = p.dark_count_probability
    k = math.exp(-p.eta_arm * a / 2)
    return 2 * (1 - pd) * k * (1 - (1 - pd) * k)


def _mdi(p: MeasuredPhysics, fd: FiniteDecoy) -> FiniteDecoyEstimate:
    mu, nu = p.mu, fd.nu
    if not 0 < nu < mu:
        raise ValueError("MDI-QKD finite decoy needs 0 < nu < mu")
    qz, ez, _, _, y11, _ = p._mdi()
    pz = fd.p_z if fd.p_z is not None else max(p.z_basis_probability,
                                                1 - p.z_basis_probability)
    m = fd.n_pulses * (1 - pz) ** 2 / 9  # X pulses per intensity pair

    def gain(a: float, b: float, *, upper: bool) -> float:
        return fluctuation(mdi_gain_x(p, a, b)[0], m, fd.n_alpha, upper=upper)

    def err(a: float, b: float, *, upper: bool) -> float:
        return fluctuation(mdi_gain_x(p, a, b)[1], m, fd.n_alpha, upper=upper)

    s_nu_low = (math.exp(2 * nu) * gain(nu, nu, upper=False)
                - math.exp(nu) * (gain(nu, 0, upper=True) + gain(0, nu, upper=True)))
    s_mu_up = (math.exp(2 * mu) * gain(mu, mu, upper=True)
               - math.exp(mu) * (gain(mu, 0, upper=False) + gain(0, mu, upper=False)))
    y11_low = (mu ** 3 * s_nu_low - nu ** 3 * s_mu_up
               + (mu ** 3 - nu ** 3) * gain(0, 0, upper=False)) / (mu * mu * nu * nu * (mu - nu))
    y11_low = max(0.0, y11_low)
    t_nu_up = (math.exp(2 * nu) * err(nu, nu, upper=True)
               - math.exp(nu) * (err(nu, 0, upper=False) + err(0, nu, upper=False))
               + err(0, 0, upper=True))
    e11_up = min(E0, t_nu_up / (nu * nu * y11_low)) if y11_low > 0 else E0
    # the key basis' own figures fluctuate too (N p_Z^2 signal pairs)
    mz = fd.n_pulses * pz ** 2
    qz_up = fluctuation(qz, mz, fd.n_alpha, upper=True)
    ez_up = min(E0, fluctuation(qz * ez, mz, fd.n_alpha, upper=True) / qz) if qz > 0 else E0
    r = pz ** 2 * (mu * mu * math.exp(-2 * mu) * y11_low * (1 - _h(e11_up))
                       - fd.ec_efficiency * qz_up * _h(ez_up))
    return FiniteDecoyEstimate(y11_low, y11, e11_up, max(0.0, r))


def _sns(p: MeasuredPhysics, fd: FiniteDecoy) -> FiniteDecoyEstimate:
    mu1, mu2 = fd.mu1, fd.mu2
    if not 0 < mu1 < mu2:
        raise ValueError("SNS-TF-QKD finite decoy needs 0 < mu1 < mu2")
    nt, ez, _, e1 = p._sns()
    pz = max(p.z_basis_probability, 1 - p.z_basis_probability)
    pw = fd.p_z_window if fd.p_z_window is not None else pz * pz
    eta, pd = p.eta_arm, p.dark_count_probability
    s1_model = eta * (1 - pd) + 2 * (1 - eta) * pd * (1 - pd)
    # X windows: each user picks 0, mu1, mu2 (1/3 each); (a, 0) and (0, a) both count
    m_one = fd.n_pulses * (1 - pw) * 2 / 9
    m_zero = fd.n_pulses * (1 - pw) / 9
    s_1 = fluctuation(sns_window_yield(p, mu1), m_one, fd.n_alpha, upper=False)
    s_2 = fluctuation(sns_window_yield(p, mu2), m_one, fd.n_alpha, upper=True)
    s_0 = fluctuation(sns_window_yield(p, 0.0), m_zero, fd.n_alpha, upper=True)
    s1_low = max(0.0, (mu2 ** 2 * math.exp(mu1) * s_1 - mu1 ** 2 * math.exp(mu2) * s_2
                       - (mu2 ** 2 - mu1 ** 2) * s_0) / (mu1 * mu2 * (mu2 - mu1)))
    eps, mu = SNS_SEND_PROBABILITY, p.mu
    n1 = 2 * eps * (1 - eps) * mu * math.exp(-mu) * s1_low  # per Z window
    n_single = fd.n_pulses * pw * n1
    e1_up = min(E0, e1 + math.sqrt(math.log(1 / 1e-10) / (2 * n_single))) \
        if n_single > 0 else E0
    mz = fd.n_pulses * pw
    nt_up = fluctuation(nt, mz, fd.n_alpha, upper=True)
    ez_up = min(E0, fluctuation(nt * ez, mz, fd.n_alpha, upper=True) / nt) if nt > 0 else E0
    r = pw * (n1 * (1 - _h(e1_up)) - fd.ec_efficiency * nt_up * _h(ez_up))
    return FiniteDecoyEstimate(s1_low, s1_model, e1_up, max(0.0, r))


def finite_decoy_rate(p: MeasuredPhysics, fd: FiniteDecoy | None = None
                      ) -> FiniteDecoyEstimate:
    """Secret bits per pulse pair (MDI-QKD) or window (TF-QKD) with finite decoys.

    Raises:
        ValueError: BBM92 (no decoy states), or intensities out of order.
    """
    fd = fd or FiniteDecoy()
    if p.protocol == "mdi-qkd":
        return _mdi(p, fd)
    if p.protocol == "tf-qkd":
        return _sns(p, fd)
    raise ValueError(f"{p.protocol} has no decoy states")
