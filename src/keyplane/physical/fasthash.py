"""Compiled Toeplitz hashing over GF(2) (optional extra ``fast``: numba), bit-exact.

:func:`~keyplane.physical.hashing.toeplitz_hash` computes ``y = T x`` (``T`` an ``l x n``
Toeplitz matrix) as a float64 FFT convolution: three transforms of about ``n + l`` points,
memory-bound at 10^6 bits and the largest single cost of a block after Cascade. Here the
product stays in GF(2): bits packed 64 to a word, the square Toeplitz matrix-vector
product (TMVP) split recursively in two (``T = [[A, B], [C, A]]``, so
``y0 = A(x0 + x1) + (B + A) x1`` and ``y1 = A(x0 + x1) + (C + A) x0``: three half-size
products instead of four, Karatsuba's count for a product whose operand is a Toeplitz
matrix), down to products of a few dozen words, each about one carry-less multiplication
per 64 x 64 block (x86 ``PCLMULQDQ``, emitted through an LLVM intrinsic; where the CPU
has ``VPCLMULQDQ`` with AVX-512, four per instruction on eight-word runs: 2-3x less CPU).
Integer arithmetic only: no rounding, the same bits as
the FFT and as the dense product (``tests/unit/physical/test_hashing.py``).

Used, like :mod:`.fastperm`, only for keys of at least
:data:`~keyplane.physical.bits.FAST_MIN_BITS` bits, so links with small blocks never
import numba; ``KEYPLANE_NO_FAST=1``, a missing numba or a CPU without carry-less
multiplication leave the FFT in charge. The machine code is cached on disk (``cache=True``).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

Bits = NDArray[np.uint8]

__all__ = ["available", "toeplitz_hash"]

_BASE_WORDS = 32
"""Products of at most this many words (2,048 bits) are computed block by block: below
this the levels' copies cost more than the multiplications they save (10^6 bits, l = 0.36
n, all levels split at once: 4, 8, 16, 32 words gave 54, 23, 18.0, 18.5 ms)."""

_BASE_WORDS_WIDE = 96
"""The same with the 512-bit multiplications, four per instruction and one fold per row,
so splitting pays later (one hash, ms at n = 10^6, l = 0.32 / 0.5 n, then at 10^7, l = 0.5
/ 0.62 n, load 16: base 32 words 5.1, 5.0, 359, 343; 48: 4.0, 5.0, 174, 219; 64: 3.9, 4.4,
182, 219; 96: 3.2, 3.9, 139, 205; 128: 3.4, 6.7, 145, 187)."""

_INNER_LEVELS = 6
"""Levels split within one of the top levels' products (3^6 = 729 products of at most
:data:`_BASE_WORDS` words, a few hundred kB; three times that with the 512-bit base)."""

numba: ModuleType | None
try:
    if os.environ.get("KEYPLANE_NO_FAST", "") not in ("", "0"):
        raise ImportError("KEYPLANE_NO_FAST is set")
    import numba
    from llvmlite import ir as _ir
    from numba import config as _config
    from numba import types as _types
    from numba.core import codegen as _codegen
    from numba.extending import intrinsic as _intrinsic

    try:
        # the features numba compiles for, not the CPU's: NUMBA_ENABLE_AVX=0 turns AVX-512
        # off in the target while the CPU still has it, and an intrinsic the target lacks
        # aborts the process in LLVM (no Python exception)
        numba_features: Any = _codegen.get_host_cpu_features
        _features = set(str(numba_features()).split(","))
        _pclmul = "+pclmul" in _features
        # the 512-bit form only where numba compiles for this host (a portable target,
        # NUMBA_CPU_NAME / NUMBA_CPU_FEATURES, may lack the instruction)
        _wide = {"+vpclmulqdq", "+avx512f"} <= _features \
            and getattr(_config, "CPU_NAME", None) is None \
            and getattr(_config, "CPU_FEATURES", None) is None
    except RuntimeError:  # llvmlite cannot read this host's features
        _pclmul = _wide = False
    if not _pclmul:
        raise ImportError("no carry-less multiplication on this CPU")
except ImportError:
    numba = None
    _wide = False


def _clmul(a: Any, b: Any) -> Any:  # pragma: no cover - replaced by the intrinsic
    raise NotImplementedError


if numba is not None:
    @_intrinsic
    def _clmul(typingctx: Any, a: Any, b: Any) -> Any:
        """(low, high) words of the carry-less product of two uint64 (PCLMULQDQ)."""
        unituple: Any = _types.UniTuple
        sig = unituple(_types.uint64, 2)(_types.uint64, _types.uint64)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            i64, i32 = _ir.IntType(64), _ir.IntType(32)
            v2 = _ir.VectorType(i64, 2)
            fn = builder.module.declare_intrinsic(
                "llvm.x86.pclmulqdq", fnty=_ir.FunctionType(v2, [v2, v2, _ir.IntType(8)]))
            undef = _ir.Constant(v2, _ir.Undefined)
            va = builder.insert_element(undef, args[0], _ir.Constant(i32, 0))
            vb = builder.insert_element(undef, args[1], _ir.Constant(i32, 0))
            r = builder.call(fn, [va, vb, _ir.Constant(_ir.IntType(8), 0)])
            lo = builder.extract_element(r, _ir.Constant(i32, 0))
            hi = builder.extract_element(r, _ir.Constant(i32, 1))
            return context.make_tuple(builder, signature.return_type, [lo, hi])

        return sig, codegen


def _dotw(d: Any, c: int, xr: Any, groups: int) -> Any:  # pragma: no cover - compiled
    """XOR over ``q < 8 groups`` of the carry-less products ``d[c + q] xr[q]``: (low,
    high) words (the portable form of the 512-bit intrinsic below)."""
    lo = _U(0)
    hi = _U(0)
    for q in range(8 * groups):
        a_lo, a_hi = _clmul(d[c + q], xr[q])
        lo ^= a_lo
        hi ^= a_hi
    return lo, hi


if numba is not None and _wide:
    from numba.core import cgutils

    _cgutils: Any = cgutils

    @_intrinsic
    def _dotw(typingctx: Any, d: Any, c: Any, xr: Any, groups: Any) -> Any:
        """:func:`_dotw` eight words a step: two ``VPCLMULQDQ`` (AVX-512, four carry-less
        products each) on two 8-word loads into one 512-bit accumulator, folded to one
        (low, high) pair once at the end."""
        unituple: Any = _types.UniTuple
        sig = unituple(_types.uint64, 2)(d, c, xr, groups)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            i64, i32, i8 = _ir.IntType(64), _ir.IntType(32), _ir.IntType(8)
            v8 = _ir.VectorType(i64, 8)
            fn = builder.module.declare_intrinsic(
                "llvm.x86.pclmulqdq.512", fnty=_ir.FunctionType(v8, [v8, v8, i8]))
            dd = context.make_array(signature.args[0])(context, builder, args[0]).data
            xx = context.make_array(signature.args[2])(context, builder, args[2]).data
            c64 = context.cast(builder, args[1], signature.args[1], _types.int64)
            count = context.cast(builder, args[3], signature.args[3], _types.int64)
            acc = _cgutils.alloca_once_value(builder, _ir.Constant(v8, None))
            with _cgutils.for_range(builder, count) as loop:
                off = builder.mul(loop.index, _ir.Constant(i64, 8))
                pd = builder.bitcast(builder.gep(dd, [builder.add(c64, off)]), v8.as_pointer())
                px = builder.bitcast(builder.gep(xx, [off]), v8.as_pointer())
                vd, vx = builder.load(pd, align=8), builder.load(px, align=8)
                r = builder.xor(builder.call(fn, [vd, vx, _ir.Constant(i8, 0x00)]),
                                builder.call(fn, [vd, vx, _ir.Constant(i8, 0x11)]))
                builder.store(builder.xor(builder.load(acc), r), acc)
            r = builder.load(acc)
            # fold the four (low, high) lanes: halves XORed, twice
            for width in (4, 2):
                lo_half = builder.shuffle_vector(r, r, _ir.Constant(
                    _ir.VectorType(i32, width), list(range(width))))
                hi_half = builder.shuffle_vector(r, r, _ir.Constant(
                    _ir.VectorType(i32, width), list(range(width, 2 * width))))
                r = builder.xor(lo_half, hi_half)
            lo = builder.extract_element(r, _ir.Constant(i32, 0))
            hi = builder.extract_element(r, _ir.Constant(i32, 1))
            return context.make_tuple(builder, signature.return_type, [lo, hi])

        return sig, codegen


_U = np.uint64
_S1, _S63 = _U(1), _U(63)


def _row(d: Any, k: int, x: Any, xoff: int, m: int) -> Any:  # pragma: no cover - compiled
    """XOR over ``j < m`` of the carry-less products ``d[k - j] x[xoff + j]``: (low, high)."""
    lo = _U(0)
    hi = _U(0)
    for j in range(m):
        a_lo, a_hi = _clmul(d[k - j], x[xoff + j])
        lo ^= a_lo
        hi ^= a_hi
    return lo, hi


def _base(d: Any, doff: int, x: Any, xoff: int, m: int, y: Any,
          yoff: int) -> None:  # pragma: no cover - compiled
    """``y[yoff:yoff + m] = T x[xoff:xoff + m]``, ``T`` the ``64 m``-bit square Toeplitz
    matrix whose diagonals are the bits of ``d[doff:doff + 2 m]`` (``T[i, j] = d[i - j +
    64 m - 1]``).

    Output word ``i`` is the XOR over ``j`` of 64 x 64 blocks, each bits 63..126 of the
    product of ``x_j`` with the two words ``d[k], d[k + 1]`` (``k = doff + i - j + m -
    1``): the low words of ``d[k + 1] x_j`` are row ``i + 1``'s, so each row's products
    are summed once (:func:`_row`) and shared with the row above, ``m (m + 1)``
    carry-less multiplications instead of ``2 m^2`` (the shifts and XORs commute with the
    sum)."""
    lo, hi = _row(d, doff + m - 1, x, xoff, m)
    for i in range(m):
        nlo, nhi = _row(d, doff + i + m, x, xoff, m)
        y[yoff + i] = _U(_U(lo >> _S63) | _U(_U(hi ^ nlo) << _S1))
        lo, hi = nlo, nhi


def _base_wide(d: Any, doff: int, x: Any, xoff: int, m: int, y: Any, yoff: int,
               dw: Any, xr: Any) -> None:  # pragma: no cover - compiled
    """:func:`_base` eight words at a time (:func:`_dotw`): with ``xr`` the vector reversed,
    row ``i``'s sum is ``XOR_q d[doff + i + q] xr[q]``, two contiguous runs. ``dw`` and
    ``xr`` are scratch of ``2 m + 8`` and ``m + 8`` words: the window and the reversed
    vector, zero-padded to whole groups of eight (a zero word adds a zero product)."""
    mp = (m + 7) & ~7
    for q in range(m):
        xr[q] = x[xoff + m - 1 - q]
    for q in range(m, mp):
        xr[q] = 0
    for q in range(2 * m):
        dw[q] = d[doff + q]
    for q in range(2 * m, 2 * m + 8):
        dw[q] = 0
    groups = mp >> 3
    lo, hi = _dotw(dw, 0, xr, groups)
    for i in range(m):
        nlo, nhi = _dotw(dw, i + 1, xr, groups)
        y[yoff + i] = _U(_U(lo >> _S63) | _U(_U(hi ^ nlo) << _S1))
        lo, hi = nlo, nhi


def _split(dd: Any, xx: Any, size: int, levels: int) -> Any:  # pragma: no cover - compiled
    """Split one product of ``size`` words (diagonals ``dd``, ``2 size`` words; vector ``xx``)
    ``levels`` times: each product of ``2 h`` words becomes three of ``h``
    (``A(x0 + x1)``, ``(B + A) x1``, ``(C + A) x0``, with ``A``'s diagonals ``d[h:3h]``,
    ``B``'s ``d[0:2h]``, ``C``'s ``d[2h:4h]``); returns the ``3^levels`` products' diagonals
    and vectors, concatenated."""
    count = 1
    for _ in range(levels):
        h = size // 2
        d2 = np.empty(count * 6 * h, dtype=np.uint64)
        x2 = np.empty(count * 3 * h, dtype=np.uint64)
        for p in range(count):
            db, xb, c = p * 2 * size, p * size, 3 * p
            for i in range(2 * h):
                a = dd[db + h + i]
                d2[c * 2 * h + i] = a
                d2[(c + 1) * 2 * h + i] = dd[db + i] ^ a
                d2[(c + 2) * 2 * h + i] = dd[db + 2 * h + i] ^ a
            for i in range(h):
                x2[c * h + i] = xx[xb + i] ^ xx[xb + h + i]
                x2[(c + 1) * h + i] = xx[xb + h + i]
                x2[(c + 2) * h + i] = xx[xb + i]
        dd, xx = d2, x2
        count, size = 3 * count, h
    return dd, xx


def _join(yy: Any, size: int, levels: int) -> Any:  # pragma: no cover - compiled
    """Undo :func:`_split` on the results (``3^levels`` products of ``size`` words):
    ``y0 = P0 + P1``, ``y1 = P0 + P2``."""
    count = yy.shape[0] // size
    for _ in range(levels):
        h = size
        count, size = count // 3, 2 * h
        y2 = np.empty(count * size, dtype=np.uint64)
        for p in range(count):
            c = 3 * p
            for i in range(h):
                y0 = yy[c * h + i]
                y2[p * size + i] = y0 ^ yy[(c + 1) * h + i]
                y2[p * size + h + i] = y0 ^ yy[(c + 2) * h + i]
        yy = y2
    return yy


def _tmvp(d: Any, doff: int, x: Any, xoff: int, m: int, levels: int, y: Any,
          wide: bool) -> None:  # pragma: no cover - compiled
    """``y[:m] = T x[xoff:xoff + m]`` (``T`` as in :func:`_base`), split ``levels`` times
    level by level, not recursively (numba's cache reloaded a recursive version into a
    segmentation fault): the first ``levels - _INNER_LEVELS`` levels over the whole product,
    then each of their products through the remaining levels on its own, so the working set
    stays a few hundred kB (all levels at once held 160 MB at 10^7 bits)."""
    top = max(0, levels - _INNER_LEVELS)
    inner = levels - top
    dd, xx = _split(d[doff:doff + 2 * m].copy(), x[xoff:xoff + m].copy(), m, top)
    size = m >> top
    small = size >> inner
    yy = np.empty(xx.shape[0], dtype=np.uint64)
    dw = np.empty(2 * small + 8, dtype=np.uint64)
    xr = np.empty(small + 8, dtype=np.uint64)
    for p in range(xx.shape[0] // size):
        d1, x1 = _split(dd[p * 2 * size:(p + 1) * 2 * size].copy(),
                        xx[p * size:(p + 1) * size].copy(), size, inner)
        y1 = np.empty(x1.shape[0], dtype=np.uint64)
        for q in range(x1.shape[0] // small):
            if wide:
                _base_wide(d1, q * 2 * small, x1, q * small, small, y1, q * small, dw, xr)
            else:
                _base(d1, q * 2 * small, x1, q * small, small, y1, q * small)
        yy[p * size:(p + 1) * size] = _join(y1, small, inner)
    y[:m] = _join(yy, size, top)


def _hash(tw: Any, xw: Any, m: int, levels: int, chunks: int, last_words: int,
          y: Any, wide: bool) -> None:  # pragma: no cover - compiled
    """``y = XOR_c T_c x_c`` over the ``chunks`` column blocks of ``m`` words.

    The last block holds only ``last_words`` words of key, the rest zeros: when they fit
    in the first ``s = m / 2^j`` columns, its product is ``2^j`` square products of ``s``
    words (rows ``i s`` on, columns ``0..s``), ``(2/3)^j`` of the full product's work
    (a key of 1.4 times the output: two column blocks, the second 40 % full, 17 % less)."""
    part = np.empty(m, dtype=np.uint64)
    for c in range(chunks):
        base = (chunks - 1 - c) * m
        j = 0
        if c == chunks - 1:
            while j < levels and last_words <= (m >> (j + 1)):
                j += 1
        s = m >> j
        for r in range(1 << j):
            # rows r s.. of T_c, columns 0..s: diagonals from bit (r s + m - s) * 64 of
            # T_c's window
            _tmvp(tw, base + r * s + m - s, xw, c * m, s, levels - j, part, wide)
            for i in range(s):
                y[r * s + i] ^= part[i]


if numba is not None:
    _row = numba.njit(inline="always")(_row)
    if not _wide:
        _dotw = numba.njit(inline="always")(_dotw)
    _base_wide = numba.njit(nogil=True, boundscheck=False)(_base_wide)
    _base = numba.njit(nogil=True, boundscheck=False)(_base)
    _split = numba.njit(nogil=True, boundscheck=False)(_split)
    _join = numba.njit(nogil=True, boundscheck=False)(_join)
    _tmvp = numba.njit(nogil=True, boundscheck=False)(_tmvp)
    _hash = numba.njit(cache=True, nogil=True, boundscheck=False)(_hash)


def available() -> bool:
    """Whether numba imported, the CPU multiplies carry-less and ``KEYPLANE_NO_FAST`` is
    not set."""
    return numba is not None


def _words(bits: Bits, n_words: int, offset: int = 0) -> NDArray[np.uint64]:
    """``bits`` placed at bit ``offset`` of ``n_words`` zeroed words (bit ``i`` of the array
    is bit ``i % 64`` of word ``i // 64``)."""
    buf = np.zeros(64 * n_words, dtype=np.uint8)
    buf[offset:offset + bits.shape[0]] = bits
    return np.packbits(buf, bitorder="little").view("<u8").astype(np.uint64, copy=False)


def toeplitz_hash(key: Bits, t: Bits, n_out: int, *, wide: bool | None = None) -> Bits:
    """``T key`` over GF(2), ``T[i, j] = t[i - j + n - 1]`` (as
    :func:`keyplane.physical.hashing.toeplitz_hash`).

    The ``l`` outputs are padded to ``64 m`` bits, ``m = b 2^k`` words with ``b`` at most
    the base size (a few % over), and the key cut into column blocks of as many bits,
    each a square Toeplitz product with a window of ``t``. ``wide`` (default: whether the
    CPU has them) picks the 512-bit carry-less multiplications for the base products;
    ``False`` the 128-bit ones (the same bits: tested).

    Raises:
        RuntimeError: not :func:`available`.
        ValueError: ``t`` has the wrong length.
    """
    if numba is None:
        raise RuntimeError("the compiled hash needs numba and carry-less multiplication")
    n = int(key.shape[0])
    if t.shape[0] != n + n_out - 1:
        raise ValueError(f"need {n + n_out - 1} Toeplitz bits, got {t.shape[0]}")
    if n_out <= 0 or n == 0:
        return np.zeros(max(n_out, 0), dtype=np.uint8)
    wide = _wide if wide is None else wide
    base_words = _BASE_WORDS_WIDE if wide else _BASE_WORDS
    words = -(-n_out // 64)
    levels = 0
    while -(-words // (1 << levels)) > base_words:
        levels += 1
    m = -(-words // (1 << levels)) << levels
    bits_m = 64 * m
    chunks = -(-n // bits_m)
    # column block c's diagonals are t[o_c : o_c + 2 M], o_c = n - M - c M (M = 64 m):
    # one array from o_(chunks-1) = n - chunks M on, so block c starts at word
    # (chunks - 1 - c) m; bits outside t are zero (they meet zero key bits or padded rows)
    tw = _words(t, (chunks + 1) * m, chunks * bits_m - n)
    xw = _words(key, chunks * m)
    y = np.zeros(m, dtype=np.uint64)
    _hash(tw, xw, m, levels, chunks, -(-n // 64) - (chunks - 1) * m, y, wide)
    out: Bits = np.unpackbits(y.astype("<u8").view(np.uint8), count=n_out, bitorder="little")
    return out
