"""Physical-layer benchmark: the whole stack per core, the finite-key reference curve,
Cascade against cascade-python, and SeQUeNCe's BB84 + Cascade.

1. One link (both QKD modules in this process, one core, in-process channels) on a
   VirtualClock, so the figures are pure CPU throughput: physics emulation, sifting,
   parameter estimation, Cascade with its message exchange, verification, Toeplitz privacy
   amplification, delivery to both sinks. Per (distance, block size): sifted key bits and
   secret bits per CPU-second, mean QBER, mean f_EC, secret key per pulse and its ratio to
   the finite-key curve (Lim et al. 2014's bound on the link's expected counts).
   1b. The same at 10 km with 10^6- and 10^7-bit blocks: CPU per sifted bit and its ratio.
   1c. Per stage (not in a default run: ``--only stages``): emulation, sifting, Cascade's
   permutations and the rest of Cascade, verification, privacy amplification, messages
   and events, per sifted bit at both sizes (cProfile, beside an unprofiled run's CPU).
2. The published curve: Lim et al.'s fibre system, rates optimized as in the paper, at
   100 km for n_X = 10^7 and 10^9 (the paper: the 10^9 rate is about 1.75x).
3. Cascade alone on identical keys: keyplane (each schedule) and, when importable,
   cascade-python (brunorijsman/cascade-python; not on PyPI: pass ``--cascade-python
   DIR`` with a checkout) with the same schedule: f_EC and CPU time.
   3c. The twin's reconciler (Cascade ``yanetal``) on 10^6-bit blocks at QBER 1, 2, 3, 5
   and 8 %: mean and worst f_EC and the frame error rate (blocks left with residual
   errors, which verification discards).
4. Toeplitz privacy amplification alone at n = 10^6.
5. SeQUeNCe (PyPI ``sequence``, ``pip install -e '.[bench]'``: photon-level BB84 with its
   Cascade, no privacy amplification) on the same 10 km link for ``--sequence-sim-s``
   seconds of simulated time: CPU and wall time and the keys it actually delivered.

Outside tools are optional: a missing one prints a line saying so and the rest runs.

    python bench/physical.py [--quick] [--seed 1] [--sequence-sim-s 0.03]

Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from keyplane.clock import VirtualClock
from keyplane.config import PostProcessing, QuantumLink
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.physical import LinkPhysics, LinkRunner, MemoryKeySink
from keyplane.physical.analytic import finite_key_rate
from keyplane.physical.bits import FAST_MIN_BITS, KeyedPermutation, binary_entropy
from keyplane.physical.cascade import block_sizes, run_cascade
from keyplane.physical.finite_key import LimSystem
from keyplane.physical.hashing import polynomial_tag, toeplitz_bits, toeplitz_hash
from keyplane.physical.reconcile_ldpc import LdpcAlice, LdpcBob, ldpc_available
from keyplane.physical.sifting import sift_frame


@dataclass
class StackResult:
    distance_km: float
    block_bits: int
    blocks: int
    sifted_bits: int
    secret_bits: int
    pulses: float
    cpu_s: float
    wall_s: float
    qber: float
    f_ec: float
    curve_per_pulse: float
    z_basis: float

    @property
    def key_per_pulse(self) -> float:
        return self.secret_bits / self.pulses if self.pulses else 0.0


async def _run_stack(distance_km: float, block_bits: int, blocks: int, seed: int,
                     schedule: str | None, z_basis: float | None = None) -> StackResult:
    clock = VirtualClock()
    pp = PostProcessing(block_size_bits=block_bits)
    if z_basis is not None:
        pp = pp.model_copy(update={"z_basis_probability": z_basis})
    link = QuantumLink(endpoints=("a", "b"), length_km=distance_km, postprocessing=pp)
    sink = MemorySink()
    sa, sb = MemoryKeySink(), MemoryKeySink()
    runner = LinkRunner(link, clock=clock, seed=seed, alice_sink=sa, bob_sink=sb,
                        events=EventStream(clock, [sink]), cascade_schedule=schedule)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    async with runner:
        while runner.stats.delivered_blocks + runner.stats.aborted_blocks < blocks:
            await clock.advance(runner.frame_duration_s)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    a, b = sa.drain(), sb.drain()
    assert [(k.block_id, k.material) for k in a] == [(k.block_id, k.material) for k in b]
    done = sink.of_type(EventType.link_block)
    physics = LinkPhysics.from_link(link)
    # pulses behind the blocks that ran: their key bits over the expected key bits per pulse
    pulses = runner.stats.sifted_bits / physics.expected_sifted_fraction()
    return StackResult(
        distance_km=distance_km, block_bits=block_bits, blocks=len(done),
        sifted_bits=runner.stats.sifted_bits, secret_bits=runner.stats.delivered_bits,
        pulses=pulses, cpu_s=cpu, wall_s=wall,
        qber=float(np.mean([e.data["qber"] for e in done])) if done else math.nan,
        f_ec=float(np.mean([e.data["ec_efficiency"] for e in done])) if done else math.nan,
        curve_per_pulse=finite_key_rate(physics, block_bits,
                                        eps_sec=link.postprocessing.security_epsilon),
        z_basis=physics.z_basis_probability)


def _lim_reference() -> None:
    system = LimSystem()
    cpu0 = time.process_time()
    r7 = system.optimized_key_rate(100.0, 1e7)
    r9 = system.optimized_key_rate(100.0, 1e9)
    print(f"Lim et al. (PRA 89, 022307) Fig. 1 system, rates optimized over mu1, mu2, p1, p2, "
          f"q_x: 100 km, n_X = 1e7: {r7:.3e}, n_X = 1e9: {r9:.3e} bits per pulse; ratio "
          f"{r9 / r7:.2f} (published: about 1.75) [{time.process_time() - cpu0:.1f} s CPU]")
    for km in (0.0, 50.0, 100.0, 150.0):
        rates = [system.optimized_key_rate(km, n) for n in (1e6, 1e8)]
        print(f"  {km:>5.0f} km: n_X = 1e6 {rates[0]:.3e}, 1e8 {rates[1]:.3e} bits per pulse")


def _keys(n: int, qber: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    return alice, alice ^ (rng.random(n) < qber).astype(np.uint8)


def _cascade_compare(n: int, qbers: list[float], runs: int, cascade_python: str | None) -> None:
    reference = None
    if cascade_python:
        sys.path.insert(0, cascade_python)
        try:
            from cascade.key import Key
            from cascade.mock_classical_channel import MockClassicalChannel
            from cascade.reconciliation import Reconciliation
            reference = (Key, MockClassicalChannel, Reconciliation)
        except ImportError as exc:
            print(f"cascade-python not importable from {cascade_python} ({exc}); "
                  "its column is skipped")
    else:
        print("cascade-python: not on PyPI; pass --cascade-python DIR (a checkout of "
              "brunorijsman/cascade-python) to compare; its column is skipped")
    print(f"{'schedule':>9} {'QBER':>5} {'keyplane f':>10} {'CPU s':>6} "
          f"{'cascade-python f':>16} {'CPU s':>6}   (n = {n}, {runs} keys each)")
    for schedule in ("original", "yanetal"):
        for q in qbers:
            ours: list[tuple[float, float]] = []
            theirs: list[tuple[float, float]] = []
            for seed in range(runs):
                alice, bob = _keys(n, q, 1000 * seed + int(q * 1000))
                true_q = np.count_nonzero(alice != bob) / n
                h = n * binary_entropy(true_q)
                cpu0 = time.process_time()
                corrected, stats = run_cascade(alice, bob, bytes([seed]) * 16,
                                               block_sizes(schedule, true_q, n))
                ours.append((stats.leaked_bits / h, time.process_time() - cpu0))
                assert np.array_equal(corrected, alice)
                if reference is not None:
                    key_cls, channel_cls, rec_cls = reference
                    ka, kb = key_cls(), key_cls()
                    for k, bits in ((ka, alice), (kb, bob)):
                        # cascade-python has no bulk constructor: fill its fields
                        k._size = n
                        k._bits = dict(enumerate(bits.tolist()))
                    cpu0 = time.process_time()
                    rec = rec_cls(schedule, channel_cls(ka), kb, true_q)
                    rec.reconcile()
                    theirs.append((rec.stats.reply_parity_bits / h, time.process_time() - cpu0))
            f, c = np.mean(ours, axis=0)
            line = f"{schedule:>9} {q:>5.3f} {f:>10.4f} {c:>6.2f}"
            if theirs:
                tf, tc = np.mean(theirs, axis=0)
                line += f" {tf:>16.4f} {tc:>6.2f}"
            print(line)


def _reconcilers(n: int, qbers: list[float], frame_bits: int, runs: int) -> None:
    """Each reconciler on identical n-bit blocks: f_EC (leaked / n h(true QBER)), round
    trips, CPU per bit; every corrected key checked against Alice's."""
    if not ldpc_available():
        print("ldpc package not installed (pip install 'keyplane[ldpc]'): LDPC rows skipped")
    print(f"{'reconciler':>16} {'QBER':>5} {'f_EC':>6} {'max f':>6} {'rounds':>6} "
          f"{'ns/bit CPU':>10} {'fallback frames':>15}   (n = {n}, {runs} blocks each)")
    for q in qbers:
        for name in ("cascade original", "cascade yanetal", "ldpc"):
            if name == "ldpc" and not ldpc_available():
                continue
            fs, rounds, cpu, fallback = [], [], 0.0, 0
            for seed in range(runs):
                alice, bob = _keys(n, q, 77 + 1000 * seed + int(q * 1000))
                true_q = float(np.count_nonzero(alice != bob) / n)
                cpu0 = time.process_time()
                if name == "ldpc":
                    pp = PostProcessing(reconciliation="ldpc", ldpc_frame_bits=frame_bits)
                    a = LdpcAlice(alice, frame_bits, pp.ldpc_max_extensions)
                    b = LdpcBob(bob, true_q, frame_bits, pp.ldpc_start_efficiency,
                                pp.ldpc_max_extensions)
                    query = b.start()
                    while query is not None:
                        query = b.on_answer(a.answer(query))
                    leaked, corrected, r = b.stats.leaked_bits, b.key, b.stats.rounds
                    if b.fallback.any():
                        fallback += int(b.fallback.sum())
                        fixed, st = run_cascade(a.fallback_key(b.fallback), b.fallback_key(),
                                                bytes([seed]) * 16,
                                                block_sizes("yanetal", true_q, n))
                        b.put_fallback(fixed)
                        leaked, corrected, r = leaked + st.leaked_bits, b.key, r + st.rounds
                else:
                    schedule = name.split()[1]
                    corrected, st = run_cascade(alice, bob, bytes([seed]) * 16,
                                                block_sizes(schedule, true_q, n))
                    leaked, r = st.leaked_bits, st.rounds
                cpu += time.process_time() - cpu0
                assert np.array_equal(corrected, alice), name
                fs.append(leaked / (n * binary_entropy(true_q)))
                rounds.append(r)
            print(f"{name:>16} {q:>5.3f} {np.mean(fs):>6.3f} {max(fs):>6.3f} "
                  f"{np.mean(rounds):>6.0f} {cpu / (runs * n) * 1e9:>10.0f} {fallback:>15d}")


def _twin_pick(n: int, qbers: list[float], blocks: int) -> None:
    """The twin's reconciler (Cascade ``yanetal``, the default) on ``blocks`` independent
    n-bit blocks per QBER: mean and worst f_EC, and the frame error rate (blocks Cascade
    leaves with residual errors: the verification tag discards them at both ends)."""
    print(f"{'QBER':>5} {'f_EC mean':>9} {'f_EC max':>8} {'FER':>9} {'rounds':>6} "
          f"{'ns/bit CPU':>10}   (n = {n}, {blocks} blocks each, cascade yanetal)")
    for q in qbers:
        fs, rounds, failed, cpu = [], [], 0, 0.0
        for seed in range(blocks):
            alice, bob = _keys(n, q, 5 + 1000 * seed + int(q * 1000))
            true_q = float(np.count_nonzero(alice != bob) / n)
            cpu0 = time.process_time()
            corrected, st = run_cascade(alice, bob, seed.to_bytes(16, "big"),
                                        block_sizes("yanetal", true_q, n))
            cpu += time.process_time() - cpu0
            failed += int(not np.array_equal(corrected, alice))
            fs.append(st.leaked_bits / (n * binary_entropy(true_q)))
            rounds.append(st.rounds)
        print(f"{q:>5.3f} {np.mean(fs):>9.4f} {max(fs):>8.4f} {failed:>4d}/{blocks:<4d} "
              f"{np.mean(rounds):>6.0f} {cpu / (blocks * n) * 1e9:>10.0f}")


def _warm_permutation() -> None:
    """Load the compiled kernels (extra ``fast``: Cascade's permutation and search steps, the
    GF(2) Toeplitz hash, sifting, the verification tag) before timing: a one-off per process (importing numba, loading or compiling the
    kernels), printed, not a per-bit cost."""
    cpu0 = time.process_time()
    zeros = np.zeros(FAST_MIN_BITS, np.uint8)
    KeyedPermutation(FAST_MIN_BITS, b"warm", b"up").permute(zeros)
    toeplitz_hash(zeros, np.zeros(2 * FAST_MIN_BITS - 1, np.uint8), FAST_MIN_BITS)
    sift_frame(zeros, zeros, zeros, zeros, False, 0, compiled=True)
    polynomial_tag(zeros, bytes(16))
    flipped = zeros.copy()
    flipped[::1000] = 1  # a Cascade run with searches: its compiled steps
    run_cascade(zeros, flipped, b"warm", block_sizes("yanetal", 0.01, FAST_MIN_BITS))
    fast = {name: name in sys.modules and sys.modules[name].available()
            for name in ("keyplane.physical.fastperm", "keyplane.physical.fasthash")}
    print(f"Blocks >= {FAST_MIN_BITS} bits: Cascade permutation "
          f"{'compiled (numba)' if fast['keyplane.physical.fastperm'] else 'numpy'}, "
          f"privacy amplification "
          f"{'GF(2), compiled' if fast['keyplane.physical.fasthash'] else 'FFT (numpy)'}; "
          f"first use {time.process_time() - cpu0:.2f} s CPU, once per process")


def _scaling(seed: int, schedule: str | None, z_basis: float | None) -> None:
    """The whole stack at 10 km with 10^6- and 10^7-bit blocks: CPU per sifted bit and the
    ratio (the issue's target: at most 1.3x). Two blocks of 10^7: with one, whether the
    run needs a second frame (about one block of sifted bits per frame) is a coin toss
    that moves the figure by the emulation of a whole frame."""
    per_bit: dict[int, float] = {}
    asyncio.run(_run_stack(10.0, 100_000, 1, seed, schedule, z_basis))  # warm up
    _warm_permutation()
    for block, blocks in ((1_000_000, 3), (10_000_000, 2)):
        r = asyncio.run(_run_stack(10.0, block, blocks, seed, schedule, z_basis))
        per_bit[block] = r.cpu_s / r.sifted_bits
        print(f"10 km, {block:>8d}-bit blocks x {r.blocks}, z basis {r.z_basis}: "
              f"{per_bit[block] * 1e9:6.0f} ns per "
              f"sifted bit, {1e-6 / per_bit[block]:.2f} Mbit/s sifted per core "
              f"({r.cpu_s:.2f} s CPU, {r.wall_s:.2f} s wall, f_EC {r.f_ec:.3f}, key per "
              f"pulse {r.key_per_pulse:.3e}, curve {r.curve_per_pulse:.3e}, load "
              f"{os.getloadavg()[0]:.1f})")
    print(f"cost per sifted bit, 1e7 over 1e6: {per_bit[10_000_000] / per_bit[1_000_000]:.2f}x")


_STAGES = (("emulation", ("physics.py",)), ("sifting", ("sifting.py", "fastsift.py")),
           ("permutations", ("fastperm.py", "bits.py:permute", "bits.py:positions",
                             "bits.py:forward", "bits.py:inverse", "bits.py:_", "bits.py:keyed")),
           ("Cascade, rest", ("cascade.py", "fastcascade.py", "reconcile.py")),
           ("verification tag", ("hashing.py:polynomial_tag", "fasttag.py")),
           ("privacy amplification", ("fasthash.py", "hashing.py", "bits.py:shake_bits")))
_REST = "messages, events, the rest"
_SHARED = ("~", "numpy", "<frozen", "site-packages/numba")
"""Built-ins and library code: their time goes to whichever stage called them."""


def _stage_of(func: tuple[str, int, str]) -> str | None:
    path, _, name = func
    if path == "~" or any(part in path for part in _SHARED[1:]):
        return None
    base = os.path.basename(path)
    for stage, keys in _STAGES:
        for key in keys:
            file, _, fn = key.partition(":")
            if base == file and (not fn or name == fn or name.startswith(fn)):
                return stage
    return _REST


def _by_stage(raw: Any) -> dict[str, float]:
    """cProfile's own times (``pstats.Stats.stats``) summed by stage; a shared function's
    time split over its callers' stages in proportion to the time each call took."""
    cache: dict[Any, dict[str, float]] = {}

    def shares(func: Any, depth: int = 0) -> dict[str, float]:
        if func in cache:
            return cache[func]
        stage = _stage_of(func)
        out: dict[str, float] = {}
        if stage is not None or depth > 6 or func not in raw or not raw[func][4]:
            out = {stage or _REST: 1.0}
        else:
            callers = raw[func][4]
            total = sum(c[2] for c in callers.values()) or 1.0
            for caller, c in callers.items():
                for st, f in shares(caller, depth + 1).items():
                    out[st] = out.get(st, 0.0) + f * c[2] / total
        cache[func] = out
        return out

    spent: dict[str, float] = {}
    for func, (_, _, tt, _, _) in raw.items():
        for st, f in shares(func).items():
            spent[st] = spent.get(st, 0.0) + f * tt
    return spent


def _stages(seed: int, z_basis: float | None) -> None:
    """Where the stack's CPU goes per sifted bit, at 10 km with 10^6- and 10^7-bit blocks:
    cProfile's own time per function, grouped by stage (built-ins and numpy's Python
    layer charged to their callers in proportion), beside an unprofiled run's CPU of the
    same blocks. The profiler inflates Python-level calls (messages, Cascade's rounds),
    not the compiled kernels, whose figures are close to their unprofiled cost."""
    import cProfile
    import pstats
    asyncio.run(_run_stack(10.0, 100_000, 1, seed, None, z_basis))  # warm up
    _warm_permutation()
    for block, blocks in ((1_000_000, 6), (10_000_000, 2)):
        plain = asyncio.run(_run_stack(10.0, block, blocks, seed, None, z_basis))
        prof = cProfile.Profile()
        prof.enable()
        asyncio.run(_run_stack(10.0, block, blocks, seed, None, z_basis))
        prof.disable()
        spent = _by_stage(pstats.Stats(prof).stats)  # type: ignore[attr-defined]
        whole = sum(spent.values())
        per_bit = plain.cpu_s / plain.sifted_bits * 1e9
        print(f"10 km, {block}-bit blocks x {plain.blocks}, z basis {plain.z_basis}: "
              f"{per_bit:.0f} ns per sifted bit unprofiled (load {os.getloadavg()[0]:.1f}); "
              f"by stage, ns per sifted bit profiled ({whole / plain.sifted_bits * 1e9:.0f} "
              f"in all) and share:")
        for stage in [s for s, _ in _STAGES] + [_REST]:
            print(f"  {stage:<28} {spent.get(stage, 0.0) / plain.sifted_bits * 1e9:6.1f} "
                  f"{spent.get(stage, 0.0) / whole:6.1%}")


def _pa_speed(n: int) -> None:
    key = np.random.default_rng(3).integers(0, 2, n, dtype=np.uint8)
    ell = n // 2
    t = toeplitz_bits(b"bench" * 6 + b"pa", n, ell)
    toeplitz_hash(key, t, ell)  # warm up (FFT plans, or the compiled kernel)
    reps = 5
    cpu0 = time.process_time()
    for _ in range(reps):
        toeplitz_hash(key, t, ell)
    cpu = (time.process_time() - cpu0) / reps
    cpu0 = time.process_time()
    for _ in range(reps):
        toeplitz_bits(b"bench" * 6 + b"pa", n, ell)
    expand = (time.process_time() - cpu0) / reps
    compiled = n >= FAST_MIN_BITS and "keyplane.physical.fasthash" in sys.modules and \
        sys.modules["keyplane.physical.fasthash"].available()
    path = "GF(2) product, compiled" if compiled else "FFT"
    print(f"Toeplitz privacy amplification ({path}), n = {n}, l = {ell}: {cpu * 1e3:.1f} ms CPU "
          f"({n / cpu / 1e6:.1f} Mbit/s in); matrix expansion from the seed (SHAKE-128) "
          f"{expand * 1e3:.1f} ms")


@dataclass
class SequenceResult:
    sim_s: float
    wall_s: float
    cpu_s: float
    sifted_bits: int
    keys_alice: int
    keys_matching: int
    keysize: int
    disclosed_bits: int

    @property
    def secret_bits(self) -> int:
        """SeQUeNCe has no privacy amplification: delivered key bits minus disclosed bits."""
        return max(0, self.keys_matching * self.keysize - self.disclosed_bits)


def _run_sequence(distance_km: float, sim_s: float, keysize: int) -> SequenceResult:
    from sequence.components.optical_channel import ClassicalChannel, QuantumChannel
    from sequence.kernel.timeline import Timeline
    from sequence.qkd.BB84 import pair_bb84_protocols
    from sequence.qkd.cascade import pair_cascade_protocols
    from sequence.topology.node import QKDNode

    class _Keys:
        """Upper protocol: SeQUeNCe's Cascade hands each key over as ``pop(key=...)``."""

        def __init__(self) -> None:
            self.keys: list[int] = []

        def pop(self, key: int, **_: object) -> None:
            self.keys.append(key)

    tl = Timeline(sim_s * 1e12)
    alice = QKDNode("alice", tl, stack_size=2)
    bob = QKDNode("bob", tl, stack_size=2)
    alice.set_seed(0)
    bob.set_seed(1)
    pair_bb84_protocols(alice.protocol_stack[0], bob.protocol_stack[0])
    pair_cascade_protocols(alice.protocol_stack[1], bob.protocol_stack[1])
    for src, dst, name in ((alice, bob, "ab"), (bob, alice, "ba")):
        # 0.2 dB/km; polarization fidelity 0.985 = our 1.5 % misalignment
        QuantumChannel("q" + name, tl, attenuation=0.0002, distance=distance_km * 1e3,
                       polarization_fidelity=0.985).set_ends(src, dst.name)
        ClassicalChannel("c" + name, tl, distance=distance_km * 1e3).set_ends(src, dst.name)
    keys_a, keys_b = _Keys(), _Keys()
    alice.protocol_stack[1].upper_protocols.append(keys_a)
    bob.protocol_stack[1].upper_protocols.append(keys_b)
    tl.init()
    alice.protocol_stack[1].push(keysize, math.inf)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    tl.run()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    cascade = alice.protocol_stack[1]
    # BB84 hands Cascade one 10000-bit key (its QBER estimate), then frame_len-bit keys
    n_frames = len(cascade.bits)
    sifted = 0 if n_frames == 0 else 10_000 + (n_frames - 1) * cascade.frame_len
    matching = sum(1 for a, b in zip(keys_a.keys, keys_b.keys, strict=False) if a == b)
    return SequenceResult(sim_s=sim_s, wall_s=wall, cpu_s=cpu, sifted_bits=sifted,
                          keys_alice=len(keys_a.keys), keys_matching=matching,
                          keysize=keysize, disclosed_bits=cascade.disclosed_bits_counter)


def _stack_table(args: argparse.Namespace) -> list[StackResult]:
    print("## 1. Whole stack, one core (key = sifted key-basis bits; finite-key curve: Lim "
          "et al.'s bound on the link's expected counts, Chernoff, f_EC 1.16)")
    sizes = [100_000, 1_000_000] if args.quick else [100_000, 1_000_000, 10_000_000]
    distances = (10.0, 50.0) if args.quick else (10.0, 50.0, 100.0)
    print(f"{'km':>4} {'block':>9} {'blocks':>6} {'sifted Mb/s/core':>16} "
          f"{'secret Mb/s/core':>16} {'ns/sifted bit':>13} {'QBER':>6} {'f_EC':>5} "
          f"{'key/pulse':>9} {'curve':>9} {'ratio':>5}")
    _warm_permutation()
    results: list[StackResult] = []
    for distance in distances:
        for block in sizes:
            if block > 1_000_000 and distance != 10.0:
                continue
            blocks = 2 if block >= 1_000_000 else 4
            r = asyncio.run(_run_stack(distance, block, blocks, args.seed, args.schedule))
            results.append(r)
            ratio = r.key_per_pulse / r.curve_per_pulse if r.curve_per_pulse else math.nan
            print(f"{distance:>4.0f} {block:>9d} {r.blocks:>6d} "
                  f"{r.sifted_bits / r.cpu_s / 1e6:>16.2f} "
                  f"{r.secret_bits / r.cpu_s / 1e6:>16.3f} "
                  f"{r.cpu_s / r.sifted_bits * 1e9:>13.0f} {r.qber:>6.4f} {r.f_ec:>5.3f} "
                  f"{r.key_per_pulse:>9.2e} {r.curve_per_pulse:>9.2e} {ratio:>5.2f}")
    print()
    per_bit = {r.block_bits: r.cpu_s / r.sifted_bits for r in results if r.distance_km == 10.0}
    if 1_000_000 in per_bit and 10_000_000 in per_bit:
        print(f"cost per sifted bit at 10 km, 1e7-bit blocks over 1e6-bit blocks: "
              f"{per_bit[10_000_000] / per_bit[1_000_000]:.2f}x")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="fewer blocks, small sizes")
    parser.add_argument("--schedule", default=None,
                        help="Cascade schedule (default: the link's, yanetal)")
    parser.add_argument("--z-basis", type=float, default=None, metavar="P",
                        help="section 1b: postprocessing.z_basis_probability (default: the "
                             "link's, auto: chosen by block size)")
    parser.add_argument("--cascade-python", default=None, metavar="DIR",
                        help="a checkout of brunorijsman/cascade-python to compare with")
    parser.add_argument("--ldpc-frame-bits", type=int, default=PostProcessing().ldpc_frame_bits,
                        help="LDPC frame length of section 3b")
    parser.add_argument("--only", default=None, help="run one section: stack, scaling, stages, lim, "
                        "cascade, reconcilers, pick, pa, sequence")
    parser.add_argument("--sequence-sim-s", type=float, default=0.03,
                        help="simulated seconds of the SeQUeNCe run (0 skips it)")
    args = parser.parse_args()

    print("# keyplane physical-layer benchmark")
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''} "
          f"cpus={os.cpu_count()} python={platform.python_version()} numpy={np.__version__} "
          f"load={os.getloadavg()[0]:.1f}")
    print(f"seed={args.seed} schedule={args.schedule or 'link default'}")
    print()
    def want(section: str) -> bool:
        return args.only is None or args.only == section

    results: list[StackResult] = []
    if want("stack"):
        results = _stack_table(args)
    if want("scaling"):
        print()
        print("## 1b. Cost per bit against block size (10 km, whole stack, one core)")
        _scaling(args.seed, args.schedule, args.z_basis)
    if args.only == "stages":  # profiled: only on request
        print()
        print("## 1c. Where the CPU goes, per stage (10 km, whole stack, one core)")
        _stages(args.seed, args.z_basis)
    if want("lim"):
        print()
        print("## 2. Finite-key reference curve (published)")
        _lim_reference()
    if want("cascade"):
        print()
        print("## 3. Cascade alone on identical keys")
        _cascade_compare(100_000, [0.01, 0.02, 0.05], 2 if args.quick else 3,
                         args.cascade_python)
    if want("reconcilers"):
        print()
        print("## 3b. Reconcilers on identical blocks (the twin's choice: postprocessing."
              "reconciliation and cascade_schedule)")
        _reconcilers(100_000 if args.quick else 1_000_000,
                     [0.01, 0.02, 0.05, 0.08] if args.quick else [0.01, 0.02, 0.03, 0.05, 0.08],
                     args.ldpc_frame_bits, 1 if args.quick else 2)
    if want("pick"):
        print()
        print("## 3c. The twin's reconciler per QBER: efficiency and frame error rate")
        _twin_pick(1_000_000, [0.01, 0.02, 0.03, 0.05, 0.08], 3 if args.quick else 10)
    if want("pa"):
        print()
        print("## 4. Privacy amplification")
        _pa_speed(1_000_000)
    if args.sequence_sim_s <= 0 or not want("sequence"):
        return
    print()
    print("## 5. SeQUeNCe")
    try:
        import sequence  # noqa: F401
    except ImportError as exc:
        print(f"SeQUeNCe not installed ({exc}; pip install -e '.[bench]'); comparison "
              "skipped")
        return
    from importlib.metadata import version

    keysize = 256
    s = _run_sequence(10.0, args.sequence_sim_s, keysize)
    ours = next((r for r in results if r.distance_km == 10.0 and r.block_bits == 100_000),
                None) or asyncio.run(_run_stack(10.0, 100_000, 4, args.seed, args.schedule))
    print(f"SeQUeNCe {version('sequence')} BB84 + Cascade, 10 km, {s.sim_s} s simulated, "
          f"key size {keysize}: CPU {s.cpu_s:.1f} s, wall {s.wall_s:.1f} s; BB84 sifted "
          f"{s.sifted_bits} bits; keys delivered {s.keys_alice} at Alice, {s.keys_matching} "
          f"identical at both ends; disclosed {s.disclosed_bits} bits")
    print(f"keyplane (10 km, 1e5-bit blocks): CPU {ours.cpu_s:.2f} s, sifted "
          f"{ours.sifted_bits} bits, secret {ours.secret_bits} bits (after privacy "
          "amplification)")
    seq_sifted = s.sifted_bits / s.cpu_s
    ours_sifted = ours.sifted_bits / ours.cpu_s
    print(f"sifted bits per CPU-second: keyplane {ours_sifted:.0f}, SeQUeNCe {seq_sifted:.0f}"
          + (f", ratio {ours_sifted / seq_sifted:.0f}x" if seq_sifted > 0 else ""))
    seq_key = s.keys_matching * keysize / s.cpu_s
    ours_key = ours.secret_bits / ours.cpu_s
    if seq_key > 0:
        print(f"delivered key bits per CPU-second (SeQUeNCe's before any privacy "
              f"amplification): keyplane {ours_key:.0f}, SeQUeNCe {seq_key:.0f}, ratio "
              f"{ours_key / seq_key:.0f}x")
    else:
        print("SeQUeNCe delivered no key within the run: no key ratio")


if __name__ == "__main__":
    main()
