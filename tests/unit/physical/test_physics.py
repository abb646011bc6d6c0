"""Link physics: detection and error statistics match the model (fixed seeds, 5-sigma)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from keyplane.config import Eavesdropper, QuantumLink
from keyplane.physical import LinkPhysics, emulate_frame
from keyplane.physical import physics as physics_mod


def _physics(length_km: float = 25.0, **kw: object) -> LinkPhysics:
    return LinkPhysics.from_link(QuantumLink(endpoints=("a", "b"), length_km=length_km, **kw))


def test_transmittance_formula_matches_loss_budget() -> None:
    p = _physics(50.0, insertion_loss_db=2.0, detector_efficiency=0.1)
    assert p.transmittance() == pytest.approx(10 ** (-(0.2 * 50 + 2.0) / 10) * 0.1)
    assert p.with_changes(extra_loss_db=3.0).transmittance() == pytest.approx(
        10 ** (-(0.2 * 50 + 5.0) / 10) * 0.1)
    assert p.with_changes(cut=True).transmittance() == 0.0


def test_emulate_frame_detections_per_class_match_gain() -> None:
    p = _physics(25.0)
    alice, _bob = emulate_frame(p, 200_000_000, np.random.default_rng(11))
    assert sum(alice.pulses_per_class) == 200_000_000
    for c, mu in enumerate(p.intensities):
        n = alice.pulses_per_class[c]
        d = int(np.count_nonzero(alice.intensity_class == c))
        q = p.gain(mu)
        assert abs(d - n * q) < 5 * math.sqrt(n * q * (1 - q)) + 1, c


def test_emulate_frame_sifted_qber_matches_misalignment() -> None:
    p = _physics(10.0, misalignment=0.03)
    alice, bob = emulate_frame(p, 20_000_000, np.random.default_rng(12))
    sift = (alice.bases == bob.bases) & (alice.intensity_class == 0)
    errors = int(np.count_nonzero(alice.bits[sift] != bob.bits[sift]))
    n = int(sift.sum())
    e = p.error_rate(p.decoy.mu_signal)
    assert e == pytest.approx(0.03, abs=1e-3)
    assert abs(errors - n * e) < 5 * math.sqrt(n * e * (1 - e))


def test_emulate_frame_basis_choice_is_biased_as_configured() -> None:
    p = _physics(10.0).with_changes(z_basis_probability=0.8)
    alice, bob = emulate_frame(p, 5_000_000, np.random.default_rng(13))
    assert np.mean(alice.bases == 0) == pytest.approx(0.8, abs=0.01)
    assert np.mean(alice.bases == bob.bases) == pytest.approx(0.68, abs=0.01)


def test_emulate_frame_mismatched_bases_give_random_bits() -> None:
    p = _physics(10.0)
    alice, bob = emulate_frame(p, 5_000_000, np.random.default_rng(14))
    off = alice.bases != bob.bases
    assert np.mean(alice.bits[off] != bob.bits[off]) == pytest.approx(0.5, abs=0.01)


def test_full_intercept_resend_gives_quarter_qber() -> None:
    p = _physics(30.0).with_changes(eavesdropper=Eavesdropper(position_km=5.0, fraction=1.0))
    alice, bob = emulate_frame(p, 50_000_000, np.random.default_rng(15))
    sift = (alice.bases == bob.bases) & (alice.intensity_class == 0)
    qber = float(np.mean(alice.bits[sift] != bob.bits[sift]))
    assert qber == pytest.approx(0.25 + p.misalignment / 2, abs=0.01)
    assert p.intercepted_gain(0.5) != pytest.approx(p.gain(0.5), rel=0.01)


def test_cut_link_detects_only_dark_counts() -> None:
    p = _physics(10.0).with_changes(cut=True)
    _alice, bob = emulate_frame(p, 10_000_000, np.random.default_rng(16))
    assert bob.detections == pytest.approx(10_000_000 * p.dark_count_probability, abs=60)


@pytest.mark.parametrize("p", [0.5, 0.35, 0.15, 0.015, 0.0152, 1e-7, 0.9999999])
def test_word_threshold_is_the_float32_draws_probability(p: float) -> None:
    """A Bernoulli draw from a raw 32-bit word below ``_threshold(p)`` has exactly the
    probability of numpy's ``random(dtype=float32) < p``: checked on all 2^24 values the
    float32 draw takes (``(w >> 8) 2^-24``), with the low 8 bits both all-zero and all-one."""
    p32 = np.float32(p)
    k = np.arange(1 << 24, dtype=np.uint32)
    below_float = (k.astype(np.float32) * np.float32(2.0 ** -24)) < p32
    t = physics_mod._threshold(p32)
    assert np.array_equal(below_float, (k << np.uint32(8)) < t)
    assert np.array_equal(below_float, ((k << np.uint32(8)) | np.uint32(255)) < t)


@pytest.mark.parametrize("chunk", [1000, 1 << 16])
def test_emulate_frame_is_the_same_whatever_the_chunk(monkeypatch: pytest.MonkeyPatch,
                                                      chunk: int) -> None:
    """Draws consumed chunk by chunk give the frame of whole-frame draws, bit for bit (one
    chunk larger than the frame is the whole-frame draw), with an eavesdropper's extra
    segments too."""
    p = _physics(10.0).with_changes(eavesdropper=Eavesdropper(fraction=0.3, position_km=5.0))
    frames = []
    for size in (1 << 40, chunk):
        monkeypatch.setattr(physics_mod, "_EMULATE_CHUNK", size)
        alice, bob = emulate_frame(p, 10_000_001, np.random.default_rng(21))
        frames.append((alice, bob))
    (a1, b1), (a2, b2) = frames
    assert a1.bits.shape[0] > 4 * chunk  # several chunks
    for x, y in ((a1.intensity_class, a2.intensity_class), (a1.bases, a2.bases),
                 (a1.bits, a2.bits), (b1.bases, b2.bases), (b1.bits, b2.bits)):
        assert np.array_equal(x, y)
    assert a1.pulses_per_class == a2.pulses_per_class
