"""Sifting and sampling stages (pure functions on bit arrays) and the sifted-key buffer.

Sifting keeps the detections where Alice's and Bob's bases agree. The key is made of the
sifted *signal-intensity* events (both bases: with ``z_basis_probability`` != 0.5 the
basis choice is biased, which raises the sifting ratio ``pz^2 + (1-pz)^2``); sifted decoy
and vacuum events are disclosed by Alice to measure their error rates.

Intensity classes go on the wire as two packed bit planes (``class = 2*hi + lo``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from keyplane.physical.bits import Bits, pack, shake_uniform_u16, unpack
from keyplane.physical.estimation import DecoyCounts

__all__ = [
    "SAMPLE_LABEL",
    "SiftedKeyBuffer",
    "decode_classes",
    "encode_classes",
    "sample_mask",
    "sift_mask",
]

SAMPLE_LABEL = b"keyplane.pe.sample"


def sift_mask(bases_alice: Bits, bases_bob: Bits) -> NDArray[np.bool_]:
    """Detections measured in the basis Alice prepared: (d,) bool."""
    if bases_alice.shape != bases_bob.shape:
        raise ValueError("basis announcements of different lengths")
    same: NDArray[np.bool_] = bases_alice == bases_bob
    return same


def encode_classes(classes: NDArray[np.uint8]) -> tuple[bytes, bytes]:
    """Two packed bit planes (hi, lo) of 2-bit intensity classes."""
    hi = np.right_shift(classes, 1, dtype=np.uint8)
    lo = np.bitwise_and(classes, 1, dtype=np.uint8)
    return pack(hi), pack(lo)


def decode_classes(hi: bytes, lo: bytes, n: int) -> NDArray[np.uint8]:
    """Inverse of :func:`encode_classes`."""
    return np.bitwise_or(np.left_shift(unpack(hi, n), 1, dtype=np.uint8), unpack(lo, n))


def sample_mask(seed: bytes, n: int, fraction: float) -> NDArray[np.bool_]:
    """Positions disclosed for the QBER estimate: each position independently with
    probability ``fraction`` (16-bit resolution), from SHAKE-128(seed)."""
    threshold = np.uint16(min(65535, round(fraction * 65536)))
    return shake_uniform_u16(seed, SAMPLE_LABEL, n) < threshold


@dataclass(slots=True)
class SiftedKeyBuffer:
    """Sifted signal bits waiting to fill a block, with the counts they came with.

    Both modules feed it the same announced numbers, so both cut identical blocks with
    identical counts. Counts and emulated time are shared out among blocks in proportion
    to the bits taken (integer arithmetic, the same at both ends).
    """

    chunks: list[Bits] = field(default_factory=list)
    size: int = 0
    pulses: NDArray[np.int64] = field(default_factory=lambda: np.zeros(3, np.int64))
    detections: NDArray[np.int64] = field(default_factory=lambda: np.zeros(3, np.int64))
    sifted: NDArray[np.int64] = field(default_factory=lambda: np.zeros(3, np.int64))
    errors: NDArray[np.int64] = field(default_factory=lambda: np.zeros(3, np.int64))
    duration_s: float = 0.0

    def add(self, key_bits: Bits, pulses: NDArray[np.int64], detections: NDArray[np.int64],
            sifted: NDArray[np.int64], errors: NDArray[np.int64], duration_s: float) -> None:
        """Append one frame's sifted signal bits and counts."""
        if key_bits.shape[0]:
            self.chunks.append(key_bits)
            self.size += int(key_bits.shape[0])
        self.pulses += pulses
        self.detections += detections
        self.sifted += sifted
        self.errors += errors
        self.duration_s += duration_s

    def take(self, n: int) -> tuple[Bits, DecoyCounts, float]:
        """Remove the first ``n`` bits and their share of counts and time.

        Raises:
            ValueError: fewer than ``n`` bits are buffered.
        """
        if n > self.size:
            raise ValueError(f"only {self.size} sifted bits buffered, {n} requested")
        whole = np.concatenate(self.chunks) if len(self.chunks) > 1 else self.chunks[0]
        block, rest = whole[:n], whole[n:]
        self.chunks = [rest] if rest.shape[0] else []
        share = [(arr * n) // self.size for arr in
                 (self.pulses, self.detections, self.sifted, self.errors)]
        duration = self.duration_s * n / self.size
        for arr, part in zip((self.pulses, self.detections, self.sifted, self.errors), share,
                             strict=True):
            arr -= part
        self.duration_s -= duration
        self.size -= n
        counts = DecoyCounts(pulses=_t3(share[0]), detections=_t3(share[1]),
                             sifted=_t3(share[2]), errors=_t3(share[3]))
        return block, counts, duration

    def reset(self) -> None:
        """Drop everything (after a protocol failure both ends restart clean)."""
        self.chunks = []
        self.size = 0
        for arr in (self.pulses, self.detections, self.sifted, self.errors):
            arr[:] = 0
        self.duration_s = 0.0


def _t3(a: NDArray[np.int64]) -> tuple[int, int, int]:
    return (int(a[0]), int(a[1]), int(a[2]))
