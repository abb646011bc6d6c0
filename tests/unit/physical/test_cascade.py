"""Cascade: the vectorized run and the per-bit reference both leave Bob with Alice's key."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.physical import block_sizes, cascade_reference, run_cascade
from keyplane.physical.bits import binary_entropy, keyed_permutation


def _keys(n: int, qber: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    return alice, alice ^ (rng.random(n) < qber).astype(np.uint8)


@pytest.mark.parametrize("n", [1, 2, 3, 1000, 65_537])
def test_keyed_permutation_is_a_permutation(n: int) -> None:
    p = keyed_permutation(n, b"seed", b"label")
    assert np.array_equal(np.sort(p), np.arange(n))
    assert np.array_equal(p, keyed_permutation(n, b"seed", b"label"))


def test_keyed_permutation_pinned_values() -> None:
    # pins the specified expansion (SHAKE-128 + Feistel): both ends on any host agree
    assert keyed_permutation(10, b"abc", b"x").tolist() == [3, 5, 2, 1, 6, 7, 4, 8, 0, 9]
    # an odd bit width (5 bits for n = 20): the unbalanced network, halves of 2 and 3 bits
    assert keyed_permutation(20, b"abc", b"x").tolist() == [
        16, 9, 6, 5, 12, 18, 11, 13, 15, 2, 8, 3, 7, 10, 0, 19, 14, 17, 1, 4]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(64, 3000), qber=st.floats(0.0, 0.06), seed=st.integers(0, 2**31),
       schedule=st.sampled_from(["original", "yanetal"]))
def test_cascade_ends_with_every_block_parity_equal_and_bounded_leakage(
        n: int, qber: float, seed: int, schedule: str) -> None:
    alice, bob = _keys(n, qber, seed)
    sizes = block_sizes(schedule, max(qber, 0.01), n)
    key_seed = seed.to_bytes(8, "big")
    corrected, stats = run_cascade(alice, bob, key_seed, sizes)
    # Cascade's guarantee: every block of every pass has Alice's parity. What it can miss
    # (an even number of errors in every block containing them) verification catches.
    diff = (corrected ^ alice).astype(np.uint8)
    for index, k in enumerate(sizes):
        perm = keyed_permutation(n, key_seed, b"keyplane.cascade.pass" + index.to_bytes(2, "big"))
        assert not np.bitwise_xor.reduceat(diff[perm], np.arange(0, n, k)).any()
    top = sum(math.ceil(n / k) for k in sizes)
    assert stats.leaked_bits <= top + 2 * stats.corrected_bits * math.ceil(math.log2(max(sizes)))


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_cascade_on_large_keys_leaves_equal_keys(seed: int) -> None:
    alice, bob = _keys(50_000, 0.03, seed)
    corrected, stats = run_cascade(alice, bob, bytes([seed]), block_sizes("original", 0.03,
                                                                          50_000))
    assert np.array_equal(corrected, alice)
    assert stats.corrected_bits == int(np.count_nonzero(alice != bob))


@settings(max_examples=10, deadline=None)
@given(n=st.integers(16, 600), qber=st.floats(0.0, 0.08), seed=st.integers(0, 2**31))
def test_cascade_vectorized_agrees_with_reference(n: int, qber: float, seed: int) -> None:
    alice, bob = _keys(n, qber, seed)
    sizes = block_sizes("original", max(qber, 0.01), n)
    fast, _ = run_cascade(alice, bob, b"s", sizes)
    slow, _ = cascade_reference(alice, bob, b"s", sizes)
    # same passes, same permutations: the same errors are found whatever the search order,
    # unless an even number escapes both (then the two may differ only in escaped bits)
    if np.array_equal(slow, alice):
        assert np.array_equal(fast, alice)


@pytest.mark.parametrize("qber", [0.02, 0.03])
def test_cascade_efficiency_at_two_to_three_percent(qber: float) -> None:
    alice, bob = _keys(200_000, qber, 9)
    corrected, stats = run_cascade(alice, bob, b"eff", block_sizes("original", qber, 200_000))
    assert np.array_equal(corrected, alice)
    true_q = np.count_nonzero(alice != bob) / alice.shape[0]
    f = stats.leaked_bits / (alice.shape[0] * binary_entropy(true_q))
    assert 1.0 < f <= 1.2
