"""Compiled sifting of one frame (optional extra ``fast``: numba), the same output as numpy's.

:func:`keyplane.physical.sifting.sift_frame` in numpy compares the two basis announcements,
takes the index array of the matching detections, gathers bits, bases and classes through
it, then splits the sifted events into key and test basis with two more index arrays and
four more gathers: about ten passes over a frame's 4*10^6 detections (a 10^6-bit block's
frame with unbiased bases), 60-70 ns per sifted key bit at both ends together. The kernel
below make two passes: the sifted detections' indices, then the split, each writing every
event at the next free slot of its outputs and advancing only where it belongs (no branch
on the random bases). ``tests/unit/physical/test_fastsift.py``
compares it with numpy's path.

Used only by links whose blocks have at least
:data:`~keyplane.physical.bits.FAST_MIN_BITS` bits (the caller decides), so the demo's
10^5-bit blocks never import numba; ``KEYPLANE_NO_FAST=1`` turns it off.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

# numba as fastperm imported it (None without it or with ``KEYPLANE_NO_FAST``)
from keyplane.physical.fastperm import available, numba

__all__ = ["available", "sift_split"]



def _index_kernel(mine: Any, peer: Any, key_basis: Any, index: Any,
                  is_key: Any) -> Any:  # pragma: no cover - compiled
    """The sifted detections' indices (``index`` one longer than the frame: each detection
    is written at the next free slot, which advances only when the bases agree), whether
    each is in the key basis, and the count of key-basis events."""
    s = np.int64(0)
    for i in range(mine.shape[0]):
        index[s] = i
        s += np.int64(mine[i] == peer[i])
    key = np.int64(0)
    for j in range(s):
        v = np.uint8(mine[index[j]] == key_basis)
        is_key[j] = v
        key += np.int64(v)
    return s, key


def _split_kernel(index: Any, is_key: Any, bits: Any, classes: Any, per_sifted: bool,
                  key_bits: Any, key_classes: Any, test_bits: Any, test_classes: Any,
                  test_index: Any, sifted_classes: Any) -> None:  # pragma: no cover
    """One pass over the sifted events: each is written at the next free slot of both
    outputs (one spare slot each) and only the one it belongs to advances (no branch on
    the random bases)."""
    k = np.int64(0)
    t = np.int64(0)
    for j in range(is_key.shape[0]):
        i = index[j]
        c = classes[j] if per_sifted else classes[i]
        b = bits[i]
        sifted_classes[j] = c
        v = np.int64(is_key[j])
        key_bits[k] = b
        key_classes[k] = c
        test_bits[t] = b
        test_classes[t] = c
        test_index[t] = k
        k += v
        t += 1 - v


if numba is not None:
    _index_kernel = numba.njit(cache=True, nogil=True, boundscheck=False)(_index_kernel)
    _split_kernel = numba.njit(cache=True, nogil=True, boundscheck=False)(_split_kernel)


def sift_split(mine: NDArray[np.uint8], peer: NDArray[np.uint8], bits: NDArray[np.uint8],
               classes: NDArray[np.uint8], per_sifted: bool, key_basis: int
               ) -> tuple[NDArray[np.uint8], NDArray[np.uint8], NDArray[np.uint8],
                          NDArray[np.uint8], NDArray[np.int64], NDArray[np.uint8]]:
    """Sift and split one frame: ``(key_bits, key_classes, test_bits, test_classes,
    test_key_index, sifted_classes)``, as :func:`keyplane.physical.sifting.sift_frame`.

    ``mine``/``peer``: this end's and the peer's basis per detection; ``bits``: this end's
    bit per detection; ``classes``: intensity class per detection, or per sifted event when
    ``per_sifted`` (Bob learns them only for sifted events).

    Raises:
        RuntimeError: numba is not available (check :func:`available` first).
        ValueError: arrays of inconsistent lengths.
    """
    if numba is None:
        raise RuntimeError("compiled sifting needs numba: pip install 'keyplane[fast]'")
    d = int(mine.shape[0])
    if peer.shape[0] != d or bits.shape[0] != d or (not per_sifted and classes.shape[0] != d):
        raise ValueError("basis announcements, bits and classes of different lengths")
    index = np.empty(d + 1, dtype=np.int64)
    is_key = np.empty(d, dtype=np.uint8)
    sifted, key = _index_kernel(mine, peer, np.uint8(key_basis), index, is_key)
    sifted, key = int(sifted), int(key)
    if per_sifted and classes.shape[0] != sifted:
        raise ValueError(f"{classes.shape[0]} classes for {sifted} sifted events")
    test = sifted - key
    key_bits = np.empty(key + 1, dtype=np.uint8)
    key_classes = np.empty(key + 1, dtype=np.uint8)
    test_bits = np.empty(test + 1, dtype=np.uint8)
    test_classes = np.empty(test + 1, dtype=np.uint8)
    test_index = np.empty(test + 1, dtype=np.int64)
    sifted_classes = np.empty(sifted, dtype=np.uint8)
    _split_kernel(index, is_key[:sifted], bits, classes, per_sifted, key_bits, key_classes,
                  test_bits, test_classes, test_index, sifted_classes)
    return (key_bits[:key], key_classes[:key], test_bits[:test], test_classes[:test],
            test_index[:test], sifted_classes)
