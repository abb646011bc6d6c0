"""The compiled keyed permutation (extra ``fast``) gives exactly numpy's output."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from keyplane.physical import bits as bits_mod
from keyplane.physical.bits import FAST_MIN_BITS, KeyedPermutation
from keyplane.physical.cascade import CascadeAlice, CascadeBob, block_sizes, run_cascade

fastperm = pytest.importorskip("keyplane.physical.fastperm")
pytestmark = pytest.mark.skipif(not fastperm.available(), reason="numba not installed")


def _numpy_permute(monkeypatch: pytest.MonkeyPatch, net: KeyedPermutation, key: np.ndarray,
                   out: np.ndarray | None = None, start: int = 0, stop: int | None = None
                   ) -> np.ndarray:
    with monkeypatch.context() as m:
        m.setattr(bits_mod, "FAST_MIN_BITS", 1 << 40)
        return net.permute(key, out=out, start=start, stop=stop)


@pytest.mark.parametrize("n", [FAST_MIN_BITS, 10**6 + 3, (1 << 22) + 5])
@pytest.mark.parametrize("seed", [b"\x00" * 16, b"another seed...."])
def test_compiled_permutation_equals_numpy(monkeypatch: pytest.MonkeyPatch, n: int,
                                           seed: bytes) -> None:
    """Whole rows and partial ranges (Cascade fills rows piecewise), below and above the
    packed-gather length (2^22), on several seeds."""
    key = np.random.default_rng(n).integers(0, 2, n, dtype=np.uint8)
    net = KeyedPermutation(n, seed, b"keyplane.cascade.pass3")
    assert np.array_equal(net.permute(key), _numpy_permute(monkeypatch, net, key))
    for start, stop in ((0, 1), (17, n // 3 + 1), (n // 2, n), (n - 1, n)):
        fast = np.zeros(n, dtype=np.uint8)
        slow = np.zeros(n, dtype=np.uint8)
        net.permute(key, out=fast, start=start, stop=stop)
        _numpy_permute(monkeypatch, net, key, out=slow, start=start, stop=stop)
        assert np.array_equal(fast, slow), (start, stop)


@pytest.mark.parametrize("n", [FAST_MIN_BITS, 10**6 + 3])
@pytest.mark.parametrize("seed", [b"\x00" * 16, b"another seed...."])
def test_compiled_positions_equal_numpy(monkeypatch: pytest.MonkeyPatch, n: int,
                                        seed: bytes) -> None:
    """Forward and inverse positions (Cascade's corrections mapped into each pass's order),
    including the last positions of the domain, where cycle walking happens."""
    net = KeyedPermutation(n, seed, b"keyplane.cascade.pass1")
    x = np.concatenate([np.random.default_rng(n).integers(0, n, 5000),
                        np.arange(n - 300, n)]).astype(np.int64)
    fast = net.positions(x), net.positions(x, inverse=True)
    with monkeypatch.context() as m:
        m.setattr(bits_mod, "FAST_MIN_BITS", 1 << 40)
        slow = net.positions(x), net.positions(x, inverse=True)
    assert np.array_equal(fast[0], slow[0])
    assert np.array_equal(fast[1], slow[1])
    assert np.array_equal(net.positions(fast[0], inverse=True), x)


def test_compiled_range_parities_equal_numpy() -> None:
    """Bob's parities of a round's ranges, empty and whole ranges included."""
    flat = np.random.default_rng(3).integers(0, 2, 10_000, dtype=np.uint8)
    starts = np.array([0, 5, 9_999, 100, 0, 4_000], dtype=np.int64)
    ends = np.array([10_000, 5, 10_000, 1_234, 1, 7_777], dtype=np.int64)
    want = [int(flat[s:e].sum()) & 1 for s, e in zip(starts, ends, strict=True)]
    assert fastperm.range_parities(flat, starts, ends).tolist() == want
    with pytest.raises(ValueError, match="outside"):
        fastperm.range_parities(flat, np.array([1], np.int64), np.array([10_001], np.int64))


def test_compiled_prefix_xor_equals_numpy() -> None:
    row = np.random.default_rng(4).integers(0, 2, 100_003, dtype=np.uint8)
    want = np.concatenate([[0], np.bitwise_xor.accumulate(row)]).astype(np.uint8)
    assert np.array_equal(fastperm.prefix_xor(row), want)
    assert fastperm.prefix_xor(row[:0]).tolist() == [0]


def _transcript(alice: np.ndarray, bob: np.ndarray, sizes: list[int]
                ) -> tuple[list[tuple[object, ...]], np.ndarray]:
    """Every query and answer of one in-process run, and Bob's key."""
    a, b = CascadeAlice(alice), CascadeBob(bob, b"t" * 16, sizes)
    out: list[tuple[object, ...]] = []
    query = b.start()
    while query is not None:
        ans = a.answer(query)
        out.append((query.new_pass, query.passes.tolist(), query.starts.tolist(),
                    query.ends.tolist(), ans.top_parities.tolist(), ans.parities.tolist()))
        query = b.on_answer(ans)
    return out, b.key


@pytest.mark.parametrize("qber", [0.01, 0.03, 0.06])
@pytest.mark.parametrize("schedule", ["yanetal", "original", "option7"])
def test_cascade_transcripts_are_the_same_with_and_without_numba(
        monkeypatch: pytest.MonkeyPatch, qber: float, schedule: str) -> None:
    """The same queries and answers, round by round (compiled permutation, range parities,
    correction positions and Alice's prefix parities against numpy)."""
    n = FAST_MIN_BITS + 4321
    rng = np.random.default_rng(int(qber * 1000))
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    bob = alice ^ (rng.random(n) < qber).astype(np.uint8)
    sizes = block_sizes(schedule, qber, n)
    fast, fast_key = _transcript(alice, bob, sizes)
    monkeypatch.setattr(bits_mod, "FAST_MIN_BITS", 1 << 40)
    slow, slow_key = _transcript(alice, bob, sizes)
    assert np.array_equal(fast_key, alice) and np.array_equal(slow_key, alice)
    assert fast == slow


def test_cascade_on_a_large_block_is_the_same_with_and_without_numba(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Same corrected key, same leakage, same rounds: the two paths are interchangeable
    between the two ends of a link."""
    n = FAST_MIN_BITS + 1000
    rng = np.random.default_rng(7)
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    bob = alice ^ (rng.random(n) < 0.02).astype(np.uint8)
    sizes = block_sizes("yanetal", 0.02, n)
    fast_key, fast = run_cascade(alice, bob, b"s" * 16, sizes)
    monkeypatch.setattr(bits_mod, "FAST_MIN_BITS", 1 << 40)
    slow_key, slow = run_cascade(alice, bob, b"s" * 16, sizes)
    assert np.array_equal(fast_key, alice)
    assert np.array_equal(fast_key, slow_key)
    assert (fast.leaked_bits, fast.rounds, fast.corrected_bits) == \
        (slow.leaked_bits, slow.rounds, slow.corrected_bits)


def test_small_blocks_never_import_numba() -> None:
    """Links with blocks under FAST_MIN_BITS (the default 10^5) keep numba off their path
    (Cascade and privacy amplification)."""
    code = ("import sys, numpy as np\n"
            "from keyplane.physical.cascade import CascadeAlice, CascadeBob, block_sizes, run_cascade\n"
            "k = np.random.default_rng(1).integers(0, 2, 100_000, dtype=np.uint8)\n"
            "b = k.copy(); b[::97] ^= 1\n"
            "run_cascade(k, b, bytes(16), block_sizes('yanetal', 0.01, k.shape[0]))\n"
            "from keyplane.physical.hashing import toeplitz_bits, toeplitz_hash\n"
            "toeplitz_hash(k, toeplitz_bits(bytes(32), k.shape[0], 40_000), 40_000)\n"
            "print('numba' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    assert out.strip() == "False"


def test_the_kernel_has_the_rounds_of_the_numpy_permutation() -> None:
    from keyplane.physical import bits, fastperm
    assert fastperm.KERNEL_ROUNDS == bits.FEISTEL_ROUNDS


def test_compiled_search_steps_refuse_inconsistent_arrays() -> None:
    from keyplane.physical import fastcascade
    row, known = np.zeros(100, np.uint8), np.zeros(64, np.uint8)
    one = np.ones(1, np.int64)
    with pytest.raises(ValueError, match="lengths"):
        fastcascade.cached_descent(row, known, 32, one, one, one, np.ones(2, np.int64),
                                   np.zeros(1, np.uint8), one.copy())
    with pytest.raises(ValueError, match="outside"):
        fastcascade.answer_step(row, known, 32, one, one, np.zeros(1, np.int64),
                                np.array([101]), np.zeros(1, np.uint8), one.copy(),
                                np.zeros(1, np.uint8))
    with pytest.raises(ValueError, match="parity count"):
        fastcascade.answer_step(row, known, 32, one, one, np.zeros(1, np.int64),
                                np.array([50]), np.zeros(1, np.uint8), one.copy(),
                                np.zeros(2, np.uint8))
