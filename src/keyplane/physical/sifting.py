"""Sifting and sampling stages (pure functions on bit arrays) and the sifted-key buffer.

Sifting keeps the detections where Alice's and Bob's bases agree. As in Lim et al., PRA
89, 022307 (2014), the key is made of the sifted events of the *key basis* (the more
probable one, :attr:`LinkPhysics.key_basis`), every intensity; Alice discloses her bits of
the sifted *test-basis* events, every intensity, so Bob counts their errors per intensity.
A biased basis choice (``z_basis_probability`` != 0.5) puts more events in the key.

Intensity classes go on the wire as two packed bit planes (``class = 2*hi + lo``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from keyplane.physical.bits import Bits, pack, unpack
from keyplane.physical.finite_key import BlockCounts

T = TypeVar("T", bound=np.generic)

__all__ = [
    "FrameSift",
    "SiftedKeyBuffer",
    "class_counts",
    "decode_classes",
    "encode_classes",
    "sift_frame",
    "sift_mask",
    "split_bases",
]

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


@dataclass(frozen=True, slots=True)
class FrameSift:
    """One frame's sifted events split into key and test basis (same at both ends).

    ``test_key_index[j]``: how many key events precede test event ``j`` in the frame, which
    places every test event between two key events, so blocks cut the test events exactly
    where they cut the key.
    """

    key_bits: Bits
    key_classes: NDArray[np.uint8]
    test_bits: Bits
    test_classes: NDArray[np.uint8]
    test_key_index: NDArray[np.int64]


def split_bases(bits: Bits, bases: Bits, classes: NDArray[np.uint8],
                key_basis: int) -> FrameSift:
    """Split sifted events (``bits``, their common ``bases``, intensity ``classes``) into
    the key basis and the test basis, keeping their interleaving."""
    # index arrays and take(), not boolean masks: on random masks numpy's masked gather
    # is about 8x slower (2e6 events: 48 ms against 6 ms)
    key = np.flatnonzero(bases == key_basis)
    test = np.flatnonzero(bases != key_basis)
    # key events before test event j: its position minus the test events before it
    before = test - np.arange(test.shape[0], dtype=np.int64)
    return FrameSift(key_bits=bits.take(key), key_classes=classes.take(key),
                     test_bits=bits.take(test), test_classes=classes.take(test),
                     test_key_index=before)


def sift_frame(mine: Bits, peer: Bits, bits: Bits, classes: NDArray[np.uint8],
               per_sifted: bool, key_basis: int, compiled: bool = False
               ) -> tuple[FrameSift, NDArray[np.uint8]]:
    """Sift one frame at one end and split it (:func:`sift_mask`, then
    :func:`split_bases`): the split, and the intensity class of every sifted event.

    ``mine``/``peer``: this end's and the peer's basis per detection; ``bits``: this end's
    bits; ``classes``: per detection, or per sifted event when ``per_sifted`` (Bob's view).
    ``compiled`` (links with blocks of at least
    :data:`~keyplane.physical.bits.FAST_MIN_BITS` bits) runs
    :mod:`keyplane.physical.fastsift`'s one-pass kernel when numba is there: the same
    output, tested.

    Raises:
        ValueError: announcements, bits or classes of inconsistent lengths.
    """
    if compiled:
        from keyplane.physical import fastsift  # numba only for large blocks
        if fastsift.available():
            kb, kc, tb, tc, ti, sc = fastsift.sift_split(mine, peer, bits, classes,
                                                         per_sifted, key_basis)
            return FrameSift(key_bits=kb, key_classes=kc, test_bits=tb, test_classes=tc,
                             test_key_index=ti), sc
    if bits.shape != mine.shape:
        raise ValueError("bits and basis announcements of different lengths")
    sifted = np.flatnonzero(sift_mask(mine, peer))  # take() beats a masked gather
    if per_sifted:
        if classes.shape[0] != sifted.shape[0]:
            raise ValueError(f"{classes.shape[0]} classes for {sifted.shape[0]} sifted events")
        sifted_classes = classes
    else:
        if classes.shape != mine.shape:
            raise ValueError("classes and basis announcements of different lengths")
        sifted_classes = classes.take(sifted)
    return split_bases(bits.take(sifted), mine.take(sifted), sifted_classes,
                       key_basis), sifted_classes


@dataclass(slots=True)
class SiftedKeyBuffer:
    """Sifted key-basis bits waiting to fill a block, with the test-basis events that came
    between them.

    A block is the next ``n`` key bits; it carries exactly the test events that arrived
    before its last key bit (and after the previous block's), so its counts per intensity
    (:class:`~keyplane.physical.finite_key.BlockCounts`) are its own pulses' counts. Both
    modules feed it the same announced events, so both cut identical blocks. Only the
    emulated time and pulse counts (telemetry) are shared out in proportion to bits taken.
    """

    key_bits: list[Bits] = field(default_factory=list)
    key_classes: list[NDArray[np.uint8]] = field(default_factory=list)
    test_classes: list[NDArray[np.uint8]] = field(default_factory=list)
    test_errors: list[NDArray[np.bool_]] = field(default_factory=list)
    test_index: list[NDArray[np.int64]] = field(default_factory=list)
    size: int = 0
    offset: int = 0  # absolute index of the first buffered key bit
    pulses: int = 0
    duration_s: float = 0.0

    def add(self, frame: FrameSift, test_errors: NDArray[np.bool_] | None, pulses: int,
            duration_s: float) -> None:
        """Append one frame's events (``test_errors``: Bob's per test event; ``None`` at
        Alice, who learns the block's error counts from Bob)."""
        end = self.offset + self.size
        self.key_bits.append(frame.key_bits)
        self.key_classes.append(frame.key_classes)
        self.test_classes.append(frame.test_classes)
        self.test_errors.append(test_errors if test_errors is not None else
                                np.zeros(frame.test_classes.shape[0], dtype=bool))
        self.test_index.append(frame.test_key_index + end)
        self.size += int(frame.key_bits.shape[0])
        self.pulses += pulses
        self.duration_s += duration_s

    def take(self, n: int) -> tuple[Bits, BlockCounts, int, float]:
        """Remove the next block: ``n`` key bits, its own counts, its share of pulses and
        emulated time.

        Raises:
            ValueError: fewer than ``n`` bits are buffered.
        """
        if n > self.size:
            raise ValueError(f"only {self.size} sifted bits buffered, {n} requested")
        bits, rest_bits = _split(self.key_bits, n, np.uint8)
        classes, rest_classes = _split(self.key_classes, n, np.uint8)
        cut, rest_index = _cut(self.test_index, self.offset + n)
        t_classes, rest_t_classes = _split(self.test_classes, cut, np.uint8)
        t_errors, rest_t_errors = _split(self.test_errors, cut, np.bool_)
        self.key_bits, self.key_classes = rest_bits, rest_classes
        self.test_classes, self.test_errors = rest_t_classes, rest_t_errors
        self.test_index = rest_index
        pulses = self.pulses * n // self.size
        duration = self.duration_s * n / self.size
        self.pulses -= pulses
        self.duration_s -= duration
        self.size -= n
        self.offset += n
        counts = BlockCounts(key=class_counts(classes), test=class_counts(t_classes),
                             test_errors=class_counts(t_classes[t_errors]))
        return bits, counts, pulses, duration

    def reset(self) -> None:
        """Drop everything (after a protocol failure both ends restart clean)."""
        self.key_bits, self.key_classes = [], []
        self.test_classes, self.test_errors, self.test_index = [], [], []
        self.offset += self.size
        self.size = 0
        self.pulses = 0
        self.duration_s = 0.0


def _cut(chunks: list[NDArray[np.int64]], end: int) -> tuple[int, list[NDArray[np.int64]]]:
    """How many of the test events' key indices (ascending across the chunks) lie below
    ``end``, and the chunks of the others: a search per chunk, no concatenation (of 8-byte
    indices, 5 ms per 10^6-bit block)."""
    cut = 0
    for i, chunk in enumerate(chunks):
        below = int(np.searchsorted(chunk, end, side="left"))
        cut += below
        if below < chunk.shape[0]:
            return cut, [chunk[below:], *chunks[i + 1:]]
    return cut, []


def _split(chunks: list[NDArray[T]], n: int, dtype: type[T]
           ) -> tuple[NDArray[T], list[NDArray[T]]]:
    """The first ``n`` elements of the concatenated chunks, and the rest."""
    if not chunks:
        return np.zeros(0, dtype=dtype), []
    whole = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    rest = whole[n:]
    return whole[:n], [rest] if rest.shape[0] else []


def class_counts(classes: NDArray[np.uint8]) -> tuple[int, int, int]:
    """Events of intensity class 0, 1 and 2 (any other value counted in none): one
    comparison per class, not ``np.bincount``, which widens uint8 to intp first (18 against
    1.5 ms on a frame's 4*10^6 detections)."""
    return (int(np.count_nonzero(classes == 0)), int(np.count_nonzero(classes == 1)),
            int(np.count_nonzero(classes == 2)))
