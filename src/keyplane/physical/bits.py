"""Bit arrays, shared-seed expansion and the keyed shuffle both ends must reproduce.

Representation: pipeline stages hold one bit per ``uint8`` (values 0 or 1) in 1-D
arrays. Bits are packed only where they reach the wire, a hash or a key sink, always
with ``bitorder="big"`` (the first bit is the most significant bit of the first byte).

Anything both QKD modules must reproduce (sample positions, Cascade shuffles, Toeplitz
matrices) is derived from a short seed that travels on the classical channel, expanded
with SHAKE-128 (FIPS 202) by the functions below, never from a library RNG stream: NumPy
promises identical streams only on the same build, and a module on another host may run
another build.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Final

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "BITORDER",
    "Bits",
    "KeyedPermutation",
    "binary_entropy",
    "keyed_permutation",
    "keyed_permuted",
    "keyed_positions",
    "no_hugepage_advice",
    "pack",
    "shake_bits",
    "shake_uniform_u16",
    "unpack",
]

BITORDER: Final = "big"
Bits = NDArray[np.uint8]
"""(n,) uint8 ∈ {0,1}."""

FEISTEL_ROUNDS = 8
"""Rounds of :func:`keyed_permutation` (four updates of each half). Four rounds were not
enough on narrow halves (8-12 bits) with the earlier power-of-two network: for some
seeds pairs of positions close together in one pass's order stayed close in the next
pass's, so Cascade left pairs of errors hidden in both (seen as a 10^5-bit block whose 22
residual errors were 11 such pairs)."""

_M1 = np.uint32(0x7FEB352D)
_M2 = np.uint32(0x846CA68B)
_S15 = np.uint32(15)
_S16 = np.uint32(16)


def pack(bits: Bits) -> bytes:
    """Pack a bit array into bytes (big bit order; the last byte is zero-padded)."""
    return bytes(np.packbits(bits, bitorder=BITORDER).tobytes())


def unpack(data: bytes, n_bits: int) -> Bits:
    """Inverse of :func:`pack` for ``n_bits`` bits.

    Raises:
        ValueError: ``data`` holds fewer than ``n_bits`` bits.
    """
    if len(data) * 8 < n_bits:
        raise ValueError(f"{len(data)} bytes cannot hold {n_bits} bits")
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=n_bits, bitorder=BITORDER)


def shake_bits(seed: bytes, label: bytes, n_bits: int) -> Bits:
    """``n_bits`` bits of SHAKE-128(label || seed), as a bit array."""
    digest = hashlib.shake_128(label + seed).digest((n_bits + 7) // 8)
    return unpack(digest, n_bits)


def shake_uniform_u16(seed: bytes, label: bytes, n: int) -> NDArray[np.uint16]:
    """``n`` little-endian 16-bit integers of SHAKE-128(label || seed)."""
    digest = hashlib.shake_128(label + seed).digest(2 * n)
    return np.frombuffer(digest, dtype="<u2").astype(np.uint16, copy=False)


def _mix(v: NDArray[np.uint32], k: np.uint32) -> NDArray[np.uint32]:
    """lowbias32 (Wellons) of ``v ^ k``: the round function, in place on one temporary."""
    z = v ^ k
    z *= _M1
    z ^= z >> _S15
    z *= _M2
    z ^= z >> _S16
    return z


_CHUNK = 1 << 15
"""Elements per network evaluation: the round temporaries (uint32) stay in the L2 cache."""

_PACKED_GATHER_BITS = 1 << 22
"""From this key length on, :meth:`KeyedPermutation.permute` gathers from the key packed 8
bits a byte: random reads over n/8 bytes stay in the cache where n bytes do not (measured
at 10^7 bits: 3.5 against 7.0 ns per element; equal at 10^6)."""


FAST_MIN_BITS = 1 << 18
"""From this key length on, :meth:`KeyedPermutation.permute` runs compiled when the ``fast``
extra (numba) is installed (:mod:`keyplane.physical.fastperm`, the same output); shorter
keys stay in numpy, so links with small blocks never import numba."""


class KeyedPermutation:
    """The keyed network of one ``(n, seed, label)``, a permutation of ``[0, a b)``.

    Mixed radix: ``x = L b + R`` with ``L`` in ``[0, a)`` (``a`` a power of two near
    ``sqrt n``) and ``R`` in ``[0, b)``, ``b = ceil(n / a)``, so the domain exceeds ``n`` by
    less than ``a`` (cycle walking is nearly free at every ``n``; a power-of-two domain
    costs up to 2 evaluations per element, 1.7 at 10^7). Alternating Feistel rounds with
    modular addition (Black and Rogaway, CT-RSA 2002, "FE2"; the FFX "A2" alternation):
    even rounds ``L = (L + F(R)) mod a``, odd rounds ``R = (R + F(L) reduced to [0, b))
    mod b``, each invertible, so the network is a permutation whatever ``F`` is.
    """

    def __init__(self, n: int, seed: bytes, label: bytes) -> None:
        if n > (1 << 32) - (1 << 16):
            raise ValueError("keyed_permutation supports n <= 2^32 - 2^16")
        m = max(2, math.ceil(math.log2(max(n, 2))))
        self.n = n
        self.a = 1 << (m // 2)
        self.b = -(-n // self.a)  # <= 2^16, so F(L) >> 16 times b fits 32 bits
        self._amask = np.uint32(self.a - 1)
        self._b = np.uint32(self.b)
        digest = hashlib.shake_128(label + seed).digest(4 * FEISTEL_ROUNDS)
        self.keys = np.frombuffer(digest, dtype="<u4").astype(np.uint32)
        self.limit = np.uint32(n - 1)

    def _reduce_b(self, z: NDArray[np.uint32]) -> NDArray[np.uint32]:
        # Lemire's multiply-shift: the top 16 bits of F scaled to [0, b)
        z >>= _S16
        z *= self._b
        z >>= _S16
        return z

    def _once(self, x: NDArray[np.uint32]) -> NDArray[np.uint32]:
        left = x // self._b
        right = x - left * self._b
        for i, k in enumerate(self.keys):
            if i % 2 == 0:
                left += _mix(right, k)
                left &= self._amask
            else:
                right += self._reduce_b(_mix(left, k))
                np.minimum(right, right - self._b, out=right)  # mod b (wraps when < b)
        left *= self._b
        left += right
        return left

    def _once_inverse(self, y: NDArray[np.uint32]) -> NDArray[np.uint32]:
        left = y // self._b
        right = y - left * self._b
        for i in range(len(self.keys) - 1, -1, -1):
            k = self.keys[i]
            if i % 2 == 0:
                left -= _mix(right, k)
                left &= self._amask
            else:
                right += self._b
                right -= self._reduce_b(_mix(left, k))
                np.minimum(right, right - self._b, out=right)
        left *= self._b
        left += right
        return left

    def forward(self, x: NDArray[np.uint32]) -> NDArray[np.uint32]:
        """``perm[x]`` (cycle walking forward)."""
        y = self._once(x)
        idx = np.flatnonzero(y > self.limit)
        while idx.shape[0]:
            y[idx] = self._once(y[idx])
            idx = idx[y[idx] > self.limit]
        return y

    def inverse(self, y: NDArray[np.uint32]) -> NDArray[np.uint32]:
        """The positions ``j`` with ``perm[j] = y`` (cycle walking backward)."""
        x = self._once_inverse(y)
        idx = np.flatnonzero(x > self.limit)
        while idx.shape[0]:
            x[idx] = self._once_inverse(x[idx])
            idx = idx[x[idx] > self.limit]
        return x

    def permute(self, bits: Bits, out: Bits | None = None, start: int = 0,
                stop: int | None = None) -> Bits:
        """``bits[perm]`` (into ``out`` if given), chunk by chunk: no index array.

        With ``start``/``stop`` only ``out[start:stop]`` is written (the rest of ``out`` is
        left as it was): Cascade fills a pass's order piecewise, as far as it is read.
        """
        n = self.n
        stop = n if stop is None else min(stop, n)
        if out is None:
            out = np.empty(n, dtype=bits.dtype)
        packed = np.packbits(bits, bitorder="little") if n >= _PACKED_GATHER_BITS else None
        if n >= FAST_MIN_BITS and start < stop:
            from keyplane.physical import fastperm  # numba only for large keys
            if fastperm.available():
                fastperm.permute(bits, self.keys, self.a, self.b, out, start, stop, packed)
                return out
        for s in range(start, stop, _CHUNK):
            idx = self.forward(np.arange(s, min(stop, s + _CHUNK), dtype=np.uint32))
            dst = out[s:s + idx.shape[0]]
            if packed is None:
                np.take(bits, idx, out=dst)
            else:  # bit idx of the packed key: byte idx >> 3, bit idx & 7 (little order)
                byte = np.take(packed, idx >> np.uint32(3))
                byte >>= (idx & np.uint32(7)).astype(np.uint8)
                np.bitwise_and(byte, 1, out=dst)
        return out

    def positions(self, positions: NDArray[np.int64], *, inverse: bool = False
                  ) -> NDArray[np.int64]:
        """``perm[positions]``, or with ``inverse`` where ``perm`` places these indices."""
        x = positions.astype(np.uint32)
        if self.n >= FAST_MIN_BITS:
            from keyplane.physical import fastperm  # numba only for large keys
            if fastperm.available():
                return fastperm.positions(x, self.keys, self.a, self.b, self.n, inverse)
        return (self.inverse(x) if inverse else self.forward(x)).astype(np.int64)


def keyed_permutation(n: int, seed: bytes, label: bytes) -> NDArray[np.int64]:
    """A pseudo-random permutation of ``range(n)`` keyed by ``seed`` (same on every host).

    An 8-round alternating Feistel network with modular addition over a mixed-radix domain
    ``[0, a b)`` just above ``n`` (see :class:`KeyedPermutation`), with 32-bit round keys from
    SHAKE-128(label || seed) and Wellons' lowbias32 mixer as the round function, restricted
    to ``[0, n)`` by cycle walking (Black and Rogaway, CT-RSA 2002). Pure uint32
    arithmetic, so every NumPy build gives the same permutation, and cheaper than sorting
    random keys; evaluated in chunks of :data:`_CHUNK` elements.

    Returns:
        ``perm`` with ``perm[j]`` the original index placed at position ``j``.

    Raises:
        ValueError: ``n`` above ``2^32 - 2^16`` (the domain must fit 32 bits).
    """
    if n <= 1:
        return np.zeros(max(n, 0), dtype=np.int64)
    return KeyedPermutation(n, seed, label).positions(np.arange(n, dtype=np.int64))


def keyed_permuted(bits: Bits, seed: bytes, label: bytes, out: Bits | None = None) -> Bits:
    """``bits[keyed_permutation(len(bits), seed, label)]`` (into ``out`` if given) without
    building the index array: evaluated and gathered chunk by chunk (no 8n-byte
    permutation in memory)."""
    n = int(bits.shape[0])
    if n <= 1:
        out = np.empty(n, dtype=bits.dtype) if out is None else out
        out[:] = bits
        return out
    return KeyedPermutation(n, seed, label).permute(bits, out)


def keyed_positions(n: int, seed: bytes, label: bytes, positions: NDArray[np.int64],
                    *, inverse: bool = False) -> NDArray[np.int64]:
    """``perm[positions]`` of :func:`keyed_permutation` for a few positions, or with
    ``inverse`` the positions at which ``perm`` places the given original indices (the
    inverse permutation, by the inverse Feistel network: no n-element array)."""
    if n <= 1:
        return np.zeros(positions.shape[0], dtype=np.int64)
    return KeyedPermutation(n, seed, label).positions(positions, inverse=inverse)


def no_hugepage_advice() -> bool:
    """Stop numpy advising the kernel to back large arrays with transparent huge pages
    (``madvise(MADV_HUGEPAGE)`` on every array of 4 MiB or more, numpy's default on Linux).

    Process-wide; called by the QKD modules of links with blocks of at least
    :data:`FAST_MIN_BITS` bits, whose frames allocate arrays of several MiB many times per
    block. With the kernel's ``defrag`` setting at ``madvise`` (a common default) each fresh
    advised array may be compacted and zeroed 2 MiB at a time on its first touch: measured
    in the whole stack at 10^6-bit blocks, 0.25-0.6 s of system CPU per 3*10^6 sifted bits
    (80-200 ns per bit) against 0.06 s without the advice. Left alone when the operator
    set ``NUMPY_MADVISE_HUGEPAGE``. Returns whether the advice is now off.
    """
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return os.environ["NUMPY_MADVISE_HUGEPAGE"] == "0"
    try:
        from numpy._core.multiarray import (  # type: ignore[attr-defined]
            _set_madvise_hugepage,
        )
    except ImportError:  # another numpy layout: keep its default
        return False
    _set_madvise_hugepage(False)
    return True


def binary_entropy(p: float) -> float:
    """Shannon binary entropy h(p) in bits (0 at p = 0 or 1)."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return float(-p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p))
