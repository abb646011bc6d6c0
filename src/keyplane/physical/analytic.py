"""Analytic link model: expected statistics and asymptotic key rates, no per-bit simulation.

The analytic mode (``protocol: analytic``) and the hardware-like pacing of emulated links
need a link's rate from its physics alone. Everything here is a pure function of a
:class:`~keyplane.physical.physics.LinkPhysics`, so it feels every fault the emulator
models: extra loss and cuts (through the transmittance), misalignment, and the
intercept-resend eavesdropper.

Photon-number yields (Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005), section II), with the
eavesdropper of :mod:`.physics` intercepting a ``fraction`` ``f`` of the pulses::

    clear:        Y_n = 1 - (1 - Y0)(1 - eta)^n
                  e_n Y_n = Y0/2 + e_d (1 - (1 - eta)^n)
    intercepted:  Y_n = 1 - (1 - Y0)(1 - (1 - (1 - eta_AE)^n) eta_EB)
                  e_n Y_n = Y0/2 + (1/4 + e_d/2) (1 - (1 - eta_AE)^n) eta_EB
    observed:     Y_n = (1 - f) Y_n(clear) + f Y_n(intercepted), e_n Y_n likewise

Summed over the Poisson photon numbers these give the same gain ``Q_mu`` and error rate
``E_mu`` the emulator draws from (:meth:`LinkPhysics.gain`,
:meth:`LinkPhysics.intercepted_gain`), so :func:`analytic_qber` is the emulated QBER's
expectation. With infinitely many decoys the decoy method measures ``Y0``, ``Y1`` and
``e1`` exactly, so the asymptotic rates use the true values:

* ``gllp`` (reference): the published infinite-decoy GLLP rate, Ma et al. eq. (1) /
  Lo, Ma, Chen, PRL 94, 230504 (2005)::

      R = q (Q1 (1 - h(e1)) - f_EC Q_mu h(E_mu)),   Q1 = Y1 mu e^-mu

  With the GYS parameters (Gobby, Yuan, Shields 2004, as tabulated by Ma et al.) and the
  optimal ``mu`` its cut-off is 142 km, as published (tested).
* ``gllp-vacuum`` (default, as before): the same plus the vacuum contribution
  ``Q0 = Y0 e^-mu`` (vacuum detections carry no information to Eve; GLLP with the vacuum
  term, as in the finite-key bound of Lim et al. 2014). A few km longer reach.

``q`` is the share of pulses that become key: the sifting factor ``pz^2 + (1 - pz)^2``
times the share of signal pulses. A block whose QBER would exceed the abort threshold
yields nothing, as in the emulated protocol.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from keyplane.config import AUTO_Z_BASIS_GRID
from keyplane.physical.bits import binary_entropy
from keyplane.physical.constants import DARK_COUNT_ERROR
from keyplane.physical.finite_key import (
    ExpectedBlock,
    Statistics,
    expected_block,
    expected_key_rate,
)

if TYPE_CHECKING:  # physics resolves "auto" with this module: no import at run time
    from keyplane.physical.physics import LinkPhysics

__all__ = [
    "ANALYTIC_FORMULAS",
    "AUTO_Z_GRID",
    "AUTO_Z_MARGIN",
    "AnalyticFormula",
    "SignalStatistics",
    "analytic_key_rate",
    "analytic_qber",
    "analytic_rate_bps",
    "auto_z_basis",
    "finite_key_block",
    "finite_key_rate",
    "signal_statistics",
    "single_photon_statistics",
]

AnalyticFormula = Literal["gllp-vacuum", "gllp"]
ANALYTIC_FORMULAS: tuple[AnalyticFormula, ...] = ("gllp-vacuum", "gllp")
DEFAULT_EC_EFFICIENCY = 1.16


@dataclass(frozen=True, slots=True)
class SignalStatistics:
    """Expected statistics of one intensity class: gain and error rate given detection."""

    gain: float
    error_rate: float


def _eve_fraction(physics: LinkPhysics) -> float:
    eve = physics.eavesdropper
    return eve.fraction if eve is not None and not physics.cut else 0.0


def signal_statistics(physics: LinkPhysics, mu: float) -> SignalStatistics:
    """Expected gain ``Q_mu`` and error rate ``E_mu`` of intensity ``mu``, eavesdropper
    included (the mixture the emulator draws from)."""
    f = _eve_fraction(physics)
    q_clear = (1.0 - f) * physics.gain(mu)
    eq_clear = q_clear * physics.error_rate(mu)
    if f > 0.0:
        q_eve = f * physics.intercepted_gain(mu)
        eq_eve = q_eve * physics.intercepted_error_rate(mu)
    else:
        q_eve = eq_eve = 0.0
    gain = q_clear + q_eve
    error = (eq_clear + eq_eve) / gain if gain > 0.0 else DARK_COUNT_ERROR
    return SignalStatistics(gain=gain, error_rate=error)


def single_photon_statistics(physics: LinkPhysics) -> tuple[float, float]:
    """``(Y1, e1)``: yield and error rate of single-photon pulses, eavesdropper included.

    These are what an infinite-decoy estimate converges to.
    """
    eta = physics.transmittance()
    y0 = physics.dark_count_probability
    y1 = y0 + eta - y0 * eta
    ey1 = DARK_COUNT_ERROR * y0 + physics.misalignment * eta
    f = _eve_fraction(physics)
    if f > 0.0:
        eve = physics.eavesdropper
        assert eve is not None
        a = physics.attenuation_db_per_km
        eta_ae = 10.0 ** (-(a * eve.position_km) / 10.0)
        rest_db = (a * (physics.length_km - eve.position_km) + physics.insertion_loss_db
                   + physics.extra_loss_db)
        eta_eb = 10.0 ** (-rest_db / 10.0) * physics.detector_efficiency
        through = eta_ae * eta_eb
        y1_eve = 1.0 - (1.0 - y0) * (1.0 - through)
        ey1_eve = DARK_COUNT_ERROR * y0 + (0.25 + 0.5 * physics.misalignment) * through
        y1 = (1.0 - f) * y1 + f * y1_eve
        ey1 = (1.0 - f) * ey1 + f * ey1_eve
    if y1 <= 0.0:
        return 0.0, DARK_COUNT_ERROR
    return y1, ey1 / y1


def analytic_qber(physics: LinkPhysics) -> float:
    """Expected QBER of the signal class (the emulated QBER's expectation)."""
    return signal_statistics(physics, physics.decoy.mu_signal).error_rate


def analytic_key_rate(physics: LinkPhysics, *, formula: AnalyticFormula = "gllp-vacuum",
                      ec_efficiency: float = DEFAULT_EC_EFFICIENCY,
                      qber_threshold: float | None = None) -> float:
    """Asymptotic secret key per pulse (infinite decoys, infinite key) for ``physics``.

    Args:
        physics: the link now (faults included: cut, extra loss, misalignment, Eve).
        formula: ``gllp`` (the published rate) or ``gllp-vacuum`` (plus ``Q0``).
        ec_efficiency: ``f_EC``, error-correction leakage over ``h(E_mu)``.
        qber_threshold: the protocol's abort threshold (``None``: never aborts).

    Returns:
        Bits per pulse, ``>= 0``.

    Raises:
        ValueError: unknown ``formula``.
    """
    if formula not in ANALYTIC_FORMULAS:
        raise ValueError(f"unknown analytic formula {formula!r} (one of {ANALYTIC_FORMULAS})")
    if physics.cut:
        return 0.0
    mu = physics.decoy.mu_signal
    sig = signal_statistics(physics, mu)
    if qber_threshold is not None and sig.error_rate > qber_threshold:
        return 0.0
    y1, e1 = single_photon_statistics(physics)
    pz = physics.z_basis_probability
    q = physics.decoy.p_signal * (pz * pz + (1.0 - pz) * (1.0 - pz))
    q1 = y1 * mu * math.exp(-mu)
    rate = q1 * (1.0 - binary_entropy(e1)) - ec_efficiency * sig.gain * binary_entropy(
        sig.error_rate)
    if formula == "gllp-vacuum":
        rate += physics.dark_count_probability * math.exp(-mu)
    return max(0.0, q * rate)


def analytic_rate_bps(physics: LinkPhysics, *, formula: AnalyticFormula = "gllp-vacuum",
                      ec_efficiency: float = DEFAULT_EC_EFFICIENCY,
                      qber_threshold: float | None = None) -> float:
    """:func:`analytic_key_rate` times the repetition rate: secret bits per second."""
    return analytic_key_rate(physics, formula=formula, ec_efficiency=ec_efficiency,
                             qber_threshold=qber_threshold) * physics.repetition_rate_hz


def finite_key_block(physics: LinkPhysics, n_key: float) -> ExpectedBlock:
    """What a block of ``n_key`` key bits of this link is expected to hold (the twin's
    protocol: key basis 0 of every intensity, test basis 1)."""
    detection: list[float] = []
    errors: list[float] = []
    for mu in physics.intensities:
        s = signal_statistics(physics, mu)
        detection.append(s.gain)
        errors.append(s.gain * s.error_rate)
    qx = max(physics.z_basis_probability, 1.0 - physics.z_basis_probability)
    return expected_block(tuple(detection), tuple(errors),  # type: ignore[arg-type]
                          physics.class_probabilities, qx, n_key)


def finite_key_rate(physics: LinkPhysics, n_key: float, *, eps_sec: float,
                    statistics: Statistics = "chernoff",
                    ec_efficiency: float = DEFAULT_EC_EFFICIENCY,
                    leaked_verify_bits: float = 127.0) -> float:
    """The finite-key reference curve for this link: secret bits per pulse that Lim et
    al.'s bound gives a block of ``n_key`` key bits with the expected counts."""
    if physics.cut:
        return 0.0
    return expected_key_rate(finite_key_block(physics, n_key), physics.intensities,
                             physics.class_probabilities, ec_efficiency=ec_efficiency,
                             leaked_verify_bits=leaked_verify_bits, eps_sec=eps_sec,
                             statistics=statistics)


AUTO_Z_GRID = AUTO_Z_BASIS_GRID
"""The basis biases ``z_basis_probability: auto`` chooses among (defined with the
configuration it belongs to)."""

AUTO_Z_MARGIN = 0.5
"""``auto`` judges each bias on a block of this share of the link's block size (1: the
full block's optimum, at the edge of the test events' cliff; docs/physical.md)."""


@functools.lru_cache(maxsize=256)
def auto_z_basis(physics: LinkPhysics, block_bits: int, *, eps_sec: float,
                 statistics: Statistics = "chernoff") -> float:
    """The basis bias of ``z_basis_probability: auto``: the one of :data:`AUTO_Z_GRID`
    whose finite-key curve is highest for a block of :data:`AUTO_Z_MARGIN` (half) of
    ``block_bits``.

    A bias puts more detections in the key but leaves each block fewer test events, and
    the bound falls off a cliff when they run short (0.7 gives no key from 10^5-bit
    blocks). Judged at half the block, the choice stays clear of that cliff: with the
    misalignment a point above the configured one it keeps at least 0.74x unbiased bases'
    key on the curve (1.00x at 1.5 and 3 %), where the full block's optimum can give
    none (docs/physical.md).
    Ties, links that yield no key and intensities outside the bound's conditions
    (``mu1 > mu2 + mu3``, ``mu2 > mu3``) keep 0.5. ``physics``: the configured link,
    without its eavesdropper (the protocol cannot know of her).
    """
    mu1, mu2, mu3 = physics.intensities
    best, best_rate = 0.5, 0.0
    if not (mu1 > mu2 + mu3 and mu2 > mu3 >= 0.0):
        return best
    for z in AUTO_Z_GRID:
        rate = finite_key_rate(physics.with_changes(z_basis_probability=z),
                               block_bits * AUTO_Z_MARGIN,
                               eps_sec=eps_sec, statistics=statistics)
        if rate > best_rate:
            best, best_rate = z, rate
    return best
