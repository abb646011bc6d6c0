"""LDPC syndrome reconciliation: identical keys, exact leakage, extensions, Cascade fallback."""

from __future__ import annotations

import numpy as np
import pytest

from keyplane.clock import VirtualClock
from keyplane.config import PostProcessing, QuantumLink
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.physical import LinkRunner, MemoryKeySink
from keyplane.physical.cascade import block_sizes, run_cascade
from keyplane.physical.reconcile_ldpc import (
    LdpcAlice,
    LdpcBob,
    SyndromeAnswer,
    SyndromeQuery,
    base_rows,
    extension_rows,
    frame_sizes,
    parity_check_matrix,
)


def _keys(n: int, qber: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2, n, dtype=np.uint8)
    return x, x ^ (rng.random(n) < qber).astype(np.uint8)


def _run(alice: LdpcAlice, bob: LdpcBob) -> None:
    q = bob.start()
    while q is not None:
        q = bob.on_answer(alice.answer(q))


@pytest.mark.parametrize("qber", [0.02, 0.05])
def test_ldpc_bob_ends_with_alice_key_and_counts_every_syndrome_bit(qber: float) -> None:
    x, y = _keys(30_000, qber, seed=4)
    q_true = float(np.mean(x ^ y))
    alice = LdpcAlice(x, 15_000, max_extensions=8)
    bob = LdpcBob(y, q_true, 15_000, f_start=1.15, max_extensions=8)
    _run(alice, bob)
    assert not bob.fallback.any()
    assert np.array_equal(bob.key, x)
    # leakage is exactly the syndrome bits sent: each frame's base plus its extensions
    bases = [base_rows(n, q_true, 1.15) for n in frame_sizes(30_000, 15_000)]
    assert bob.stats.leaked_bits == alice.leaked_bits
    assert bob.stats.leaked_bits >= sum(bases)
    assert bob.stats.corrected_bits == int(np.count_nonzero(x ^ y))


def test_ldpc_leakage_is_base_plus_requested_extensions() -> None:
    x, y = _keys(10_000, 0.03, seed=9)
    q = float(np.mean(x ^ y))
    # start below what a 10^4-bit frame decodes at, so it must ask for extensions
    alice = LdpcAlice(x, 10_000, max_extensions=16)
    bob = LdpcBob(y, q, 10_000, f_start=1.05, max_extensions=16)
    _run(alice, bob)
    m0 = base_rows(10_000, q, 1.05)
    assert bob.stats.extensions >= 1
    assert bob.stats.leaked_bits == alice.leaked_bits \
        == m0 + bob.stats.extensions * extension_rows(m0)


def test_ldpc_frames_that_fail_go_to_cascade_and_end_identical() -> None:
    x, y = _keys(8_192, 0.04, seed=2)
    q = float(np.mean(x ^ y))
    alice = LdpcAlice(x, 4_096, max_extensions=0)
    bob = LdpcBob(y, q, 4_096, f_start=1.0, max_extensions=0)
    _run(alice, bob)
    assert bob.fallback.all()  # at f = 1 no frame of 4096 bits decodes
    a_rest, b_rest = alice.fallback_key(bob.fallback), bob.fallback_key()
    corrected, stats = run_cascade(a_rest, b_rest, b"\x07" * 16,
                                   block_sizes("original", q, 8_192))
    assert not np.array_equal(b_rest, a_rest)
    bob.put_fallback(corrected)
    assert np.array_equal(bob.key, x)
    assert stats.leaked_bits > 0


def test_ldpc_alice_refuses_checks_beyond_the_code() -> None:
    x, _ = _keys(4_096, 0.02, seed=1)
    alice = LdpcAlice(x, 4_096, max_extensions=1)
    m0 = base_rows(4_096, 0.02, 1.2)
    with pytest.raises(ValueError):
        alice.answer(SyndromeQuery(round=0, base=np.array([m0]),
                                   rows=np.array([m0 + 2 * extension_rows(m0)])))
    with pytest.raises(ValueError):
        alice.answer(SyndromeQuery(round=0, base=np.array([m0, m0]), rows=np.array([m0, m0])))


def test_ldpc_bob_rejects_an_answer_of_the_wrong_length() -> None:
    _, y = _keys(4_096, 0.02, seed=1)
    bob = LdpcBob(y, 0.02, 4_096, f_start=1.2, max_extensions=1)
    q = bob.start()
    assert q is not None
    with pytest.raises(ValueError):
        bob.on_answer(SyndromeAnswer(round=0, bits=np.zeros(3, dtype=np.uint8)))
    with pytest.raises(ValueError):
        bob.on_answer(SyndromeAnswer(round=5, bits=np.zeros(int(q.rows[0]), dtype=np.uint8)))


def test_ldpc_code_is_a_pure_function_of_its_shape() -> None:
    a = parity_check_matrix(8_192, 1_000, 2)
    parity_check_matrix.cache_clear()
    b = parity_check_matrix(8_192, 1_000, 2)
    assert a.shape == (1_000 + 2 * extension_rows(1_000), 8_192)
    assert (a != b).nnz == 0
    assert set(np.unique(a.data)) == {1}


def test_link_with_ldpc_delivers_identical_blocks_at_both_ends() -> None:
    import asyncio

    async def run() -> tuple[list[tuple[int, bytes]], list[dict[str, object]]]:
        clock = VirtualClock()
        sink = MemorySink()
        sa, sb = MemoryKeySink(), MemoryKeySink()
        link = QuantumLink(endpoints=("a", "b"), length_km=10.0, postprocessing=PostProcessing(
            block_size_bits=100_000, reconciliation="ldpc", ldpc_frame_bits=50_000))
        async with LinkRunner(link, clock=clock, seed=3, alice_sink=sa, bob_sink=sb,
                              events=EventStream(clock, [sink])) as r:
            for _ in range(60):
                await clock.advance(r.frame_duration_s)
                if min(sa.qsize(), sb.qsize()) >= 2:
                    break
        a = [(b.block_id, b.material) for b in sa.drain()]
        b = [(b.block_id, b.material) for b in sb.drain()]
        assert a == b
        return a, [e.data for e in sink.events if e.type in (
            EventType.link_block, EventType.link_block_aborted)]

    blocks, events = asyncio.run(run())
    assert len(blocks) >= 2, [(d["status"], d["reason"]) for d in events]
    assert all(d["status"] != "verify_failed" for d in events)
    for data in events:
        if data["status"] == "delivered":
            f = data["ec_efficiency"]
            assert isinstance(f, float) and 1.0 < f < 2.0
