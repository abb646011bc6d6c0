"""Parameter estimation: decoy-state bounds, the secure key length, asymptotic key rates.

Decoy-state bounds (Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005), "weak + vacuum" and general
two-decoy form, eqs. 34-38; Lo, Ma, Chen, PRL 94, 230504 (2005)), with signal ``mu`` and
decoys ``nu1 > nu2 >= 0``::

    Y0_L = max(0, (nu1*Q_nu2*e^nu2 - nu2*Q_nu1*e^nu1) / (nu1 - nu2))
    Y1_L = mu / (mu*nu1 - mu*nu2 - nu1^2 + nu2^2)
           * (Q_nu1 e^nu1 - Q_nu2 e^nu2 - (nu1^2 - nu2^2)/mu^2 * (Q_mu e^mu - Y0_L))
    e1_U = (E_nu1 Q_nu1 e^nu1 - E_nu2 Q_nu2 e^nu2) / ((nu1 - nu2) * Y1_L)
    Q1_L = Y1_L * mu * e^-mu

Finite size: every measured gain and error-weighted gain is replaced by its worst-case
value at ``u`` standard deviations (Ma et al., section V): ``X -> X (1 ± u/sqrt(counts))``
with ``u = Phi^-1(1 - epsilon)`` (6.36 at epsilon = 1e-10), the sign chosen to make
``Y1_L`` smaller and ``e1_U`` larger.

Secure length of a block of ``n`` key bits (GLLP, Gottesman-Lo-Lütkenhaus-Preskill,
QIC 4, 325 (2004), with decoy bounds; finite-size terms as in Lim et al., PRA 89, 022307
(2014))::

    n1 = n * Q1_L / Q_mu_U          (single-photon events among the key bits)
    n0 = n * Y0_L e^-mu / Q_mu_U    (vacuum events: perfectly secret)
    l  = n0 + n1 (1 - h(e1_U)) - leak_EC - leak_verify - 2 log2(1 / (2 eps_PA))

Asymptotic rate (``protocol: analytic``), per pulse, with the true single-photon yield
``Y1 = Y0 + eta - Y0*eta`` and error ``e1 = (e0 Y0 + e_d eta)/Y1``::

    R = q * (Q0 + Q1 (1 - h(e1)) - f * Q_mu * h(E_mu)),   Q1 = Y1 mu e^-mu, Q0 = Y0 e^-mu

``q`` = sifting factor x share of signal pulses. PLOB bound (Pirandola et al., Nat. Commun.
8, 15043 (2017)): no protocol beats ``-log2(1 - eta)`` bits per pulse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.special import erfcinv

from keyplane.physical.analytic import analytic_key_rate
from keyplane.physical.bits import binary_entropy
from keyplane.physical.physics import DARK_COUNT_ERROR, LinkPhysics

__all__ = [
    "DecoyBounds",
    "DecoyCounts",
    "asymptotic_key_rate",
    "decoy_bounds",
    "fluctuation_sigmas",
    "plob_bound",
    "secure_length",
]


@dataclass(frozen=True, slots=True)
class DecoyCounts:
    """Counts both modules agree on after sifting, per intensity class (signal, decoy,
    vacuum): pulses sent, detections, sifted events and sifted errors. Signal-class
    errors come from the parameter-estimation sample (``sifted`` is then the sample size).
    """

    pulses: tuple[int, int, int]
    detections: tuple[int, int, int]
    sifted: tuple[int, int, int]
    errors: tuple[int, int, int]

    def gain(self, c: int) -> float:
        """Measured gain ``Q`` of class ``c``."""
        return self.detections[c] / self.pulses[c] if self.pulses[c] else 0.0

    def error_rate(self, c: int) -> float:
        """Measured error rate ``E`` of class ``c`` (1/2 if nothing was sifted)."""
        return self.errors[c] / self.sifted[c] if self.sifted[c] else DARK_COUNT_ERROR


@dataclass(frozen=True, slots=True)
class DecoyBounds:
    """Bounds on the vacuum and single-photon contributions of the signal pulses."""

    y0_lower: float
    y1_lower: float
    e1_upper: float
    q1_lower: float
    q_signal_upper: float

    @property
    def single_photon_fraction(self) -> float:
        """Lower bound on the share of signal detections that were single photons."""
        return self.q1_lower / self.q_signal_upper if self.q_signal_upper > 0 else 0.0


def fluctuation_sigmas(epsilon: float) -> float:
    """``u`` with ``P(N(0,1) > u) = epsilon`` (one-sided Gaussian tail)."""
    return float(math.sqrt(2.0) * erfcinv(2.0 * epsilon))


def _bound(value: float, count: int, u: float, upper: bool) -> float:
    if count <= 0:
        return value if upper else 0.0
    delta = u / math.sqrt(count)
    return value * (1.0 + delta) if upper else max(0.0, value * (1.0 - delta))


def decoy_bounds(intensities: tuple[float, float, float], counts: DecoyCounts,
                 epsilon: float) -> DecoyBounds:
    """Finite-size decoy-state bounds (Ma et al. 2005) from agreed counts.

    Args:
        intensities: (mu, nu1, nu2), ``mu > nu1 > nu2 >= 0``.
        counts: the block's counts.
        epsilon: failure probability of each fluctuation bound.
    """
    mu, nu1, nu2 = intensities
    u = fluctuation_sigmas(epsilon)
    q_mu_u = _bound(counts.gain(0), counts.detections[0], u, upper=True)
    q1_l = _bound(counts.gain(1), counts.detections[1], u, upper=False)
    q1_u = _bound(counts.gain(1), counts.detections[1], u, upper=True)
    q2_l = _bound(counts.gain(2), counts.detections[2], u, upper=False)
    q2_u = _bound(counts.gain(2), counts.detections[2], u, upper=True)
    y0_l = max(0.0, (nu1 * q2_l * math.exp(nu2) - nu2 * q1_u * math.exp(nu1)) / (nu1 - nu2))
    denom = mu * nu1 - mu * nu2 - nu1 * nu1 + nu2 * nu2
    y1_l = mu / denom * (q1_l * math.exp(nu1) - q2_u * math.exp(nu2)
                         - (nu1 * nu1 - nu2 * nu2) / (mu * mu) * (q_mu_u * math.exp(mu) - y0_l))
    y1_l = max(0.0, y1_l)
    # error-weighted gains E*Q: bound through the error counts
    eq1 = counts.error_rate(1) * counts.gain(1)
    eq2 = counts.error_rate(2) * counts.gain(2)
    eq1_u = _bound(eq1, counts.errors[1], u, upper=True) if counts.errors[1] else \
        _bound(counts.gain(1), counts.detections[1], u, upper=True) * u * u / max(
            1, counts.sifted[1])
    eq2_l = _bound(eq2, counts.errors[2], u, upper=False)
    if y1_l > 0.0:
        e1_u = (eq1_u * math.exp(nu1) - eq2_l * math.exp(nu2)) / ((nu1 - nu2) * y1_l)
        e1_u = min(0.5, max(0.0, e1_u))
    else:
        e1_u = 0.5
    return DecoyBounds(y0_lower=y0_l, y1_lower=y1_l, e1_upper=e1_u,
                       q1_lower=y1_l * mu * math.exp(-mu), q_signal_upper=q_mu_u)


def secure_length(n_key_bits: int, bounds: DecoyBounds, mu: float, leaked_ec_bits: int,
                  leaked_verify_bits: int, epsilon_pa: float) -> int:
    """GLLP secure key length of one block, in bits (0 when nothing is secret).

    Args:
        n_key_bits: reconciled key bits entering privacy amplification.
        bounds: the block's decoy-state bounds.
        mu: signal intensity.
        leaked_ec_bits: bits disclosed by error correction.
        leaked_verify_bits: bits disclosed by the verification tag.
        epsilon_pa: privacy-amplification failure probability.
    """
    if bounds.q_signal_upper <= 0.0:
        return 0
    n1 = n_key_bits * bounds.q1_lower / bounds.q_signal_upper
    n0 = n_key_bits * bounds.y0_lower * math.exp(-mu) / bounds.q_signal_upper
    length = (n0 + n1 * (1.0 - binary_entropy(bounds.e1_upper)) - leaked_ec_bits
              - leaked_verify_bits - 2.0 * math.log2(1.0 / (2.0 * epsilon_pa)))
    return max(0, min(n_key_bits, math.floor(length)))


def asymptotic_key_rate(physics: LinkPhysics, ec_efficiency: float = 1.16) -> float:
    """Decoy-state secret key rate in bits per pulse (infinite decoys, infinite key): GLLP
    with the vacuum term, faults and eavesdropper included
    (:func:`keyplane.physical.analytic.analytic_key_rate`, no abort threshold).

    Args:
        physics: the link.
        ec_efficiency: ``f`` of the error correction.
    """
    return analytic_key_rate(physics, formula="gllp-vacuum", ec_efficiency=ec_efficiency)


def plob_bound(eta: float) -> float:
    """PLOB repeaterless bound ``-log2(1 - eta)`` in bits per pulse."""
    if eta >= 1.0:
        return math.inf
    return -math.log2(1.0 - eta)
