"""Link physics: the emulated source, fibre, optional eavesdropper and detectors of one link.

Model (Ma, Qi, Zhao, Lo, "Practical decoy state for quantum key distribution",
PRA 72, 012326 (2005), section II; Lo, Ma, Chen, PRL 94, 230504 (2005)):

* transmittance ``eta = 10^(-(alpha*L + insertion_loss + extra_loss)/10) * eta_det``
* gain (detection probability per pulse) of a phase-randomized weak coherent pulse of
  mean photon number ``mu``: ``Q_mu = 1 - (1 - Y0) exp(-eta*mu)``, ``Y0`` the dark-count
  probability per gate;
* error probability given a detection and matching bases:
  ``E_mu = (e0*Y0 + e_d*(1 - exp(-eta*mu))) / Q_mu``, ``e0 = 1/2``, ``e_d`` the
  misalignment.

An intercept-resend eavesdropper at ``position_km`` measures a ``fraction`` of the pulses
in a random basis with an ideal detector (she detects a pulse with probability
``1 - exp(-eta_AE*mu)``, ``eta_AE`` the fibre transmittance up to her) and resends one
photon in her basis and result. Bob then detects it with the transmittance after her
position, ``eta_EB``; a wrong guess of the basis (probability 1/2) randomizes Bob's bit, so
such detections carry the error ``1/4 + e_d/2`` and the sifted QBER goes to about 25 % at
fraction 1. Her resend also changes the loss seen by Bob (a single photon instead of a
coherent pulse, re-launched at her position).

Per frame of ``N`` pulses nothing is simulated pulse by pulse: the number of detections
is one binomial draw, each detection's intensity class (and whether it was intercepted)
one categorical draw, and only detected events get bases, bits and errors. Detections
come out in a random order of classes, as from a real source, so any contiguous run of
them (a block) holds each class in proportion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from keyplane.config import DecoySettings, Eavesdropper, QuantumLink
from keyplane.physical.bits import Bits
from keyplane.physical.constants import DARK_COUNT_ERROR

__all__ = [
    "DARK_COUNT_ERROR",
    "INTENSITY_CLASSES",
    "AliceRecord",
    "BobRecord",
    "LinkPhysics",
    "emulate_frame",
]


INTENSITY_CLASSES = ("signal", "decoy", "vacuum")
"""Intensity class codes 0, 1, 2 (the order of :class:`~keyplane.config.DecoySettings`)."""

BASIS_Z = 0
BASIS_X = 1

_EMULATE_CHUNK = 1 << 16
"""Detections a draw is consumed at a time (its temporaries stay in the L2 cache). Even:
the 32-bit draws come two to a raw 64-bit word (:func:`_words`), so only a frame's last
chunk leaves half a word unused, as the whole frame's draw does."""


@dataclass(frozen=True, slots=True)
class LinkPhysics:
    """The physical parameters of one link at one moment (faults change ``extra_loss_db``,
    ``cut`` and ``eavesdropper``)."""

    length_km: float
    attenuation_db_per_km: float
    insertion_loss_db: float
    detector_efficiency: float
    dark_count_probability: float
    misalignment: float
    repetition_rate_hz: float
    decoy: DecoySettings
    z_basis_probability: float = 0.5
    extra_loss_db: float = 0.0
    cut: bool = False
    eavesdropper: Eavesdropper | None = None

    @classmethod
    def from_link(cls, link: QuantumLink) -> LinkPhysics:
        """The physics of ``link`` as configured (its eavesdropper included;
        ``z_basis_probability: auto`` resolved, :func:`~.analytic.auto_z_basis`)."""
        pp = link.postprocessing
        physics = cls(
            length_km=link.length_km,
            attenuation_db_per_km=link.attenuation_db_per_km,
            insertion_loss_db=link.insertion_loss_db,
            detector_efficiency=link.detector_efficiency,
            dark_count_probability=link.dark_count_probability,
            misalignment=link.misalignment,
            repetition_rate_hz=link.repetition_rate_hz,
            decoy=link.decoy,
            eavesdropper=None,
        )
        z = pp.z_basis_probability
        if z == "auto" and link.protocol not in ("bb84-decoy", "analytic"):
            z = 0.5  # the bound behind the choice is decoy BB84's
        elif z == "auto":
            from keyplane.physical.analytic import auto_z_basis  # analytic imports physics
            z = auto_z_basis(physics, pp.block_size_bits, eps_sec=pp.security_epsilon,
                             statistics=pp.finite_key_statistics)
        return physics.with_changes(z_basis_probability=z, eavesdropper=link.eavesdropper)

    def with_changes(self, **changes: object) -> LinkPhysics:
        """A copy with some fields replaced (faults)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def loss_db(self) -> float:
        """Total channel loss in dB (fibre, insertion, extra), detector excluded."""
        return (self.attenuation_db_per_km * self.length_km + self.insertion_loss_db
                + self.extra_loss_db)

    def transmittance(self) -> float:
        """``eta``: probability that one photon sent by Alice clicks Bob's detector."""
        if self.cut:
            return 0.0
        return float(10.0 ** (-self.loss_db / 10.0) * self.detector_efficiency)

    @property
    def intensities(self) -> tuple[float, float, float]:
        """Mean photon numbers (signal, decoy, vacuum)."""
        d = self.decoy
        return (d.mu_signal, d.mu_decoy, d.mu_vacuum)

    @property
    def class_probabilities(self) -> tuple[float, float, float]:
        """Probabilities of sending each intensity class."""
        d = self.decoy
        return (d.p_signal, d.p_decoy, d.p_vacuum)

    def gain(self, mu: float) -> float:
        """``Q_mu = 1 - (1 - Y0) exp(-eta*mu)`` without an eavesdropper."""
        return 1.0 - (1.0 - self.dark_count_probability) * math.exp(-self.transmittance() * mu)

    def error_rate(self, mu: float) -> float:
        """``E_mu`` given a detection with matching bases, without an eavesdropper."""
        q = self.gain(mu)
        if q <= 0.0:
            return DARK_COUNT_ERROR
        y0 = self.dark_count_probability
        signal = 1.0 - math.exp(-self.transmittance() * mu)
        return (DARK_COUNT_ERROR * y0 + self.misalignment * signal) / q

    def _eve_split(self) -> tuple[float, float]:
        """(fibre transmittance Alice→Eve, transmittance Eve→Bob's click)."""
        eve = self.eavesdropper
        assert eve is not None
        if self.cut:
            return 0.0, 0.0
        a = self.attenuation_db_per_km
        eta_ae = 10.0 ** (-(a * eve.position_km) / 10.0)
        rest_db = a * (self.length_km - eve.position_km) + self.insertion_loss_db \
            + self.extra_loss_db
        eta_eb = 10.0 ** (-rest_db / 10.0) * self.detector_efficiency
        return eta_ae, eta_eb

    def intercepted_gain(self, mu: float) -> float:
        """Bob's detection probability for a pulse the eavesdropper intercepted."""
        eta_ae, eta_eb = self._eve_split()
        p_eve = 1.0 - math.exp(-eta_ae * mu)
        return 1.0 - (1.0 - self.dark_count_probability) * (1.0 - p_eve * eta_eb)

    def intercepted_error_rate(self, mu: float) -> float:
        """Error probability of a detection (matching bases) of an intercepted pulse."""
        q = self.intercepted_gain(mu)
        if q <= 0.0:
            return DARK_COUNT_ERROR
        eta_ae, eta_eb = self._eve_split()
        p_photon = (1.0 - math.exp(-eta_ae * mu)) * eta_eb
        y0 = self.dark_count_probability
        return (DARK_COUNT_ERROR * y0 + (0.25 + 0.5 * self.misalignment) * p_photon) / q

    @property
    def key_basis(self) -> int:
        """The basis whose sifted events form the key (the more probable one; 0 = Z on a
        tie); the other basis is the test basis (Lim et al. 2014's X and Z)."""
        return BASIS_Z if self.z_basis_probability >= 0.5 else BASIS_X

    def expected_sifted_fraction(self) -> float:
        """Expected sifted key-basis bits per pulse, every intensity (frame sizing)."""
        pk = max(self.z_basis_probability, 1.0 - self.z_basis_probability)
        detect = sum(p * self.gain(mu) for p, mu in zip(self.class_probabilities,
                                                        self.intensities, strict=True))
        return pk * pk * detect


@dataclass(frozen=True, slots=True)
class AliceRecord:
    """What Alice knows about the detected slots of one frame (kept at Alice).

    Arrays are (d,) with d the number of detections, aligned with :class:`BobRecord`.
    """

    intensity_class: NDArray[np.uint8]
    bases: Bits
    bits: Bits
    pulses_per_class: tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class BobRecord:
    """What Bob's detectors recorded in one frame: the quantum frame sent to Bob."""

    bases: Bits
    bits: Bits

    @property
    def detections(self) -> int:
        """Number of detection events."""
        return int(self.bases.shape[0])


def _words(rng: np.random.Generator, n: int) -> NDArray[np.uint32]:
    """``n`` uniform 32-bit words, the bit generator's raw 64-bit output halved (1.1 ns a
    word against 2.0 for a float32 draw and its comparison)."""
    return rng.bit_generator.random_raw((n + 1) // 2).view(np.uint32)[:n]


def _threshold(p: np.float32) -> np.uint32:
    """``T`` with ``P(word < T)`` exactly numpy's ``P(random(dtype=float32) < p)``: the
    float32 draw is 24 random bits over ``2^24``, so ``ceil(p 2^24)`` of its values fall
    below ``p``; shifted to the top 24 bits of a word (``p`` = 1: all but one word)."""
    return np.uint32(min(math.ceil(float(p) * (1 << 24)) << 8, 0xFFFFFFFF))


def emulate_frame(physics: LinkPhysics, n_pulses: int,
                  rng: np.random.Generator) -> tuple[AliceRecord, BobRecord]:
    """Emulate ``n_pulses`` pulses through the link; only detections are materialized.

    Pulses are iid: each is of class ``k`` with probability ``p_k``, intercepted with
    probability ``f``, and detected with its gain. So the number of detections is one
    binomial draw, and each detection's (class, intercepted) segment an independent
    categorical draw: detections come out in a random order of classes, as pulses of a
    real source do, so a block cut anywhere in the stream holds every class in
    proportion (each block is judged on its own counts). The undetected pulses of each
    class are one multinomial draw.

    Args:
        physics: the link's parameters now.
        n_pulses: pulses in the frame (repetition rate x frame duration).
        rng: the emulator's generator (seeded by the caller; physics randomness only).

    Returns:
        Alice's record of the detected slots and Bob's detection record, aligned.
    """
    probs = physics.class_probabilities
    eve = physics.eavesdropper
    fraction = eve.fraction if eve is not None else 0.0
    seg_p: list[float] = []  # per pulse: P(segment and detected)
    seg_err: list[float] = []
    seg_class: list[int] = []
    for c, mu in enumerate(physics.intensities):
        seg_p.append(probs[c] * (1.0 - fraction) * physics.gain(mu))
        seg_err.append(physics.error_rate(mu))
        seg_class.append(c)
        if fraction > 0.0:
            seg_p.append(probs[c] * fraction * physics.intercepted_gain(mu))
            seg_err.append(physics.intercepted_error_rate(mu))
            seg_class.append(c)
    p_detect = min(1.0, sum(seg_p))
    d = int(rng.binomial(n_pulses, p_detect)) if p_detect > 0.0 else 0
    # Each kind of draw below covers the whole frame, in the same order as one draw per
    # kind (consecutive draws of one kind continue the generator's stream exactly), but is
    # consumed 2^16 detections at a time: the frame's float temporaries (32 MB of float64 at
    # 4*10^6 detections, a 10^6-bit block's frame) never leave the cache. Same frames as
    # whole-array draws, bit for bit (tests/unit/physical/test_physics.py).
    chunks = [(lo, min(d, lo + _EMULATE_CHUNK)) for lo in range(0, d, _EMULATE_CHUNK)]
    # segment of each detection: thresholds on one uniform draw per event (float64: the
    # vacuum class's share, ~1e-6, needs finer steps than float32's 2^-24)
    cum = np.cumsum(np.asarray(seg_p, dtype=np.float64)) / max(p_detect, 1e-300)
    intensity_class = np.zeros(d, dtype=np.uint8)
    segment = np.zeros(d, dtype=np.uint8)
    above = np.empty(min(d, _EMULATE_CHUNK), dtype=bool)
    at_least = [d] + [0] * 2  # detections of class >= c
    for lo, hi in chunks:
        u = rng.random(hi - lo)
        ab = above[:hi - lo]
        # segments are in class order, so masks u >= edge are nested: each edge counts one
        # more segment and, where the class changes, one more class
        for i, edge in enumerate(cum[:-1]):
            np.greater_equal(u, edge, out=ab)
            segment[lo:hi] += ab
            if seg_class[i + 1] != seg_class[i]:
                intensity_class[lo:hi] += ab
                at_least[seg_class[i + 1]] += int(np.count_nonzero(ab))
    detected = np.asarray([at_least[0] - at_least[1], at_least[1] - at_least[2],
                           at_least[2]], dtype=np.int64)
    missed = [probs[c] - sum(p for p, k in zip(seg_p, seg_class, strict=True) if k == c)
              for c in range(3)]
    total_missed = sum(missed)
    undetected = rng.multinomial(n_pulses - d, [m / total_missed for m in missed]) \
        if total_missed > 0 and n_pulses > d else np.zeros(3, dtype=np.int64)
    pulses = detected + undetected
    t_x = _threshold(np.float32(1.0 - physics.z_basis_probability))
    bases_alice = np.empty(d, dtype=np.uint8)
    bases_bob = np.empty(d, dtype=np.uint8)
    for bases in (bases_alice, bases_bob):
        for lo, hi in chunks:
            np.less(_words(rng, hi - lo), t_x, out=bases[lo:hi].view(bool))
    bits_alice = np.unpackbits(np.frombuffer(rng.bytes((d + 7) // 8), dtype=np.uint8),
                               count=d)
    # a mismatched basis gives Bob a uniformly random bit: error rate per (basis match,
    # segment) from one table (a take costs 1.9 ns per event; the masked copyto per edge
    # it replaces, 4.2 ns each)
    e_table = np.asarray([_threshold(np.float32(e)) for e in seg_err + [0.5] * len(seg_err)],
                         dtype=np.uint32)
    mismatch = np.uint8(len(seg_err))
    bits_bob = np.empty(d, dtype=np.uint8)
    for lo, hi in chunks:
        seg = segment[lo:hi]
        seg += (bases_alice[lo:hi] != bases_bob[lo:hi]).view(np.uint8) * mismatch
        flips = _words(rng, hi - lo) < e_table.take(seg)
        np.bitwise_xor(bits_alice[lo:hi], flips.view(np.uint8), out=bits_bob[lo:hi])
    alice = AliceRecord(intensity_class=intensity_class, bases=bases_alice, bits=bits_alice,
                        pulses_per_class=(int(pulses[0]), int(pulses[1]), int(pulses[2])))
    return alice, BobRecord(bases=bases_bob, bits=bits_bob)
