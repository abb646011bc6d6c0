"""Compiled verification tag (optional extra ``fast``: numba), the same 16 bytes as Python's.

:func:`keyplane.physical.hashing.polynomial_tag` evaluates the key's polynomial over
GF(2^127 - 1) with Python integers, one interpreted step per 120-bit chunk: 8,334 steps,
about 5 ms per 10^6-bit block and end (some 10 ns per sifted bit, as much as privacy
amplification once that is compiled). Here the same Horner steps run on two 64-bit words:
the 127 x 128-bit product from 32-bit partial products (numba has no 128-bit integer),
reduced with the Mersenne identity ``2^127 = 1 (mod p)``. Integer arithmetic only;
``tests/unit/physical/test_hashing.py`` compares it with the Python tag.

Used only for keys of at least :data:`~keyplane.physical.bits.FAST_MIN_BITS` bits (the
caller decides), so links with small blocks never import numba; ``KEYPLANE_NO_FAST=1``
turns it off.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# numba as fastperm imported it (None without it or with ``KEYPLANE_NO_FAST``)
from keyplane.physical.fastperm import available, numba

__all__ = ["available", "polynomial_tag"]

_U = np.uint64
_M32, _M63, _M64 = _U(0xFFFFFFFF), _U(0x7FFFFFFFFFFFFFFF), _U(0xFFFFFFFFFFFFFFFF)
_S1, _S8, _S32, _S56, _S63 = _U(1), _U(8), _U(32), _U(56), _U(63)


def _mul64(a: Any, b: Any) -> Any:  # pragma: no cover - compiled
    """The 128-bit product of two uint64 as (low, high) words, from 32-bit halves."""
    a0, a1 = _U(a & _M32), _U(a >> _S32)
    b0, b1 = _U(b & _M32), _U(b >> _S32)
    p00, p01 = _U(a0 * b0), _U(a0 * b1)
    p10, p11 = _U(a1 * b0), _U(a1 * b1)
    mid = _U(_U(p00 >> _S32) + _U(p01 & _M32) + _U(p10 & _M32))
    lo = _U(_U(p00 & _M32) | _U(mid << _S32))
    hi = _U(p11 + _U(p01 >> _S32) + _U(p10 >> _S32) + _U(mid >> _S32))
    return lo, hi


def _add128(lo: Any, hi: Any, b_lo: Any, b_hi: Any) -> Any:  # pragma: no cover - compiled
    """(low, high) + (b_lo, b_hi) mod 2^128."""
    s = _U(lo + b_lo)
    return s, _U(hi + b_hi + _U(s < lo))


def _fold(lo: Any, hi: Any) -> Any:  # pragma: no cover - compiled
    """``x mod (2^127 - 1)`` for ``x < 2^128`` (``2^127 = 1``: the low 127 bits plus bit
    127, twice, then ``p`` itself to 0)."""
    for _ in range(2):
        lo, hi = _add128(lo, _U(hi & _M63), _U(hi >> _S63), _U(0))
    if hi == _M63 and lo == _M64:
        return _U(0), _U(0)
    return lo, hi


def _mulmod(x_lo: Any, x_hi: Any, r_lo: Any, r_hi: Any) -> Any:  # pragma: no cover
    """``x r mod (2^127 - 1)`` for ``x, r <= 2^127``, as (low, high) words."""
    # the four partial products into words w0..w3 (the product is at most 2^254)
    l00, h00 = _mul64(x_lo, r_lo)
    l01, h01 = _mul64(x_lo, r_hi)
    l10, h10 = _mul64(x_hi, r_lo)
    l11, h11 = _mul64(x_hi, r_hi)
    w0 = l00
    w1, c2 = _add128(h00, _U(0), l01, _U(0))
    w1, c2 = _add128(w1, c2, l10, _U(0))
    w2, w3 = _add128(h01, _U(0), h10, _U(0))
    w2, w3 = _add128(w2, w3, l11, h11)
    w2, w3 = _add128(w2, w3, c2, _U(0))
    # 2^127 = 1: the low 127 bits plus the rest shifted down by 127 (each below 2^127,
    # so their sum fits 128 bits)
    r0 = _U(_U(w1 >> _S63) | _U(w2 << _S1))
    r1 = _U(_U(w2 >> _S63) | _U(w3 << _S1))
    lo, hi = _add128(w0, _U(w1 & _M63), r0, r1)
    return _fold(lo, hi)


def _tag_kernel(data: Any, chunk: int, r_lo: Any, r_hi: Any, n_bits: Any,
                out: Any) -> None:  # pragma: no cover - compiled
    """``acc = (acc + c_i) r`` over the big-endian chunks of ``chunk`` bytes (the last one
    shorter if the data ends), then ``acc + n_bits``, all mod ``2^127 - 1``; ``out`` gets
    (low, high)."""
    acc_lo, acc_hi = _U(0), _U(0)
    for start in range(0, data.shape[0], chunk):
        c_lo, c_hi = _U(0), _U(0)
        for i in range(start, min(start + chunk, data.shape[0])):
            c_hi = _U(_U(c_hi << _S8) | _U(c_lo >> _S56))
            c_lo = _U(_U(c_lo << _S8) | _U(data[i]))
        x_lo, x_hi = _add128(acc_lo, acc_hi, c_lo, c_hi)  # below 2^127 + 2^120
        x_lo, x_hi = _fold(x_lo, x_hi)
        acc_lo, acc_hi = _mulmod(x_lo, x_hi, r_lo, r_hi)
    acc_lo, acc_hi = _add128(acc_lo, acc_hi, n_bits, _U(0))
    acc_lo, acc_hi = _fold(acc_lo, acc_hi)
    out[0] = acc_lo
    out[1] = acc_hi


if numba is not None:
    _inline = numba.njit(inline="always")
    _mul64 = _inline(_mul64)
    _add128 = _inline(_add128)
    _fold = _inline(_fold)
    _mulmod = _inline(_mulmod)
    _tag_kernel = numba.njit(cache=True, nogil=True, boundscheck=False)(_tag_kernel)


def polynomial_tag(data: bytes, chunk: int, r: int, n_bits: int) -> bytes:
    """The tag of :func:`keyplane.physical.hashing.polynomial_tag` for the packed key
    ``data`` cut into ``chunk``-byte pieces (at most 15), at the point ``r < 2^127 - 1``.

    Raises:
        RuntimeError: numba is not available (check :func:`available` first).
        ValueError: a chunk of more than 15 bytes or a point out of range.
    """
    if numba is None:
        raise RuntimeError("the compiled tag needs numba: pip install 'keyplane[fast]'")
    if not 0 < chunk <= 15 or not 0 <= r < (1 << 127) - 1 or not 0 <= n_bits < 1 << 64:
        raise ValueError("chunk of 1-15 bytes, r below 2^127 - 1, n_bits below 2^64")
    out = np.zeros(2, dtype=np.uint64)
    _tag_kernel(np.frombuffer(data, dtype=np.uint8), chunk, _U(r & ((1 << 64) - 1)),
                _U(r >> 64), _U(n_bits), out)
    return ((int(out[1]) << 64) | int(out[0])).to_bytes(16, "big")
