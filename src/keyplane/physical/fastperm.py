"""Compiled keyed permutation (optional extra ``fast``: numba), bit-identical to numpy's.

:meth:`~keyplane.physical.bits.KeyedPermutation.permute` in numpy runs each of the
network's 8 Feistel rounds as about ten passes over a chunk of uint32 temporaries, then a
separate gather: 13-16 ns per element at 10^6 bits, the largest single cost of Cascade
(each 10^6-bit block permutes 12-13 passes of n positions over both ends). The kernel below
evaluates the same network on one row of the mixed-radix domain at a time (``L`` fixed,
``R`` consecutive: no division, no branch, so LLVM vectorizes the rounds across the row
with 32-bit lanes), then walks the few cycles and gathers. Same uint32 arithmetic (every
intermediate cast back to uint32: numba widens integer arithmetic to 64 bits, whose
multiplications do not vectorize as well), same cycle walking, same output:
``tests/unit/physical/test_fastperm.py`` compares it with numpy on the same seeds.

Only :meth:`~keyplane.physical.bits.KeyedPermutation.permute` of keys of at least
:data:`~keyplane.physical.bits.FAST_MIN_BITS` bits imports this module, so a link with the
default 10^5-bit blocks never imports numba (issue #21's start-up: importing numba costs
about 0.2 s CPU, compiling the kernel 1-2 s). The machine code is cached on disk
(``cache=True``, in ``__pycache__`` beside this file or numba's ``NUMBA_CACHE_DIR``): the
first process on a machine compiles, later ones load it. ``KEYPLANE_NO_FAST=1`` turns the
compiled path off; the numpy path gives the same keys.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

Bits = NDArray[np.uint8]

KERNEL_ROUNDS = 8
"""Feistel rounds the kernel is written for (``keyplane.physical.bits.FEISTEL_ROUNDS``; this
module does not import bits.py, which imports it lazily: no import cycle)."""

__all__ = ["available", "permute", "positions", "prefix_xor", "range_parities"]

numba: ModuleType | None
try:
    if os.environ.get("KEYPLANE_NO_FAST", "") not in ("", "0"):
        raise ImportError("KEYPLANE_NO_FAST is set")
    import numba
except ImportError:
    numba = None

_U = np.uint32
_M1, _M2 = _U(0x7FEB352D), _U(0x846CA68B)
_S15, _S16, _S3, _S7, _ONE = _U(15), _U(16), _U(3), _U(7), _U(1)


def _mix(v: Any, k: Any) -> Any:  # pragma: no cover - compiled
    """lowbias32 of ``v ^ k`` (bits._mix), every step truncated to uint32."""
    z = _U(v ^ k)
    z = _U(z * _M1)
    z = _U(z ^ _U(z >> _S15))
    z = _U(z * _M2)
    return _U(z ^ _U(z >> _S16))


def _odd(left: Any, right: Any, k: Any, b: Any) -> Any:  # pragma: no cover - compiled
    """An odd round: ``R = (R + (F(L) >> 16) b >> 16) mod b`` (bits._reduce_b)."""
    right = _U(right + _U(_U(_U(_mix(left, k) >> _S16) * b) >> _S16))
    return _U(right - b) if right >= b else right


def _network(left: Any, right: Any, keys: Any, amask: Any, b: Any) -> Any:  # pragma: no cover
    """One evaluation of the 8-round network (bits.KeyedPermutation._once)."""
    left = _U(_U(left + _mix(right, keys[0])) & amask)
    right = _odd(left, right, keys[1], b)
    left = _U(_U(left + _mix(right, keys[2])) & amask)
    right = _odd(left, right, keys[3], b)
    left = _U(_U(left + _mix(right, keys[4])) & amask)
    right = _odd(left, right, keys[5], b)
    left = _U(_U(left + _mix(right, keys[6])) & amask)
    right = _odd(left, right, keys[7], b)
    return _U(_U(left * b) + right)


def _odd_inverse(left: Any, right: Any, k: Any, b: Any) -> Any:  # pragma: no cover
    """An odd round undone: ``R = (R + b - (F(L) >> 16) b >> 16) mod b``."""
    right = _U(_U(right + b) - _U(_U(_U(_mix(left, k) >> _S16) * b) >> _S16))
    return _U(right - b) if right >= b else right


def _network_inverse(left: Any, right: Any, keys: Any, amask: Any,
                     b: Any) -> Any:  # pragma: no cover - compiled
    """The 8-round network undone (bits.KeyedPermutation._once_inverse)."""
    right = _odd_inverse(left, right, keys[7], b)
    left = _U(_U(left - _mix(right, keys[6])) & amask)
    right = _odd_inverse(left, right, keys[5], b)
    left = _U(_U(left - _mix(right, keys[4])) & amask)
    right = _odd_inverse(left, right, keys[3], b)
    left = _U(_U(left - _mix(right, keys[2])) & amask)
    right = _odd_inverse(left, right, keys[1], b)
    left = _U(_U(left - _mix(right, keys[0])) & amask)
    return _U(_U(left * b) + right)


def _positions_kernel(x: Any, inverse: bool, keys: Any, amask: Any, b: Any, limit: Any,
                      out: Any) -> None:  # pragma: no cover - compiled
    """``out[i] = perm[x[i]]``, or with ``inverse`` the position ``perm`` places ``x[i]`` at
    (cycle walking forward or backward)."""
    for i in range(x.shape[0]):
        y = _U(x[i])
        while True:
            lx = _U(y // b)
            if inverse:
                y = _network_inverse(lx, _U(y - _U(lx * b)), keys, amask, b)
            else:
                y = _network(lx, _U(y - _U(lx * b)), keys, amask, b)
            if y <= limit:
                break
        out[i] = y


def _parities_kernel(flat: Any, starts: Any, ends: Any, out: Any) -> None:  # pragma: no cover
    """``out[i]`` = XOR of ``flat[starts[i]:ends[i]]`` (bits 0/1; the ranges may be empty)."""
    for i in range(starts.shape[0]):
        acc = np.uint8(0)
        for j in range(starts[i], ends[i]):
            acc ^= flat[j]
        out[i] = acc


def _prefix_kernel(row: Any, out: Any) -> None:  # pragma: no cover - compiled
    """``out[0] = 0``, ``out[i + 1] = out[i] ^ row[i]``."""
    acc = np.uint8(0)
    out[0] = acc
    for i in range(row.shape[0]):
        acc ^= row[i]
        out[i + 1] = acc


def _kernel(src: Any, packed: bool, keys: Any, amask: Any, b: Any, limit: Any,
            start: int, stop: int, out: Any) -> None:  # pragma: no cover - compiled
    """``out[start:stop] = key[perm[start:stop]]`` (``src`` the key, or packed little-endian
    when ``packed``).

    One row of the domain at a time (``L`` fixed, ``R`` consecutive), round by round over
    the whole row (structure of arrays: each round is one simple loop over two uint32
    arrays, which LLVM vectorizes; the network written per element did not vectorize as
    well: 6.9 against 2.4 ns per element at 10^6 bits, of which the gather 0.8), then the
    rare cycle walks, then the gather alone.
    """
    width = np.int64(b)
    left_row = np.empty(width, dtype=np.uint32)
    right_row = np.empty(width, dtype=np.uint32)
    j = np.int64(start)
    end = np.int64(stop)
    left = j // width
    first = j - left * width
    while j < end:
        # one row of the domain: L fixed, R = first .. first + count - 1
        count = min(width - first, end - j)
        for e in range(count):
            left_row[e] = _U(left)
            right_row[e] = _U(first + e)
        for r in range(0, KERNEL_ROUNDS, 2):
            k_even = keys[r]
            k_odd = keys[r + 1]
            for e in range(count):
                left_row[e] = _U(_U(left_row[e] + _mix(right_row[e], k_even)) & amask)
            for e in range(count):
                right_row[e] = _odd(left_row[e], right_row[e], k_odd, b)
        over = False
        for e in range(count):
            x = _U(_U(left_row[e] * b) + right_row[e])
            left_row[e] = x
            over |= x > limit
        if over:  # cycle walking: rare, the domain exceeds n by less than a
            for e in range(count):
                x = left_row[e]
                while x > limit:
                    lx = _U(x // b)
                    x = _network(lx, _U(x - _U(lx * b)), keys, amask, b)
                left_row[e] = x
        # the gather alone, no branch in the loop
        if packed:
            for e in range(count):
                x = left_row[e]
                out[j + e] = _U(src[x >> _S3] >> _U(x & _S7)) & _ONE
        else:
            for e in range(count):
                out[j + e] = src[left_row[e]]
        j += count
        left += 1
        first = np.int64(0)


if numba is not None:
    _inline = numba.njit(inline="always")
    _mix = _inline(_mix)
    _odd = _inline(_odd)
    _network = _inline(_network)
    _odd_inverse = _inline(_odd_inverse)
    _network_inverse = _inline(_network_inverse)
    _kernel = numba.njit(cache=True, nogil=True, boundscheck=False)(_kernel)
    _positions_kernel = numba.njit(cache=True, nogil=True, boundscheck=False)(_positions_kernel)
    _parities_kernel = numba.njit(cache=True, nogil=True, boundscheck=False)(_parities_kernel)
    _prefix_kernel = numba.njit(cache=True, nogil=True, boundscheck=False)(_prefix_kernel)


def available() -> bool:
    """Whether numba imported (and ``KEYPLANE_NO_FAST`` is not set)."""
    return numba is not None


def _need_numba() -> None:
    if numba is None:
        raise RuntimeError("the compiled permutation needs numba: pip install 'keyplane[fast]'")


def _check(keys: NDArray[np.uint32]) -> None:
    """The kernels' preconditions: numba present, the network's round count."""
    _need_numba()
    if keys.shape[0] != KERNEL_ROUNDS:
        raise ValueError(f"the kernel is written for {KERNEL_ROUNDS} rounds")


def permute(bits: Bits, keys: NDArray[np.uint32], a: int, b: int, out: Bits, start: int,
            stop: int, packed: Bits | None) -> None:
    """``out[start:stop] = bits[perm[start:stop]]`` for the network ``(keys, a, b)`` on
    ``n = len(bits)`` (from ``packed``, ``bits`` packed little-endian, when given).

    Raises:
        RuntimeError: numba is not available (check :func:`available` first).
    """
    _check(keys)
    n = int(bits.shape[0])
    src = packed if packed is not None else bits
    _kernel(src, packed is not None, keys.astype(np.uint32), _U(a - 1), _U(b), _U(n - 1),
            start, stop, out)


def positions(x: NDArray[np.uint32], keys: NDArray[np.uint32], a: int, b: int, n: int,
              inverse: bool) -> NDArray[np.int64]:
    """``perm[x]`` for the network ``(keys, a, b)`` on ``n`` positions, or with ``inverse``
    where ``perm`` places the indices ``x``: Cascade maps each round's corrections into every
    pass's order, a few hundred positions at a time, where numpy's 8 rounds of small-array
    operations cost more in calls than in arithmetic.

    Raises:
        RuntimeError: numba is not available (check :func:`available` first).
    """
    _check(keys)
    out = np.empty(x.shape[0], dtype=np.int64)
    _positions_kernel(x, inverse, keys.astype(np.uint32), _U(a - 1), _U(b), _U(n - 1), out)
    return out


def range_parities(flat: Bits, starts: NDArray[np.int64], ends: NDArray[np.int64]) -> Bits:
    """Parity of each range ``flat[starts[i]:ends[i]]`` (Cascade Bob's side of a round): one
    sequential pass per range, where numpy needs an index array as long as all ranges
    together, a gather and a ``reduceat``.

    Raises:
        RuntimeError: numba is not available (check :func:`available` first).
        ValueError: a range outside ``flat``.
    """
    _need_numba()
    if starts.shape != ends.shape:
        raise ValueError("starts and ends differ in length")
    if starts.shape[0] and (int(starts.min()) < 0 or int(ends.max()) > flat.shape[0]):
        raise ValueError("a range lies outside the array")
    out = np.empty(starts.shape[0], dtype=np.uint8)
    _parities_kernel(flat, starts, ends, out)
    return out


def prefix_xor(row: Bits) -> Bits:
    """Prefix XOR of ``row`` with a leading 0 (``n + 1`` values: ``parity[s, e) = P[e] ^
    P[s]``, Cascade Alice's side): one sequential pass, where numpy's
    ``bitwise_xor.accumulate`` on uint8 costs about 2 ns per element.

    Raises:
        RuntimeError: numba is not available (check :func:`available` first).
    """
    _need_numba()
    out = np.empty(row.shape[0] + 1, dtype=np.uint8)
    _prefix_kernel(row, out)
    return out
