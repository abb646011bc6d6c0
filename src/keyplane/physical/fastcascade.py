"""Cascade Bob's per-round search steps compiled (optional extra ``fast``: numba), the same
queries as numpy's.

Every Cascade round at Bob takes Alice's left-half parities, remembers them by search-tree
node, moves each running search one level down, then keeps descending wherever the parity
of the next left half is already known, until either a search narrows to one bit or a new
query is due. In :class:`keyplane.physical.cascade.CascadeBob` that is some thirty small
numpy steps per round over a few hundred searches (about 400 rounds per 10^6-bit block at
QBER 1.5 %), where each step's call costs more than its arithmetic. The two kernels below do
the same steps in one call each; the rare parts of a round (corrections, new searches, new
passes) stay in Python. All running searches are in one pass (searches start in waves in
the one pass with the smallest blocks that has odd ones), so one row and one node table.
``tests/unit/physical/test_fastperm.py`` checks round-by-round transcripts against numpy.

Used only for keys of at least :data:`~keyplane.physical.bits.FAST_MIN_BITS` bits, so the
demo's 10^5-bit blocks never import numba; ``KEYPLANE_NO_FAST=1`` turns it off.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

# numba as fastperm imported it (None without it or with ``KEYPLANE_NO_FAST``)
from keyplane.physical.fastperm import available, numba

__all__ = ["answer_step", "available", "cached_descent"]


_I64 = NDArray[np.int64]
_U8 = NDArray[np.uint8]


def _parity(row: Any, start: Any, end: Any) -> Any:  # pragma: no cover - compiled
    acc = np.uint8(0)
    for j in range(start, end):
        acc ^= row[j]
    return acc


def _descend(i: Any, alice_left: Any, bob_left: Any, nodes: Any, starts: Any, ends: Any,
             alice: Any, mids: Any) -> None:  # pragma: no cover - compiled
    """One binary-search step of search ``i``: keep the half whose parities differ
    (cascade.CascadeBob._descend)."""
    if alice_left ^ bob_left:
        ends[i] = mids[i]
        nodes[i] = 2 * nodes[i]
        alice[i] = alice_left
    else:
        starts[i] = mids[i]
        nodes[i] = 2 * nodes[i] + 1
        alice[i] = alice[i] ^ alice_left


def _valid(row: Any, known: Any, stride: Any, blocks: Any, nodes: Any, starts: Any,
           ends: Any) -> bool:  # pragma: no cover - compiled
    """Every search's range inside the row and its node's children inside the table (the
    kernels run without bounds checks)."""
    for i in range(starts.shape[0]):
        child = blocks[i] * stride + 2 * nodes[i] + 1
        if starts[i] < 0 or ends[i] > row.shape[0] or ends[i] < starts[i] or \
                nodes[i] < 1 or blocks[i] < 0 or child >= known.shape[0]:
            return False
    return True


def _answer_kernel(row: Any, known: Any, stride: Any, blocks: Any, nodes: Any, starts: Any,
                   ends: Any, alice: Any, mids: Any,
                   alice_left: Any) -> bool:  # pragma: no cover - compiled
    if not _valid(row, known, stride, blocks, nodes, starts, ends):
        return False
    for i in range(starts.shape[0]):
        if mids[i] < starts[i] or mids[i] > ends[i]:
            return False
    for i in range(starts.shape[0]):
        node = blocks[i] * stride + 2 * nodes[i]
        known[node] = alice_left[i] + np.uint8(1)
        known[node + 1] = (alice[i] ^ alice_left[i]) + np.uint8(1)
        _descend(i, alice_left[i], _parity(row, starts[i], mids[i]), nodes, starts, ends,
                 alice, mids)
    return True


def _cached_kernel(row: Any, known: Any, stride: Any, blocks: Any, nodes: Any, starts: Any,
                   ends: Any, alice: Any, mids: Any) -> int:  # pragma: no cover - compiled
    """0: a query is due; 1: a search narrowed to one bit; -1: invalid searches."""
    if not _valid(row, known, stride, blocks, nodes, starts, ends):
        return -1
    n = starts.shape[0]
    while True:
        for i in range(n):
            if ends[i] - starts[i] == 1:
                return 1
        for i in range(n):
            mids[i] = starts[i] + (ends[i] - starts[i]) // 2
        hit = False
        for i in range(n):
            # a node whose children would leave the table ends the search's known range
            node = blocks[i] * stride + 2 * nodes[i]
            c = known[node] if node + 1 < known.shape[0] else np.uint8(0)
            if c > 0:
                _descend(i, c - np.uint8(1), _parity(row, starts[i], mids[i]), nodes, starts,
                         ends, alice, mids)
                hit = True
        if not hit:
            return 0


if numba is not None:
    _inline = numba.njit(inline="always")
    _parity = _inline(_parity)
    _descend = _inline(_descend)
    _valid = _inline(_valid)
    _answer_kernel = numba.njit(cache=True, nogil=True, boundscheck=False)(_answer_kernel)
    _cached_kernel = numba.njit(cache=True, nogil=True, boundscheck=False)(_cached_kernel)


def _check(starts: _I64, arrays: tuple[NDArray[Any], ...]) -> None:
    if numba is None:
        raise RuntimeError("compiled Cascade steps need numba: pip install 'keyplane[fast]'")
    if any(x.shape[0] != starts.shape[0] for x in arrays):
        raise ValueError("search arrays of different lengths")


def answer_step(row: _U8, known: _U8, stride: int, blocks: _I64, nodes: _I64, starts: _I64,
                ends: _I64, alice: _U8, mids: _I64, alice_left: _U8) -> None:
    """Alice's left-half parities for every running search: remember both halves' parities
    by tree node (``known[block * stride + 2 node + child]`` = parity + 1), then one step
    down each search (cascade.CascadeBob._remember and _descend), in place.

    Raises:
        RuntimeError: numba is not available (check :func:`available` first).
        ValueError: inconsistent arrays.
    """
    if alice_left.shape[0] != starts.shape[0]:
        raise ValueError("parity count does not match the searches")
    _check(starts, (blocks, nodes, ends, alice, mids))
    if not _answer_kernel(row, known, np.int64(stride), blocks, nodes, starts, ends, alice,
                          mids, alice_left):
        raise ValueError("a search outside the pass")


def cached_descent(row: _U8, known: _U8, stride: int, blocks: _I64, nodes: _I64,
                   starts: _I64, ends: _I64, alice: _U8, mids: _I64) -> bool:
    """Descend every search whose next left half has a known parity, as long as any has,
    writing each search's next midpoint to ``mids``. Returns ``True`` as soon as a search
    has narrowed to one bit (the caller corrects it, then calls again), ``False`` when the
    next query (left halves ``[starts, mids)``) is due.

    Raises:
        RuntimeError: numba is not available (check :func:`available` first).
        ValueError: inconsistent arrays.
    """
    _check(starts, (blocks, nodes, ends, alice, mids))
    status = int(_cached_kernel(row, known, np.int64(stride), blocks, nodes, starts, ends,
                                alice, mids))
    if status < 0:
        raise ValueError("a search outside the pass")
    return status == 1
