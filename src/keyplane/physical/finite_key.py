"""Finite-key security of one block: the decoy-state bound of Lim, Curty, Walenta, Xu and
Zbinden, "Concise security bounds for practical decoy-state quantum key distribution",
PRA 89, 022307 (2014), eqs. (1)-(5).

Protocol shape (Lim et al., section II): asymmetric BB84. The key is made of the
detections where both ends chose the key basis (called X here, as in the paper: basis 0,
the more probable one), of *every* intensity; the test-basis detections (Z) of every
intensity are disclosed to count their errors. Three intensities ``mu1 > mu2 + mu3``,
``mu2 > mu3 >= 0`` sent with probabilities ``p_k``. A block is judged only on its own
counts: ``n_{X,k}`` key detections, ``n_{Z,k}`` test detections and ``m_{Z,k}`` test errors
per intensity ``k``, all from the pulses that made the block.

Bound (``tau_n = sum_k p_k e^-k k^n / n!``)::

    s_X0 >= tau_0 (mu2 n-_{X,mu3} - mu3 n+_{X,mu2}) / (mu2 - mu3)
    s_X1 >= tau_1 mu1 [n-_{X,mu2} - n+_{X,mu3} - (mu2^2 - mu3^2)/mu1^2 (n+_{X,mu1} - s_X0/tau_0)]
            / (mu1 (mu2 - mu3) - mu2^2 + mu3^2)
    v_Z1 <= tau_1 (m+_{Z,mu2} - m-_{Z,mu3}) / (mu2 - mu3)
    phi_X <= v_Z1/s_Z1 + gamma(eps_sec/21, v_Z1/s_Z1, s_Z1, s_X1)
    l = floor(s_X0 + s_X1 (1 - h(phi_X)) - leak_EC - 6 log2(21/eps_sec) - log2(2/eps_cor))

with ``s_Z0``, ``s_Z1`` from the same formulas on the test-basis counts, and
``gamma(a, b, c, d) = sqrt((c+d)(1-b)b/(c d ln 2) log2((c+d)/(c d (1-b) b a^2)))``.
``n±_{X,k} = e^k/p_k x±`` where ``x±`` brackets the expected count ``n*_{X,k}`` given the
observed ``n_{X,k}``, each one-sided bound failing with probability ``eps = eps_sec/21``
(the paper sets its 21 error terms equal, so the whole is ``eps_sec``-secret). Two
statistics for ``x±``:

* ``hoeffding`` (the paper): ``x± = n_{X,k} ± sqrt(n_X/2 ln(1/eps))``, one deviation
  for every intensity, set by the block's total ``n_X``;
* ``chernoff`` (multiplicative Chernoff bounds for the same sums of independent Bernoulli
  trials, as in Curty et al., Nat. Commun. 5, 3732 (2014) and Zhang et al., PRA 95,
  012333 (2017)): with ``b = ln(1/eps)``, ``x+ = x + b + sqrt(2 b x + b^2)`` and
  ``x- = max(0, x + b/2 - sqrt(2 b x + b^2/4))``. The deviation scales with the class's
  own count, not the block's, so a rarely chosen vacuum or decoy class costs little: the
  twin's default.

Correctness: the verification tag (polynomial hash, :mod:`.hashing`) discloses
``leaked_verify_bits`` = log2(1/eps_cor) bits, so ``log2(2/eps_cor)`` is that plus one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from keyplane.physical.bits import binary_entropy

__all__ = [
    "STATISTICS",
    "BlockCounts",
    "FiniteKeyBound",
    "Statistics",
    "chernoff_interval",
    "finite_key_length",
    "hoeffding_interval",
    "lim_gamma",
]

Statistics = Literal["chernoff", "hoeffding"]
STATISTICS: tuple[Statistics, ...] = ("chernoff", "hoeffding")
ERROR_TERMS = 21
"""Lim et al. eq. (B4): eps_sec = 21 eps when every error term is set to eps."""


@dataclass(frozen=True, slots=True)
class BlockCounts:
    """One block's own counts per intensity class (signal ``mu1``, decoy ``mu2``, vacuum
    ``mu3``): key-basis detections ``n_{X,k}``, test-basis detections ``n_{Z,k}``, and
    test-basis errors ``m_{Z,k}``. Both ends agree on all three."""

    key: tuple[int, int, int]
    test: tuple[int, int, int]
    test_errors: tuple[int, int, int]

    @property
    def n_key(self) -> int:
        """``n_X``: the block's key bits."""
        return sum(self.key)

    @property
    def test_qber(self) -> float | None:
        """Error rate of the disclosed test-basis bits (``None`` if there are none)."""
        n = sum(self.test)
        return sum(self.test_errors) / n if n else None


@dataclass(frozen=True, slots=True)
class FiniteKeyBound:
    """The bound's terms for one block and the resulting secure length (bits)."""

    s_x0: float
    s_x1: float
    s_z1: float
    v_z1: float
    phase_error: float
    length: int


def hoeffding_interval(x: float, total: float, eps: float) -> tuple[float, float]:
    """Lim et al. (A7)-(A8): ``x ± sqrt(total/2 ln(1/eps))``."""
    d = math.sqrt(total / 2.0 * math.log(1.0 / eps))
    return x - d, x + d


def chernoff_interval(x: float, eps: float) -> tuple[float, float]:
    """Bounds on the expectation of a sum of independent Bernoulli trials observed at
    ``x``, each failing with probability ``eps`` (multiplicative Chernoff bounds
    ``P[X >= (1+d)E] <= exp(-d^2 E/(2+d))`` and ``P[X <= (1-d)E] <= exp(-d^2 E/2)``
    solved for ``E``)."""
    b = math.log(1.0 / eps)
    lower = max(0.0, x + b / 2.0 - math.sqrt(2.0 * b * x + b * b / 4.0))
    upper = x + b + math.sqrt(2.0 * b * x + b * b)
    return lower, upper


def lim_gamma(a: float, b: float, c: float, d: float) -> float:
    """Lim et al. eq. (5)'s ``gamma``: the random-sampling correction of the phase error
    (Fung et al., PRA 81, 012318 (2010))."""
    if b <= 0.0 or b >= 1.0 or c <= 0.0 or d <= 0.0:
        return 0.5
    arg = (c + d) / (c * d * (1.0 - b) * b * a * a)
    if arg <= 1.0:
        return 0.0
    return math.sqrt((c + d) * (1.0 - b) * b / (c * d * math.log(2.0)) * math.log2(arg))


def _tau(n: int, mu: tuple[float, float, float], p: tuple[float, float, float]) -> float:
    return sum(pk * math.exp(-k) * k**n for k, pk in zip(mu, p, strict=True)) / math.factorial(n)


def _scaled(counts: tuple[float, float, float], mu: tuple[float, float, float],
            p: tuple[float, float, float], eps: float, statistics: Statistics
            ) -> tuple[list[float], list[float]]:
    """``(x-_k e^k/p_k, x+_k e^k/p_k)`` for every class."""
    total = sum(counts)
    lo: list[float] = []
    hi: list[float] = []
    for x, k, pk in zip(counts, mu, p, strict=True):
        if statistics == "hoeffding":
            a, b = hoeffding_interval(x, total, eps)
        else:
            a, b = chernoff_interval(x, eps)
        scale = math.exp(k) / pk if pk > 0 else math.inf
        lo.append(max(0.0, a) * scale if pk > 0 else 0.0)
        hi.append(b * scale)
    return lo, hi


def _vacuum_and_single(counts: tuple[float, float, float], mu: tuple[float, float, float],
                       p: tuple[float, float, float], eps: float, statistics: Statistics
                       ) -> tuple[float, float]:
    mu1, mu2, mu3 = mu
    lo, hi = _scaled(counts, mu, p, eps, statistics)
    tau0, tau1 = _tau(0, mu, p), _tau(1, mu, p)
    s0 = max(0.0, tau0 * (mu2 * lo[2] - mu3 * hi[1]) / (mu2 - mu3))
    denom = mu1 * (mu2 - mu3) - mu2 * mu2 + mu3 * mu3
    s1 = tau1 * mu1 * (lo[1] - hi[2] - (mu2 * mu2 - mu3 * mu3) / (mu1 * mu1)
                       * (hi[0] - s0 / tau0)) / denom
    return s0, max(0.0, s1)


def finite_key_length(counts: BlockCounts, intensities: tuple[float, float, float],
                      probabilities: tuple[float, float, float], *, leaked_ec_bits: float,
                      leaked_verify_bits: float, eps_sec: float,
                      statistics: Statistics = "chernoff") -> FiniteKeyBound:
    """Lim et al.'s secure length for one block from its own counts.

    Args:
        counts: the block's key- and test-basis counts per intensity.
        intensities: ``(mu1, mu2, mu3)`` with ``mu1 > mu2 + mu3`` and ``mu2 > mu3 >= 0``.
        probabilities: ``(p_mu1, p_mu2, p_mu3)``, the a-priori intensity probabilities.
        leaked_ec_bits: bits disclosed by error correction (``lambda_EC``).
        leaked_verify_bits: bits disclosed by verification (``log2(1/eps_cor)``).
        eps_sec: secrecy parameter of the whole block.
        statistics: ``chernoff`` or ``hoeffding`` (the paper's).

    Returns:
        The bound's terms and the length (0 when nothing is secret).

    Raises:
        ValueError: intensities outside the bound's conditions, or unknown statistics.
    """
    mu1, mu2, mu3 = intensities
    if not (mu1 > mu2 + mu3 and mu2 > mu3 >= 0.0):
        raise ValueError("the bound needs mu1 > mu2 + mu3 and mu2 > mu3 >= 0")
    if statistics not in STATISTICS:
        raise ValueError(f"unknown statistics {statistics!r} (one of {STATISTICS})")
    eps = eps_sec / ERROR_TERMS
    key = tuple(float(c) for c in counts.key)
    test = tuple(float(c) for c in counts.test)
    errors = tuple(float(c) for c in counts.test_errors)
    s_x0, s_x1 = _vacuum_and_single(key, intensities, probabilities, eps,  # type: ignore[arg-type]
                                    statistics)
    _, s_z1 = _vacuum_and_single(test, intensities, probabilities, eps,  # type: ignore[arg-type]
                                 statistics)
    m_lo, m_hi = _scaled(errors, intensities, probabilities, eps,  # type: ignore[arg-type]
                         statistics)
    v_z1 = max(0.0, _tau(1, intensities, probabilities) * (m_hi[1] - m_lo[2]) / (mu2 - mu3))
    if s_z1 <= 0.0 or s_x1 <= 0.0:
        phi = 0.5
    else:
        ratio = min(v_z1 / s_z1, 0.5)
        phi = min(0.5, ratio + lim_gamma(eps_sec / ERROR_TERMS, ratio, s_z1, s_x1))
    length = (s_x0 + s_x1 * (1.0 - binary_entropy(phi)) - leaked_ec_bits
              - leaked_verify_bits - 1.0 - 6.0 * math.log2(ERROR_TERMS / eps_sec))
    ell = max(0, min(counts.n_key, math.floor(length)))
    return FiniteKeyBound(s_x0=s_x0, s_x1=s_x1, s_z1=s_z1, v_z1=v_z1, phase_error=phi,
                          length=ell)


# ---------------------------------------------------------------------- expected curves

@dataclass(frozen=True, slots=True)
class ExpectedBlock:
    """A block as the physics expects it: counts, pulses, and the observed QBER of the
    key basis (for the error-correction leakage ``f_EC n_X h(e_obs)``)."""

    counts: tuple[tuple[float, float, float], tuple[float, float, float],
                  tuple[float, float, float]]
    pulses: float
    key_qber: float


def expected_block(detection: tuple[float, float, float], errors: tuple[float, float, float],
                   probabilities: tuple[float, float, float], key_basis_probability: float,
                   n_key: float) -> ExpectedBlock:
    """The expected counts of a block of ``n_key`` key bits.

    Args:
        detection: per intensity, the probability that a pulse gives a detection.
        errors: per intensity, the probability that a pulse gives an *erroneous*
            detection (given matching bases).
        probabilities: a-priori intensity probabilities.
        key_basis_probability: ``q_x``, both ends' probability of the key basis.
        n_key: ``n_X``.
    """
    qx = key_basis_probability
    rate = sum(p * d for p, d in zip(probabilities, detection, strict=True))
    pulses = n_key / (qx * qx * rate) if rate > 0 else math.inf
    key = tuple(pulses * qx * qx * p * d for p, d in zip(probabilities, detection, strict=True))
    zz = (1.0 - qx) ** 2
    test = tuple(pulses * zz * p * d for p, d in zip(probabilities, detection, strict=True))
    errs = tuple(pulses * zz * p * e for p, e in zip(probabilities, errors, strict=True))
    key_qber = sum(p * e for p, e in zip(probabilities, errors, strict=True)) / rate \
        if rate > 0 else 0.5
    return ExpectedBlock(counts=(key, test, errs), pulses=pulses,  # type: ignore[arg-type]
                         key_qber=key_qber)


def expected_key_rate(block: ExpectedBlock, intensities: tuple[float, float, float],
                      probabilities: tuple[float, float, float], *, ec_efficiency: float,
                      leaked_verify_bits: float, eps_sec: float | None = None,
                      kappa: float | None = None, statistics: Statistics = "chernoff"
                      ) -> float:
    """Secret bits per pulse the bound gives for an expected block (the reference curve).

    Either a fixed ``eps_sec`` or, as Lim et al. evaluate it, ``eps_sec = kappa * l``
    (solved by fixed-point iteration).
    """
    if block.pulses == math.inf:
        return 0.0
    key, test, errs = block.counts
    n_key = sum(key)
    leak = ec_efficiency * n_key * binary_entropy(block.key_qber)
    ell = 1.0
    for _ in range(8 if kappa is not None else 1):
        eps = eps_sec if kappa is None else max(kappa * ell, 1e-300)
        assert eps is not None
        b = finite_key_length(
            BlockCounts(key=key, test=test, test_errors=errs),  # type: ignore[arg-type]
            intensities, probabilities, leaked_ec_bits=leak,
            leaked_verify_bits=leaked_verify_bits, eps_sec=eps, statistics=statistics)
        if b.length <= 0:
            return 0.0
        ell = b.length
    return ell / block.pulses


@dataclass(frozen=True, slots=True)
class LimSystem:
    """The fibre system Lim et al. evaluate (section IV, dedicated fibre): InGaAs APDs
    with afterpulsing, ``mu3 = 2e-4``, ``kappa = eps_cor = 1e-15``, ``f_EC = 1.16``."""

    attenuation_db_per_km: float = 0.2
    detector_efficiency: float = 0.10
    dark_count_probability: float = 6e-7
    afterpulse_probability: float = 4e-2
    misalignment: float = 5e-3
    mu3: float = 2e-4
    kappa: float = 1e-15
    eps_cor: float = 1e-15
    ec_efficiency: float = 1.16

    def block(self, length_km: float, intensities: tuple[float, float, float],
              probabilities: tuple[float, float, float], qx: float,
              n_key: float) -> ExpectedBlock:
        """Expected counts: ``D_k = 1 - (1 - 2 p_dc) e^(-eta k)``, detection rate
        ``R_k = D_k (1 + p_ap)``, error probability
        ``e_k = p_dc + e_mis (1 - e^(-eta k)) + p_ap D_k / 2`` with ``eta`` the system
        transmittance (fibre and detector)."""
        eta = 10.0 ** (-self.attenuation_db_per_km * length_km / 10.0) \
            * self.detector_efficiency
        pdc, pap = self.dark_count_probability, self.afterpulse_probability
        d = [1.0 - (1.0 - 2.0 * pdc) * math.exp(-eta * k) for k in intensities]
        rate = tuple(x * (1.0 + pap) for x in d)
        err = tuple(pdc + self.misalignment * (1.0 - math.exp(-eta * k)) + pap * x / 2.0
                    for k, x in zip(intensities, d, strict=True))
        return expected_block(rate, err, probabilities, qx, n_key)  # type: ignore[arg-type]

    def key_rate(self, length_km: float, intensities: tuple[float, float, float],
                 probabilities: tuple[float, float, float], qx: float, n_key: float,
                 statistics: Statistics = "hoeffding") -> float:
        """Secret bits per pulse, ``eps_sec = kappa l`` as in the paper."""
        return expected_key_rate(self.block(length_km, intensities, probabilities, qx, n_key),
                                 intensities, probabilities, ec_efficiency=self.ec_efficiency,
                                 leaked_verify_bits=math.log2(1.0 / self.eps_cor),
                                 kappa=self.kappa, statistics=statistics)

    def optimized_key_rate(self, length_km: float, n_key: float,
                           statistics: Statistics = "hoeffding") -> float:
        """The paper's curve: the rate maximized over ``mu1, mu2, p_mu1, p_mu2, q_x``
        (Nelder-Mead from a few starts, parameters mapped into their domain)."""
        from scipy.optimize import minimize

        mu3 = self.mu3

        def decode(v: NDArray[np.float64]) -> tuple[tuple[float, float, float],
                                                     tuple[float, float, float], float]:
            mu1 = 0.05 + 1.45 / (1.0 + math.exp(-float(v[0])))
            mu2 = mu3 + (mu1 - 2.0 * mu3) / (1.0 + math.exp(-float(v[1])))
            w = [math.exp(max(-50.0, min(50.0, float(x)))) for x in v[2:5]]
            s = sum(w)
            qx = 0.5 + 0.4999 / (1.0 + math.exp(-float(v[5])))
            return (mu1, mu2, mu3), (w[0] / s, w[1] / s, w[2] / s), qx

        def cost(v: NDArray[np.float64]) -> float:
            mu, p, qx = decode(v)
            return -self.key_rate(length_km, mu, p, qx, n_key, statistics)

        best = 0.0
        for start in ([0.0, -1.0, 1.0, 0.0, 0.0, 2.0], [0.5, -1.5, 1.5, 0.0, -0.5, 3.0],
                      [-0.5, 0.5, 0.0, 1.0, 0.5, 0.0], [-0.5, 0.0, -1.0, 1.0, 0.5, -1.0]):
            res = minimize(cost, np.asarray(start), method="Nelder-Mead",
                           options={"maxiter": 4000, "xatol": 1e-6, "fatol": 1e-16})
            best = max(best, -float(res.fun))
        return best
