"""LDPC syndrome reconciliation, rate-adaptive by incremental syndrome, beside Cascade.

Alice discloses the syndrome ``H x`` of each frame of her key; Bob decodes the error
pattern ``e`` from ``H e = H x + H y`` with belief propagation (sum-product, the maintained
``ldpc`` package's C++ ``BpDecoder``; optional extra ``keyplane[ldpc]``) and flips it into
his key. Every syndrome bit Alice sends is counted as leaked.

Rate adaptation (the "fits the QBER" part): a frame of ``n`` bits starts with
``m0 = ceil(f_start n h(Q))`` checks for the block's estimated QBER ``Q`` (the block's own
test-basis estimate), so the rate follows the QBER. A frame BP cannot decode asks for
``extension`` more checks (each a sparse random check over the frame, appended below the
code's rows: the codes are nested, earlier syndrome bits stay useful), up to
``max_extensions`` times; this is the incremental-redundancy form of the blind protocol of
Martinez-Mateo, Elkouss, Martin, "Blind reconciliation", QIC 12 (2012), with extra checks
in place of revealed punctured bits. Frames still undecoded then go to Cascade
(:mod:`.cascade`) together; the block's polynomial tag (:mod:`.hashing`) catches any frame
BP "decoded" to a wrong codeword, and such a block is discarded before privacy
amplification.

Codes: irregular, variable degrees {2, 3, 8} with concentrated check degrees (random
socket matching, duplicate edges merged), the degree-2 share capped by the BP stability
condition ``lambda_2 rho'(1) B < 1`` (``B = 2 sqrt(Q(1-Q))``, Richardson and Urbanke,
Modern Coding Theory, Thm 4.127) at the frame's rate. A code is a pure function of
``(n, m0)`` (public, fixed: no per-block secret), so both ends build the same matrix and
each process caches it and its decoder.

Pure core as :mod:`.cascade`: :meth:`LdpcBob.start` returns the first :class:`SyndromeQuery`,
:meth:`LdpcBob.on_answer` the next one or ``None``; :class:`LdpcAlice` answers.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from keyplane.extras import MissingDependency, require
from keyplane.physical.bits import Bits, binary_entropy

__all__ = [
    "LdpcAlice",
    "LdpcBob",
    "LdpcStats",
    "SyndromeAnswer",
    "SyndromeQuery",
    "frame_sizes",
    "ldpc_available",
    "parity_check_matrix",
]

_MIN_QBER = 1e-3
_CODE_LABEL = b"keyplane.ldpc.code"
_VAR_DEGREES = (2, 3, 8)
# node fractions before the stability cap: the best of five mixes tried at n = 2e4,
# QBER 1 % and 3 % (decodes at f = 1.2 where {2, 3, 4, 15} and {3, 10} needed 1.3)
_VAR_SHARES = (0.10, 0.60, 0.30)
_EXT_DEGREE = 6  # variables per extension check
_MAX_ITER = 60


def ldpc_available() -> bool:
    """Whether the ``ldpc`` package (``pip install 'keyplane[ldpc]'``) imports."""
    try:
        require("ldpc")
    except MissingDependency:
        return False
    return True


def frame_sizes(n: int, frame_bits: int) -> list[int]:
    """Split an ``n``-bit block into near-equal frames of at most ``frame_bits`` bits."""
    if n <= 0:
        return []
    count = math.ceil(n / frame_bits)
    base, extra = divmod(n, count)
    return [base + 1] * extra + [base] * (count - extra)


def base_rows(n: int, qber: float, f_start: float) -> int:
    """Checks a frame of ``n`` bits starts with at estimated QBER ``qber``."""
    h = binary_entropy(min(max(qber, _MIN_QBER), 0.5))
    return max(1, min(n - 1, math.ceil(f_start * n * h)))


def extension_rows(m0: int) -> int:
    """Checks one extension adds (4 % of the base syndrome, at least 16)."""
    return max(16, math.ceil(0.04 * m0))


def _code_rng(n: int, m0: int, max_ext: int) -> np.random.Generator:
    digest = hashlib.sha256(_CODE_LABEL + f"/{n}/{m0}/{max_ext}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def _variable_degrees(n: int, m0: int) -> NDArray[np.int64]:
    shares = np.asarray(_VAR_SHARES, dtype=np.float64)
    degs = np.asarray(_VAR_DEGREES, dtype=np.float64)
    rate = 1.0 - m0 / n
    q = 0.25
    # the QBER the code is meant for: h(q) = (1 - rate) / f, with f ~ 1.1
    target_h = min(1.0, (1.0 - rate) / 1.1)
    lo, hi = 1e-6, 0.5
    for _ in range(50):
        q = 0.5 * (lo + hi)
        lo, hi = (q, hi) if binary_entropy(q) < target_h else (lo, q)
    bhat = 2.0 * math.sqrt(q * (1.0 - q))
    for _ in range(20):  # cap the degree-2 edge share at 85 % of the stability bound
        edges = shares * degs
        dc = edges.sum() / (shares.sum() * (1.0 - rate))
        lam2 = edges[0] / edges.sum()
        bound = 0.85 / (bhat * max(dc - 1.0, 1.0))
        if lam2 <= bound:
            break
        shares[0] *= 0.8
    shares /= shares.sum()
    counts = np.floor(shares * n).astype(np.int64)
    counts[1] += n - int(counts.sum())
    return np.repeat(np.asarray(_VAR_DEGREES, dtype=np.int64), counts)


@functools.lru_cache(maxsize=16)
def parity_check_matrix(n: int, m0: int, max_ext: int) -> sp.csr_matrix:
    """The nested code of an ``n``-bit frame: ``m0`` base checks, then ``max_ext``
    extensions of :func:`extension_rows` checks each (CSR, uint8). Deterministic."""
    rng = _code_rng(n, m0, max_ext)
    vdeg = _variable_degrees(n, m0)
    rng.shuffle(vdeg)
    cols = np.repeat(np.arange(n, dtype=np.int64), vdeg)
    rows = rng.permutation(np.arange(cols.shape[0], dtype=np.int64) % m0)
    ext = extension_rows(m0) * max_ext
    if ext:
        rows = np.concatenate([rows, m0 + np.repeat(np.arange(ext, dtype=np.int64),
                                                     _EXT_DEGREE)])
        cols = np.concatenate([cols, rng.integers(0, n, ext * _EXT_DEGREE)])
    h = sp.csr_matrix((np.ones(rows.shape[0], dtype=np.uint8), (rows, cols)),
                      shape=(m0 + ext, n))
    h.sum_duplicates()
    h.data[:] = 1  # a duplicated edge is one edge
    return h


@functools.lru_cache(maxsize=16)
def _decoder(n: int, m0: int, max_ext: int, rows: int) -> Any:
    require("ldpc")  # optional dependency, imported on first use (~1 s): says which extra
    from ldpc.bp_decoder import BpDecoder

    h = parity_check_matrix(n, m0, max_ext)[:rows]
    return BpDecoder(h, error_rate=0.01, max_iter=_MAX_ITER, bp_method="product_sum",
                     schedule="parallel", input_vector_type="syndrome")


def _syndrome(h: sp.csr_matrix, bits: Bits) -> Bits:
    return (np.asarray(h @ bits.astype(np.int32)) & 1).astype(np.uint8)


@dataclass(frozen=True, slots=True)
class SyndromeQuery:
    """Bob asks Alice for syndrome bits.

    ``base``: each frame's ``m0`` (fixes its code); ``rows``: how many checks of each
    frame Bob wants in total (Alice sends the ones she has not sent yet, frame by frame).
    ``fallback``: frames Bob gives up on (they go to Cascade, in order, concatenated).
    """

    round: int
    base: NDArray[np.int64]
    rows: NDArray[np.int64]
    fallback: NDArray[np.bool_] | None = None


@dataclass(frozen=True, slots=True)
class SyndromeAnswer:
    """Alice's new syndrome bits, frame after frame."""

    round: int
    bits: Bits


@dataclass(slots=True)
class LdpcStats:
    """What one LDPC run cost."""

    n_bits: int = 0
    frames: int = 0
    rounds: int = 0
    leaked_bits: int = 0
    extensions: int = 0
    fallback_frames: int = 0
    corrected_bits: int = 0
    iterations: int = 0


def _check_frames(sizes: list[int], query: SyndromeQuery) -> None:
    if query.base.shape[0] != len(sizes) or query.rows.shape[0] != len(sizes):
        raise ValueError("syndrome query does not match the block's frames")


class LdpcAlice:
    """Alice's side: the syndromes of her (correct) key's frames."""

    def __init__(self, key: Bits, frame_bits: int, max_extensions: int) -> None:
        self._key = key
        self._sizes = frame_sizes(int(key.shape[0]), frame_bits)
        self._offsets = np.concatenate([[0], np.cumsum(self._sizes)]).astype(np.int64)
        self._max_ext = max_extensions
        self._sent = np.zeros(len(self._sizes), dtype=np.int64)
        self.leaked_bits = 0

    @property
    def frames(self) -> int:
        """Number of frames of the block."""
        return len(self._sizes)

    def answer(self, query: SyndromeQuery) -> SyndromeAnswer:
        """The syndrome bits ``[sent, rows)`` of each frame; all counted as leaked.

        Raises:
            ValueError: a query for other frames, fewer rows than sent, or more than the
                code has.
        """
        _check_frames(self._sizes, query)
        out: list[Bits] = []
        for i, n in enumerate(self._sizes):
            m0, rows = int(query.base[i]), int(query.rows[i])
            if rows == self._sent[i]:
                continue
            limit = m0 + extension_rows(m0) * self._max_ext
            if not 0 < m0 < n or not self._sent[i] < rows <= limit:
                raise ValueError(f"frame {i}: {rows} checks asked, {self._sent[i]} sent")
            h = parity_check_matrix(n, m0, self._max_ext)[int(self._sent[i]):rows]
            out.append(_syndrome(h, self._key[self._offsets[i]:self._offsets[i + 1]]))
            self._sent[i] = rows
        bits = np.concatenate(out) if out else np.zeros(0, dtype=np.uint8)
        self.leaked_bits += int(bits.shape[0])
        return SyndromeAnswer(round=query.round, bits=bits)

    def fallback_key(self, mask: NDArray[np.bool_]) -> Bits:
        """Alice's bits of the frames in ``mask``, concatenated (Cascade's input)."""
        return _select(self._key, self._offsets, mask)


def _select(key: Bits, offsets: NDArray[np.int64], mask: NDArray[np.bool_]) -> Bits:
    parts = [key[offsets[i]:offsets[i + 1]] for i in np.flatnonzero(mask)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)


@dataclass(slots=True, eq=False)
class _Frame:
    n: int
    m0: int
    rows: int = 0
    syndrome: Bits = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))
    done: bool = False
    extensions: int = 0


class LdpcBob:
    """Bob's side: decodes each frame, asks for more checks where BP fails.

    Args:
        key: (n,) uint8, Bob's sifted key (copied; read :attr:`key` at the end).
        qber: the block's estimated QBER (sets each frame's starting rate and BP's prior).
        frame_bits: frame size bound (see :func:`frame_sizes`).
        f_start: starting efficiency (``m0 = ceil(f_start n h(qber))``).
        max_extensions: extensions per frame before it falls back to Cascade.
    """

    def __init__(self, key: Bits, qber: float, frame_bits: int, f_start: float,
                 max_extensions: int) -> None:
        self.key = key.copy()
        self._q = float(min(max(qber, _MIN_QBER), 0.49))
        self._max_ext = max_extensions
        sizes = frame_sizes(int(key.shape[0]), frame_bits)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._frames = [_Frame(n=n, m0=base_rows(n, self._q, f_start)) for n in sizes]
        for fr in self._frames:
            fr.rows = fr.m0
        self.stats = LdpcStats(n_bits=int(key.shape[0]), frames=len(sizes))
        self.fallback: NDArray[np.bool_] = np.zeros(len(sizes), dtype=bool)

    def start(self) -> SyndromeQuery | None:
        """The first query (``None`` for an empty key)."""
        return self._query() if self._frames else None

    def _query(self) -> SyndromeQuery:
        return SyndromeQuery(round=self.stats.rounds,
                             base=np.asarray([f.m0 for f in self._frames], dtype=np.int64),
                             rows=np.asarray([f.rows for f in self._frames], dtype=np.int64))

    def on_answer(self, answer: SyndromeAnswer) -> SyndromeQuery | None:
        """Decode every frame that got new checks; return the next query, or ``None``
        when every frame is decoded or marked for Cascade (:attr:`fallback`).

        Raises:
            ValueError: the answer does not match the last query.
        """
        if answer.round != self.stats.rounds:
            raise ValueError(f"answer for round {answer.round}, expected {self.stats.rounds}")
        pending = [i for i, f in enumerate(self._frames)
                   if not f.done and f.rows > f.syndrome.shape[0]]
        want = sum(self._frames[i].rows - int(self._frames[i].syndrome.shape[0])
                   for i in pending)
        if answer.bits.shape[0] != want:
            raise ValueError(f"{answer.bits.shape[0]} syndrome bits, expected {want}")
        self.stats.rounds += 1
        self.stats.leaked_bits += want
        pos = 0
        more = False
        for i in pending:
            fr = self._frames[i]
            new = fr.rows - int(fr.syndrome.shape[0])
            fr.syndrome = np.concatenate([fr.syndrome, answer.bits[pos:pos + new]])
            pos += new
            if self._decode(i, fr):
                fr.done = True
            elif fr.extensions < self._max_ext:
                fr.extensions += 1
                self.stats.extensions += 1
                fr.rows += extension_rows(fr.m0)
                more = True
            else:
                fr.done = True
                self.fallback[i] = True
                self.stats.fallback_frames += 1
        return self._query() if more else None

    def _decode(self, i: int, fr: _Frame) -> bool:
        lo, hi = int(self._offsets[i]), int(self._offsets[i + 1])
        h = parity_check_matrix(fr.n, fr.m0, self._max_ext)[:fr.rows]
        target = fr.syndrome ^ _syndrome(h, self.key[lo:hi])
        dec = _decoder(fr.n, fr.m0, self._max_ext, fr.rows)
        dec.error_rate = self._q
        err = np.asarray(dec.decode(target), dtype=np.uint8)
        self.stats.iterations += int(dec.iter)
        if not dec.converge:
            return False
        self.key[lo:hi] ^= err
        self.stats.corrected_bits += int(np.count_nonzero(err))
        return True

    def fallback_key(self) -> Bits:
        """Bob's bits of the frames marked for Cascade, concatenated."""
        return _select(self.key, self._offsets, self.fallback)

    def put_fallback(self, corrected: Bits) -> None:
        """Write Cascade's corrected bits back into the frames marked for it."""
        pos = 0
        for i in np.flatnonzero(self.fallback):
            lo, hi = int(self._offsets[i]), int(self._offsets[i + 1])
            self.key[lo:hi] = corrected[pos:pos + hi - lo]
            pos += hi - lo
