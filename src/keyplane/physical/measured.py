"""Links with an untrusted node in the middle: MDI-QKD, TF-QKD (SNS) and BBM92.

Each protocol is emulated like ``bb84-decoy``: per frame, only the events that reach the
post-processing are drawn (heralded Bell-state measurements, effective single clicks,
coincidences), as an :class:`~keyplane.physical.physics.AliceRecord` /
:class:`~keyplane.physical.physics.BobRecord` pair, so sifting, parameter estimation,
Cascade, verification and privacy amplification are the very same stages. Only two things
differ per protocol: the event probabilities and error rates (this module's closed forms)
and the secure length of a block (:func:`measured_block_length`). All three links are
symmetric: the station (or source) sits halfway, each arm carries half the loss, the
detectors (and their efficiency) are at the station for MDI-QKD and TF-QKD and at the
users for BBM92.

References (the formulas are written in the docstring of each function):

* MDI-QKD: Lo, Curty, Qi, PRL 108, 130503 (2012); the gains and error rates of
  phase-randomized weak coherent pulses with threshold detectors from Ma, Razavi,
  PRA 86, 062319 (2012), as used by Xu, Curty, Qi, Lo, PRA 87, 052323 (2013) (appendix B).
* TF-QKD, sending-or-not-sending: Wang, Yu, Hu, PRA 98, 062323 (2018); the asymptotic
  rate with infinitely many decoys, its key scaling with the square root of the channel
  transmittance; PLOB bound: Pirandola et al., Nat. Commun. 8, 15043 (2017).
* BBM92 from a parametric down-conversion source in the middle: Bennett, Brassard,
  Mermin, PRL 68, 557 (1992); gain and QBER of Ma, Fung, Lo, PRA 76, 012307 (2007), eq. 9-11.

Decisions and limits:

* Decoy states (MDI-QKD, TF-QKD) are taken at their asymptotic limit: the share of key
  events from single photons (pairs) is the model's; the phase error is bounded from the
  *measured* test-basis errors, so an excess of errors (drift, an attack) lowers the key.
  BBM92 needs no decoys: its phase error is the measured test-basis QBER.
* Events with mismatched bases are emulated at the mean herald probability of the two
  matched ones; sifting discards them, so no bound depends on it.
* The eavesdropper model of ``bb84-decoy`` is not applied to these links.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from keyplane.config import QuantumLink
from keyplane.physical.bits import binary_entropy
from keyplane.physical.physics import AliceRecord, BobRecord, LinkPhysics

__all__ = [
    "MEASURED_PROTOCOLS",
    "SNS_SEND_PROBABILITY",
    "MeasuredPhysics",
    "MeasuredProtocol",
    "emulate_measured_frame",
    "measured_block_length",
    "measured_physics",
    "measured_protocol",
    "plob_bound",
]

MeasuredProtocol = Literal["mdi-qkd", "tf-qkd", "bbm92"]
MEASURED_PROTOCOLS: tuple[MeasuredProtocol, ...] = ("mdi-qkd", "tf-qkd", "bbm92")

SNS_SEND_PROBABILITY = 0.05
"""``epsilon``: the probability that a user sends a pulse in a Z window of SNS-TF-QKD."""

E0 = 0.5  # a dark count (or a mismatched basis) gives a random bit
EC_EFFICIENCY = 1.16  # f_EC of the asymptotic formulas (Cascade's typical figure)


def _h(p: float) -> float:
    return binary_entropy(min(max(p, 0.0), 0.5))


def plob_bound(eta: float) -> float:
    """The repeaterless bound, secret bits per channel use: ``-log2(1 - eta)``."""
    return -math.log2(1.0 - eta) if eta < 1.0 else math.inf


@dataclass(frozen=True, slots=True)
class MeasuredPhysics:
    """One measured link's closed forms, from the link's physics now (faults included).

    ``eta_arm`` is one arm's transmittance, detector efficiency included: half the link's
    loss in dB. ``mu`` is the signal intensity (BBM92: the mean pair number per pulse).
    """

    protocol: MeasuredProtocol
    eta_arm: float
    dark_count_probability: float
    misalignment: float
    mu: float
    z_basis_probability: float

    @classmethod
    def from_physics(cls, protocol: MeasuredProtocol, physics: LinkPhysics,
                     mean_pairs_per_pulse: float = 0.05) -> MeasuredPhysics:
        """The closed forms of ``protocol`` over ``physics`` (a cut link transmits nothing);
        BBM92's intensity is the source's ``mean_pairs_per_pulse``, the others' the
        signal intensity ``decoy.mu_signal``."""
        eta = 0.0 if physics.cut else float(
            10.0 ** (-physics.loss_db / 20.0) * physics.detector_efficiency)
        mu = mean_pairs_per_pulse if protocol == "bbm92" else physics.decoy.mu_signal
        return cls(protocol, eta, physics.dark_count_probability, physics.misalignment,
                   mu, physics.z_basis_probability)

    @property
    def eta_total(self) -> float:
        """End-to-end transmittance (both arms): what the PLOB bound is taken at."""
        return self.eta_arm * self.eta_arm

    # ------------------------------------------------------------------ MDI-QKD

    def _mdi(self) -> tuple[float, float, float, float, float, float]:
        """``(Q_Z, E_Z, Q_X, E_X, Y11, e11)`` of Ma-Razavi 2012 (symmetric arms).

        With ``mu' = 2 eta mu``, ``x = eta mu / 2``, ``y = (1 - pd) exp(-mu'/4)``:
        ``Q_C = 2 (1-pd)^2 e^{-mu'/2} [1 - (1-pd) e^{-eta mu/2}]^2``,
        ``Q_E = 2 pd (1-pd)^2 e^{-mu'/2} [I0(2x) - (1-pd) e^{-mu'/2}]``,
        ``Q_Z = Q_C + Q_E``, ``E_Z Q_Z = e_d Q_C + (1 - e_d) Q_E``;
        ``Q_X = 2 y^2 [1 + 2 y^2 - 4 y I0(x) + I0(2x)]``,
        ``E_X Q_X = e0 Q_X - 2 (e0 - e_d) y^2 [I0(2x) - 1]``;
        ``Y11 = (1-pd)^2 [eta^2/2 + (4 eta - 3 eta^2) pd + 4 (1-eta)^2 pd^2]``,
        ``e11 Y11 = e0 Y11 - (e0 - e_d)(1-pd)^2 eta^2 / 2``.
        """
        eta, pd, ed, mu = self.eta_arm, self.dark_count_probability, self.misalignment, self.mu
        mup = 2.0 * eta * mu
        x = eta * mu / 2.0
        i0x, i02x = float(np.i0(x)), float(np.i0(2.0 * x))
        arm = 1 - (1 - pd) * math.exp(-eta * mu / 2)
        qc = 2.0 * (1 - pd) ** 2 * math.exp(-mup / 2) * arm * arm
        qe = 2.0 * pd * (1 - pd) ** 2 * math.exp(-mup / 2) * (i02x - (1 - pd) * math.exp(-mup / 2))
        qz = qc + qe
        ez = (ed * qc + (1 - ed) * qe) / qz if qz > 0 else E0
        y = (1 - pd) * math.exp(-mup / 4)
        qx = 2 * y * y * (1 + 2 * y * y - 4 * y * i0x + i02x)
        ex = (E0 * qx - 2 * (E0 - ed) * y * y * (i02x - 1)) / qx if qx > 0 else E0
        y11 = (1 - pd) ** 2 * (eta * eta / 2 + (4 * eta - 3 * eta * eta) * pd
                               + 4 * (1 - eta) ** 2 * pd * pd)
        e11 = (E0 * y11 - (E0 - ed) * (1 - pd) ** 2 * eta * eta / 2) / y11 if y11 > 0 else E0
        return qz, ez, qx, ex, y11, e11

    # ------------------------------------------------------------------ SNS-TF-QKD

    def _sns(self) -> tuple[float, float, float, float]:
        """``(n_t, E_Z, s1-share, e1)`` per Z window of SNS-TF-QKD (Wang-Yu-Hu 2018).

        Each user sends ``mu`` with probability ``epsilon``. An effective event is exactly
        one click at the station. With ``a = eta mu``: nobody sends ``P0 = 2 pd (1-pd)``;
        one sends ``P1 = 2 (1-pd) e^{-a/2} [1 - (1-pd) e^{-a/2}]``; both send (random
        relative phase) ``P2 = 2 [(1-pd) e^{-a} I0(a) - (1-pd)^2 e^{-2a}]``.
        ``n_t = (1-eps)^2 P0 + 2 eps (1-eps) P1 + eps^2 P2``; the bit is wrong when both or
        nobody sent: ``E_Z = ((1-eps)^2 P0 + eps^2 P2) / n_t``. Single-photon events
        ``n_1 = 2 eps (1-eps) mu e^{-mu} s_1``, ``s_1 = eta (1-pd) + 2 (1-eta) pd (1-pd)``,
        with phase error ``e_1 = (e_d eta (1-pd) + e0 2 (1-eta) pd (1-pd)) / s_1``.
        """
        eta, pd, ed, mu = self.eta_arm, self.dark_count_probability, self.misalignment, self.mu
        eps = SNS_SEND_PROBABILITY
        a = eta * mu
        p0 = 2 * pd * (1 - pd)
        p1 = 2 * (1 - pd) * math.exp(-a / 2) * (1 - (1 - pd) * math.exp(-a / 2))
        p2 = 2 * ((1 - pd) * math.exp(-a) * float(np.i0(a)) - (1 - pd) ** 2 * math.exp(-2 * a))
        wrong = (1 - eps) ** 2 * p0 + eps ** 2 * p2
        nt = wrong + 2 * eps * (1 - eps) * p1
        s1 = eta * (1 - pd) + 2 * (1 - eta) * pd * (1 - pd)
        n1 = 2 * eps * (1 - eps) * mu * math.exp(-mu) * s1
        e1 = (ed * eta * (1 - pd) + E0 * 2 * (1 - eta) * pd * (1 - pd)) / s1 if s1 > 0 else E0
        return nt, (wrong / nt if nt > 0 else E0), (n1 / nt if nt > 0 else 0.0), e1

    # ------------------------------------------------------------------ BBM92

    def _bbm92(self) -> tuple[float, float]:
        """``(Q, E)`` of a PDC source in the middle (Ma-Fung-Lo 2007, eq. 9-11).

        ``lambda`` pairs per pulse on average, ``eta`` per arm, ``Y0 = pd``:
        ``Q = 1 - 2 (1-Y0) / (1 + eta lambda)^2 + (1-Y0)^2 / (1 + 2 eta lambda - eta^2 lambda)^2``,
        ``E Q = e0 Q - 2 (e0 - e_d) eta^2 lambda (1 + lambda) /
        ((1 + eta lambda)^2 (1 + 2 eta lambda - eta^2 lambda))``.
        """
        eta, y0, ed, lam = self.eta_arm, self.dark_count_probability, self.misalignment, self.mu
        both = 1 + 2 * eta * lam - eta * eta * lam
        q = 1 - 2 * (1 - y0) / (1 + eta * lam) ** 2 + (1 - y0) ** 2 / both ** 2
        good = 2 * (E0 - ed) * eta * eta * lam * (1 + lam) / ((1 + eta * lam) ** 2 * both)
        return q, ((E0 * q - good) / q if q > 0 else E0)

    # ------------------------------------------------------------------ common view

    def events(self) -> tuple[float, float, float, float]:
        """``(key gain, key error, test gain, test error)`` per pulse with matching bases.

        The test basis of TF-QKD is emulated at the single-photon phase error its decoy
        analysis would bound (module docstring).
        """
        if self.protocol == "mdi-qkd":
            qz, ez, qx, ex, _, _ = self._mdi()
            return qz, ez, qx, ex
        if self.protocol == "tf-qkd":
            nt, ez, _, e1 = self._sns()
            return nt, ez, nt, e1
        q, e = self._bbm92()
        return q, e, q, e

    def single_share(self) -> float:
        """The share of key events whose phase error is bounded (single photons or pairs;
        every event for BBM92)."""
        if self.protocol == "mdi-qkd":
            qz, _, _, _, y11, _ = self._mdi()
            return self.mu * self.mu * math.exp(-2 * self.mu) * y11 / qz if qz > 0 else 0.0
        if self.protocol == "tf-qkd":
            return self._sns()[2]
        return 1.0

    def phase_error_bound(self, test_errors: int, n_test: int, eps: float) -> float:
        """Upper bound on the phase error of the bounded key events, from the test basis.

        Hoeffding's term ``sqrt(ln(1/eps) / (2 n))`` over the ``n`` test events that speak
        for the bounded ones (Tomamichel et al., Nat. Commun. 3, 634 (2012)). BBM92 and
        TF-QKD: the measured test QBER plus the term over every test event. MDI-QKD: the
        model's ``e11`` (asymptotic decoy limit) plus any excess of the measured ``E_X``
        over the model charged to the single-photon pairs alone (``x Q_X / Q11``), plus the
        term over the test events from single-photon pairs (``n Q11 / Q_X``).
        """
        if n_test <= 0:
            return E0
        measured = test_errors / n_test
        tail = math.log(1 / eps) / 2
        if self.protocol == "mdi-qkd":
            _, _, qx, ex, y11, e11 = self._mdi()
            q11 = self.mu * self.mu * math.exp(-2 * self.mu) * y11
            if q11 <= 0:
                return E0
            share = q11 / qx
            excess = max(0.0, measured - ex) / share
            return min(E0, e11 + excess + math.sqrt(tail / (n_test * share)))
        return min(E0, measured + math.sqrt(tail / n_test))

    def block_estimates(self, test_errors: int, n_test: int) -> tuple[float, float]:
        """``(phase error, key-basis error)`` point estimates of one block.

        The phase error is what the abort threshold judges (MDI-QKD: ``e11`` plus the
        excess of ``E_X`` charged to single-photon pairs; the others: the test QBER); the
        key-basis error sizes Cascade's blocks: the model's plus the same excess noise.
        """
        measured = test_errors / n_test if n_test > 0 else E0
        _, key_err, _, test_err = self.events()
        excess = max(0.0, measured - test_err)
        if self.protocol == "mdi-qkd":
            _, _, qx, _, y11, e11 = self._mdi()
            q11 = self.mu * self.mu * math.exp(-2 * self.mu) * y11
            phase = min(E0, e11 + excess * qx / q11) if q11 > 0 else E0
        else:
            phase = measured
        return phase, min(E0, key_err + excess)

    def asymptotic_rate(self, ec_efficiency: float = EC_EFFICIENCY) -> float:
        """Secret bits per pulse (pair of pulses, or window) in the asymptotic limit.

        ``pz^2 [s e_bounded-events (1 - h(e_ph)) - f Q_Z h(E_Z)]``: the cited formulas, with
        both ends in the key basis with probability ``pz^2``.
        """
        key_gain, key_err, _, test_err = self.events()
        if key_gain <= 0:
            return 0.0
        if self.protocol == "mdi-qkd":
            e_ph = self._mdi()[5]
        elif self.protocol == "tf-qkd":
            e_ph = self._sns()[3]
        else:
            e_ph = test_err
        r = key_gain * (self.single_share() * (1 - _h(e_ph)) - ec_efficiency * _h(key_err))
        pz = max(self.z_basis_probability, 1 - self.z_basis_probability)
        return max(0.0, pz * pz * r)

    def expected_sifted_fraction(self) -> float:
        """Expected sifted key-basis bits per pulse (frame sizing)."""
        pz = max(self.z_basis_probability, 1 - self.z_basis_probability)
        return pz * pz * self.events()[0]


def measured_protocol(protocol: str) -> MeasuredProtocol | None:
    """The measured protocol a link's ``protocol`` names, emulated or ``-analytic``."""
    base = protocol.removesuffix("-analytic")
    for p in MEASURED_PROTOCOLS:
        if p == base:
            return p
    return None


def measured_physics(link: QuantumLink, physics: LinkPhysics | None = None
                     ) -> MeasuredPhysics | None:
    """The closed forms of a measured link over ``physics`` (default: as configured);
    None for a ``bb84-decoy`` or ``analytic`` link."""
    protocol = measured_protocol(link.protocol)
    if protocol is None:
        return None
    return MeasuredPhysics.from_physics(protocol, physics or LinkPhysics.from_link(link),
                                        link.mean_pairs_per_pulse)


def emulate_measured_frame(physics: MeasuredPhysics, n_pulses: int,
                           rng: np.random.Generator) -> tuple[AliceRecord, BobRecord]:
    """Emulate ``n_pulses`` pulses (pairs, windows) of a measured link; only the events
    the station or the detectors announce are materialized.

    Each end picks its basis per pulse (key basis with ``z_basis_probability``); the
    announced events of each basis pair are one binomial draw, errors one Bernoulli draw
    per event at the pair's error rate (mismatched: a random bit). Every event is of the
    signal class (decoy statistics are taken at their asymptotic limit).

    Returns:
        Alice's and Bob's records of the announced events, aligned (Bob's bits already
        flipped per the station's announcement, as both protocols prescribe).
    """
    key_gain, key_err, test_gain, test_err = physics.events()
    pz = physics.z_basis_probability
    px = 1.0 - pz
    # basis pairs (alice, bob): (Z,Z) (X,X) (Z,X) (X,Z), Z = 0
    mixed = (key_gain + test_gain) / 2
    seg_p = np.array([pz * pz * key_gain, px * px * test_gain, pz * px * mixed,
                      px * pz * mixed], dtype=np.float64)
    seg_err = np.array([key_err, test_err, E0, E0], dtype=np.float32)
    seg_bases = np.array([[0, 0], [1, 1], [0, 1], [1, 0]], dtype=np.uint8)
    p_any = float(min(1.0, seg_p.sum()))
    d = int(rng.binomial(n_pulses, p_any)) if p_any > 0 else 0
    u = rng.random(d)
    cum = np.cumsum(seg_p) / max(p_any, 1e-300)
    seg = np.zeros(d, dtype=np.uint8)
    for edge in cum[:-1]:
        seg += u >= edge
    bases = seg_bases[seg]
    bits_alice = np.unpackbits(np.frombuffer(rng.bytes((d + 7) // 8), dtype=np.uint8),
                               count=d)
    flips = (rng.random(d, dtype=np.float32) < seg_err[seg]).view(np.uint8)
    alice = AliceRecord(intensity_class=np.zeros(d, dtype=np.uint8),
                        bases=np.ascontiguousarray(bases[:, 0]), bits=bits_alice,
                        pulses_per_class=(n_pulses, 0, 0))
    return alice, BobRecord(bases=np.ascontiguousarray(bases[:, 1]), bits=bits_alice ^ flips)


def measured_block_length(physics: MeasuredPhysics, n_key_bits: int, n_test: int,
                          test_errors: int, leaked_ec_bits: int, leaked_verify_bits: int,
                          eps_sec: float) -> int:
    """The secure length of one block of a measured link, whole bytes.

    ``l = n s (1 - h(e_ph^U)) - leak_EC - leak_verify - 2 log2(1 / eps)``, with ``s`` the
    share of bounded events (:meth:`MeasuredPhysics.single_share`) and ``e_ph^U`` from
    :meth:`MeasuredPhysics.phase_error_bound`.
    """
    if n_key_bits <= 0 or n_test <= 0:
        return 0
    e_ph = physics.phase_error_bound(test_errors, n_test, eps_sec)
    ell = (n_key_bits * physics.single_share() * (1 - _h(e_ph)) - leaked_ec_bits
           - leaked_verify_bits - 2 * math.log2(1 / eps_sec))
    ell_bits = max(0, math.floor(ell))
    return ell_bits - ell_bits % 8
