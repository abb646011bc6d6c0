"""Toeplitz privacy amplification (FFT vs direct GF(2)) and the verification tag."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.deadlines import DEADLINE_S
from tests.support.processes import ROOT, keyplane_env

from keyplane.physical import (
    hashing,
    polynomial_tag,
    toeplitz_bits,
    toeplitz_hash,
    toeplitz_hash_reference,
)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), frac=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1))
def test_toeplitz_fft_equals_reference(n: int, frac: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    key = rng.integers(0, 2, n, dtype=np.uint8)
    n_out = int(frac * n)
    t = toeplitz_bits(seed.to_bytes(4, "big"), n, n_out)
    out = toeplitz_hash(key, t, n_out)
    assert out.shape == (n_out,)
    assert np.array_equal(out, toeplitz_hash_reference(key, t, n_out))


def test_toeplitz_fft_large_block_matches_reference_rows() -> None:
    rng = np.random.default_rng(3)
    n, n_out = 1_000_000, 300_000
    key = rng.integers(0, 2, n, dtype=np.uint8)
    t = toeplitz_bits(b"big", n, n_out)
    out = toeplitz_hash(key, t, n_out)
    for i in (0, 1, 12345, n_out - 1):
        row = t[i + n - 1 - np.arange(n)]
        assert out[i] == int(np.bitwise_xor.reduce(row & key))


def test_polynomial_tag_detects_single_bit_difference() -> None:
    rng = np.random.default_rng(4)
    key = rng.integers(0, 2, 100_000, dtype=np.uint8)
    point = bytes(range(16))
    other = key.copy()
    other[77_777] ^= 1
    assert polynomial_tag(key, point) == polynomial_tag(key.copy(), point)
    assert polynomial_tag(key, point) != polynomial_tag(other, point)
    assert polynomial_tag(key, point) != polynomial_tag(key[:-1], point)


def _fasthash():  # type: ignore[no-untyped-def]
    from keyplane.physical import fasthash
    if not fasthash.available():
        pytest.skip("numba or carry-less multiplication not available")
    return fasthash


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3000), frac=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1))
def test_compiled_toeplitz_equals_reference(n: int, frac: float, seed: int) -> None:
    """The GF(2) product by carry-less multiplication (any size: word padding, column
    blocks, one word or many) against the direct product."""
    fasthash = _fasthash()
    rng = np.random.default_rng(seed)
    key = rng.integers(0, 2, n, dtype=np.uint8)
    n_out = int(frac * n)
    t = toeplitz_bits(seed.to_bytes(4, "big"), n, n_out)
    out = fasthash.toeplitz_hash(key, t, n_out)
    assert out.shape == (n_out,)
    assert np.array_equal(out, toeplitz_hash_reference(key, t, n_out))


@pytest.mark.parametrize(("n", "n_out"), [(2900, 2100), (2300, 2100), (2200, 2049),
                                          (3000, 2800), (1000, 130)])
def test_compiled_toeplitz_split_last_block_equals_reference(n: int, n_out: int) -> None:
    """A last column block with key in half its columns or less (its product split in
    smaller squares): the direct product's bits."""
    fasthash = _fasthash()
    key = np.random.default_rng(n_out).integers(0, 2, n, dtype=np.uint8)
    t = toeplitz_bits(b"split", n, n_out)
    assert np.array_equal(fasthash.toeplitz_hash(key, t, n_out),
                          toeplitz_hash_reference(key, t, n_out))


@pytest.mark.parametrize(("n", "n_out"), [(1_000_000, 360_001), (1_000_003, 1_000_003),
                                          (262_144, 1), (700_001, 65_537),
                                          # last column block a half, a quarter, an
                                          # eighth full or less (its product split)
                                          (1_000_000, 700_001), (1_000_000, 800_000),
                                          (1_000_000, 450_000), (1_000_000, 900_000)])
def test_compiled_toeplitz_equals_fft(monkeypatch: pytest.MonkeyPatch, n: int,
                                      n_out: int) -> None:
    """Large blocks take the compiled product; the FFT gives the same bits."""
    _fasthash()
    key = np.random.default_rng(n).integers(0, 2, n, dtype=np.uint8)
    t = toeplitz_bits(b"seed", n, n_out)
    fast = toeplitz_hash(key, t, n_out)
    monkeypatch.setattr(hashing, "FAST_MIN_BITS", 1 << 40)
    assert np.array_equal(fast, toeplitz_hash(key, t, n_out))


@pytest.mark.parametrize(("n", "n_out"), [(3000, 2900), (2500, 1000), (700, 700), (65, 64)])
def test_compiled_toeplitz_wide_and_narrow_equal_reference(n: int, n_out: int) -> None:
    """Both base products (512-bit carry-less multiplications where the CPU has them, the
    128-bit ones) against the direct product, sizes across the wide base's eight-word
    groups and splits."""
    fasthash = _fasthash()
    key = np.random.default_rng(n).integers(0, 2, n, dtype=np.uint8)
    t = toeplitz_bits(b"wide", n, n_out)
    ref = toeplitz_hash_reference(key, t, n_out)
    for wide in (True, False):
        assert np.array_equal(fasthash.toeplitz_hash(key, t, n_out, wide=wide), ref)


@pytest.mark.parametrize(("n", "n_out"), [(13_000, 12_500), (40_000, 25_000),
                                          (1_000_000, 320_000), (2_000_003, 1_000_001)])
def test_compiled_toeplitz_wide_equals_narrow_and_fft(monkeypatch: pytest.MonkeyPatch, n: int,
                                                      n_out: int) -> None:
    """One to several levels of splitting above the base products: both bases give the
    FFT's bits (the FFT is pinned to the dense product above)."""
    fasthash = _fasthash()
    key = np.random.default_rng(n_out).integers(0, 2, n, dtype=np.uint8)
    t = toeplitz_bits(b"wide-large", n, n_out)
    wide = fasthash.toeplitz_hash(key, t, n_out, wide=True)
    assert np.array_equal(wide, fasthash.toeplitz_hash(key, t, n_out, wide=False))
    monkeypatch.setattr(hashing, "FAST_MIN_BITS", 1 << 40)
    assert np.array_equal(wide, toeplitz_hash(key, t, n_out))


def _tag_python(data: bytes, r: int, n_bits: int) -> bytes:
    acc = 0
    for i in range(0, len(data), 15):
        acc = (acc + int.from_bytes(data[i:i + 15], "big")) * r % ((1 << 127) - 1)
    return ((acc + n_bits) % ((1 << 127) - 1)).to_bytes(16, "big")


@settings(max_examples=80, deadline=None)
@given(data=st.binary(min_size=0, max_size=400),
       r=st.one_of(st.integers(0, (1 << 127) - 2),
                   st.sampled_from([0, 1, 2, (1 << 64) - 1, 1 << 64, (1 << 126),
                                    (1 << 127) - 3, (1 << 127) - 2])),
       n_bits=st.integers(0, (1 << 64) - 1), ones=st.booleans())
def test_compiled_tag_equals_python(data: bytes, r: int, n_bits: int, ones: bool) -> None:
    """The compiled Horner steps over two words give Python's big-integer tag: any data
    length (a short last chunk), points at the edges of the field and the words, keys of
    all ones (every sum at its largest)."""
    from keyplane.physical import fasttag
    if not fasttag.available():
        pytest.skip("numba not available")
    if ones:
        data = b"\xff" * len(data)
    assert fasttag.polynomial_tag(data, 15, r, n_bits) == _tag_python(data, r, n_bits)


@pytest.mark.parametrize("n", [262_144, 1_000_003])
def test_polynomial_tag_large_key_takes_compiled_path(monkeypatch: pytest.MonkeyPatch,
                                                      n: int) -> None:
    """Keys from FAST_MIN_BITS on (the compiled tag where numba is) give the same tag as
    the Python loop."""
    key = np.random.default_rng(n).integers(0, 2, n, dtype=np.uint8)
    point = bytes(range(16))
    tag = polynomial_tag(key, point)
    monkeypatch.setattr(hashing, "FAST_MIN_BITS", 1 << 40)
    assert tag == polynomial_tag(key, point)


def test_compiled_toeplitz_runs_when_numba_targets_less_than_the_cpu(tmp_path: Path) -> None:
    """NUMBA_ENABLE_AVX=0 compiles for a target without AVX-512 on a CPU that has it: the
    512-bit intrinsic must not be chosen then (LLVM aborted the process, exit 134)."""
    _fasthash()
    code = textwrap.dedent("""
        import numpy as np
        from keyplane.physical import fasthash, hashing
        rng = np.random.default_rng(5)
        n, n_out = 1 << 18, 1 << 17
        key = rng.integers(0, 2, n, dtype=np.uint8)
        t = rng.integers(0, 2, n + n_out - 1, dtype=np.uint8)
        assert not fasthash._wide
        fast = fasthash.toeplitz_hash(key, t, n_out)
        hashing.FAST_MIN_BITS = 1 << 40  # the FFT
        assert np.array_equal(fast, hashing.toeplitz_hash(key, t, n_out))
        print("ok")
    """)
    env = keyplane_env({"NUMBA_ENABLE_AVX": "0", "NUMBA_CACHE_DIR": str(tmp_path)})
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, text=True,
                          capture_output=True, timeout=DEADLINE_S)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
