"""Physical-layer benchmark: the whole stack per core, the finite-key reference curve,
Cascade against cascade-python, and SeQUeNCe's BB84 + Cascade.

1. One link (both QKD modules in this process, one core, in-process channels) on a
   VirtualClock, so the figures are pure CPU throughput: physics emulation, sifting,
   parameter estimation, Cascade with its message exchange, verification, Toeplitz privacy
   amplification, delivery to both sinks. Per (distance, block size): sifted key bits and
   secret bits per CPU-second, mean QBER, mean f_EC, secret key per pulse and its ratio to
   the finite-key curve (Lim et al. 2014's bound on the link's expected counts).
2. The published curve: Lim et al.'s fibre system, rates optimized as in the paper, at
   100 km for n_X = 10^7 and 10^9 (the paper: the 10^9 rate is about 1.75x).
3. Cascade alone on identical keys: keyplane (each schedule) and, when importable,
   cascade-python (brunorijsman/cascade-python; not on PyPI: pass ``--cascade-python
   DIR`` with a checkout) with the same schedule: f_EC and CPU time.
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

import numpy as np

from keyplane.clock import VirtualClock
from keyplane.config import PostProcessing, QuantumLink
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.physical import LinkPhysics, LinkRunner, MemoryKeySink
from keyplane.physical.analytic import finite_key_rate
from keyplane.physical.bits import binary_entropy
from keyplane.physical.cascade import block_sizes, run_cascade
from keyplane.physical.finite_key import LimSystem
from keyplane.physical.hashing import toeplitz_bits, toeplitz_hash


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

    @property
    def key_per_pulse(self) -> float:
        return self.secret_bits / self.pulses if self.pulses else 0.0


async def _run_stack(distance_km: float, block_bits: int, blocks: int, seed: int,
                     schedule: str | None) -> StackResult:
    clock = VirtualClock()
    link = QuantumLink(endpoints=("a", "b"), length_km=distance_km,
                       postprocessing=PostProcessing(block_size_bits=block_bits))
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
                                        eps_sec=link.postprocessing.security_epsilon))


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


def _pa_speed(n: int) -> None:
    key = np.random.default_rng(3).integers(0, 2, n, dtype=np.uint8)
    ell = n // 2
    t = toeplitz_bits(b"bench" * 6 + b"pa", n, ell)
    toeplitz_hash(key, t, ell)  # warm the FFT plans
    reps = 5
    cpu0 = time.process_time()
    for _ in range(reps):
        toeplitz_hash(key, t, ell)
    cpu = (time.process_time() - cpu0) / reps
    cpu0 = time.process_time()
    for _ in range(reps):
        toeplitz_bits(b"bench" * 6 + b"pa", n, ell)
    expand = (time.process_time() - cpu0) / reps
    print(f"Toeplitz privacy amplification, n = {n}, l = {ell}: {cpu * 1e3:.1f} ms CPU "
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="fewer blocks, small sizes")
    parser.add_argument("--schedule", default=None,
                        help="Cascade schedule (default: the link's, yanetal)")
    parser.add_argument("--cascade-python", default=None, metavar="DIR",
                        help="a checkout of brunorijsman/cascade-python to compare with")
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
    print("## 1. Whole stack, one core (key = sifted key-basis bits; finite-key curve: Lim "
          "et al.'s bound on the link's expected counts, Chernoff, f_EC 1.16)")
    sizes = [100_000, 1_000_000] if args.quick else [100_000, 1_000_000, 10_000_000]
    distances = (10.0, 50.0) if args.quick else (10.0, 50.0, 100.0)
    print(f"{'km':>4} {'block':>9} {'blocks':>6} {'sifted Mb/s/core':>16} "
          f"{'secret Mb/s/core':>16} {'ns/sifted bit':>13} {'QBER':>6} {'f_EC':>5} "
          f"{'key/pulse':>9} {'curve':>9} {'ratio':>5}")
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
    print("## 2. Finite-key reference curve (published)")
    _lim_reference()
    print()
    print("## 3. Cascade alone on identical keys")
    _cascade_compare(100_000, [0.01, 0.02, 0.05], 2 if args.quick else 3, args.cascade_python)
    print()
    print("## 4. Privacy amplification")
    _pa_speed(1_000_000)
    if args.sequence_sim_s <= 0:
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
    ours = next(r for r in results if r.distance_km == 10.0 and r.block_bits == 100_000)
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
