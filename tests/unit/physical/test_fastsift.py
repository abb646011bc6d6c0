"""The compiled sifting (extra ``fast``) gives exactly numpy's split at both ends."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from keyplane.physical.sifting import sift_frame, sift_mask

fastsift = pytest.importorskip("keyplane.physical.fastsift")
pytestmark = pytest.mark.skipif(not fastsift.available(), reason="numba not installed")


def _frame(seed: int, d: int, p_x: float) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    alice_bases = (rng.random(d) < p_x).astype(np.uint8)
    bob_bases = (rng.random(d) < p_x).astype(np.uint8)
    alice_bits = rng.integers(0, 2, d, dtype=np.uint8)
    bob_bits = alice_bits ^ (rng.random(d) < 0.03).astype(np.uint8)
    classes = rng.choice(np.array([0, 1, 2], np.uint8), d, p=[0.8, 0.15, 0.05])
    return alice_bases, bob_bases, alice_bits, bob_bits, classes


def _same(a: tuple, b: tuple) -> None:  # type: ignore[type-arg]
    (sa, ca), (sb, cb) = a, b
    for name in ("key_bits", "key_classes", "test_bits", "test_classes", "test_key_index"):
        x, y = getattr(sa, name), getattr(sb, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert np.array_equal(ca, cb)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("d", [0, 1, 17, 300_001])
@pytest.mark.parametrize("p_x", [0.5, 0.3])
@pytest.mark.parametrize("key_basis", [0, 1])
def test_compiled_sifting_equals_numpy_at_both_ends(seed: int, d: int, p_x: float,
                                                    key_basis: int) -> None:
    ab, bb, abits, bbits, classes = _frame(seed, d, p_x)
    alice_fast = sift_frame(ab, bb, abits, classes, False, key_basis, compiled=True)
    alice_slow = sift_frame(ab, bb, abits, classes, False, key_basis, compiled=False)
    _same(alice_fast, alice_slow)
    sifted_classes = classes[sift_mask(ab, bb)]
    bob_fast = sift_frame(bb, ab, bbits, sifted_classes, True, key_basis, compiled=True)
    bob_slow = sift_frame(bb, ab, bbits, sifted_classes, True, key_basis, compiled=False)
    _same(bob_fast, bob_slow)
    # both ends cut the same events: same classes and interleaving, bits differ by errors
    assert np.array_equal(alice_fast[0].key_classes, bob_fast[0].key_classes)
    assert np.array_equal(alice_fast[0].test_key_index, bob_fast[0].test_key_index)


@pytest.mark.parametrize("compiled", [True, False])
def test_inconsistent_lengths_are_refused(compiled: bool) -> None:
    ab, bb, abits, _, classes = _frame(1, 1000, 0.5)
    with pytest.raises(ValueError):
        sift_frame(ab, bb[:-1], abits, classes, False, 0, compiled=compiled)
    with pytest.raises(ValueError):
        sift_frame(ab, bb, abits, classes[:10], True, 0, compiled=compiled)


def test_a_link_with_small_blocks_never_imports_numba() -> None:
    """The whole stack with the default 10^5-bit blocks (the demo's): one block from
    emulation to both sinks without importing numba (sifting included)."""
    code = ("import asyncio, sys\n"
            "from keyplane.clock import VirtualClock\n"
            "from keyplane.config import PostProcessing, QuantumLink\n"
            "from keyplane.physical import LinkRunner, MemoryKeySink\n"
            "async def main():\n"
            "    clock = VirtualClock()\n"
            "    link = QuantumLink(endpoints=('a', 'b'), length_km=10.0,\n"
            "                       postprocessing=PostProcessing(block_size_bits=100_000))\n"
            "    runner = LinkRunner(link, clock=clock, seed=1, alice_sink=MemoryKeySink(),\n"
            "                        bob_sink=MemoryKeySink())\n"
            "    async with runner:\n"
            "        while runner.stats.delivered_blocks + runner.stats.aborted_blocks < 1:\n"
            "            await clock.advance(runner.frame_duration_s)\n"
            "    return runner.stats.delivered_blocks\n"
            "print(asyncio.run(main()), 'numba' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    assert out.split() == ["1", "False"]
