"""Physical-layer benchmark: the whole stack per core, and SeQUeNCe's BB84 + Cascade.

Runs one link (both QKD modules in this process, one core, in-process channels) on a
VirtualClock, so the figures are pure CPU throughput: physics emulation, sifting,
parameter estimation, Cascade with its message exchange, verification, Toeplitz privacy
amplification, delivery to both sinks. Prints, per (distance, block size): sifted bits
and secret bits per CPU-second, mean QBER, mean f_EC, and the emulated secret-key rate.

Then the same 10 km link through SeQUeNCe (PyPI ``sequence``: photon-level BB84 with its
Cascade, no privacy amplification) for ``--sequence-sim-s`` seconds of simulated time,
and the ratio of secret bits per wall-second, both measured in this run.

    PYTHONPATH=src python bench/physical.py [--quick] [--seed 1] [--sequence-sim-s 0.03]

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
from keyplane.physical import LinkRunner, MemoryKeySink


@dataclass
class StackResult:
    distance_km: float
    block_bits: int
    blocks: int
    sifted_bits: int
    secret_bits: int
    cpu_s: float
    wall_s: float
    qber: float
    f_ec: float
    emulated_skr_bps: float


async def _run_stack(distance_km: float, block_bits: int, blocks: int, seed: int,
                     schedule: str) -> StackResult:
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
    return StackResult(
        distance_km=distance_km, block_bits=block_bits, blocks=len(done),
        sifted_bits=runner.stats.sifted_bits, secret_bits=runner.stats.delivered_bits,
        cpu_s=cpu, wall_s=wall,
        qber=float(np.mean([e.data["qber"] for e in done])) if done else math.nan,
        f_ec=float(np.mean([e.data["ec_efficiency"] for e in done])) if done else math.nan,
        emulated_skr_bps=runner.stats.delivered_bits / max(clock.now(), 1e-12))


@dataclass
class SequenceResult:
    sim_s: float
    wall_s: float
    sifted_bits: int
    corrected_bits: int
    disclosed_bits: int

    @property
    def secret_bits(self) -> int:
        """SeQUeNCe has no privacy amplification: corrected minus disclosed bits."""
        return max(0, self.corrected_bits - self.disclosed_bits)


def _run_sequence(distance_km: float, sim_s: float, keysize: int) -> SequenceResult:
    from sequence.components.optical_channel import ClassicalChannel, QuantumChannel
    from sequence.kernel.timeline import Timeline
    from sequence.qkd.BB84 import pair_bb84_protocols
    from sequence.qkd.cascade import pair_cascade_protocols
    from sequence.topology.node import QKDNode

    class _Keys:
        def __init__(self) -> None:
            self.keys: list[int] = []

        def pop(self, info: int) -> None:
            self.keys.append(info)

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
    keys = _Keys()
    alice.protocol_stack[1].upper_protocols.append(keys)
    tl.init()
    alice.protocol_stack[1].push(keysize, math.inf)
    wall0 = time.perf_counter()
    tl.run()
    wall = time.perf_counter() - wall0
    cascade = alice.protocol_stack[1]
    # BB84 hands Cascade one 10000-bit key (its QBER estimate), then frame_len-bit keys
    n_frames = len(cascade.bits)
    sifted = 0 if n_frames == 0 else 10_000 + (n_frames - 1) * cascade.frame_len
    return SequenceResult(sim_s=sim_s, wall_s=wall, sifted_bits=sifted,
                          corrected_bits=len(cascade.valid_keys) * keysize,
                          disclosed_bits=cascade.disclosed_bits_counter)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="fewer blocks, small sizes")
    parser.add_argument("--schedule", default="original", help="Cascade schedule")
    parser.add_argument("--sequence-sim-s", type=float, default=0.03,
                        help="simulated seconds of the SeQUeNCe run (0 skips it)")
    args = parser.parse_args()

    print("# keyplane physical-layer benchmark")
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''} "
          f"cpus={os.cpu_count()} python={platform.python_version()} numpy={np.__version__}")
    print(f"seed={args.seed} schedule={args.schedule}")
    print()
    sizes = [100_000, 1_000_000] if args.quick else [100_000, 300_000, 1_000_000]
    header = (f"{'km':>4} {'block':>9} {'blocks':>6} {'sifted Mb/s/core':>16} "
              f"{'secret Mb/s/core':>16} {'QBER':>6} {'f_EC':>5} {'emulated SKR b/s':>16}")
    print(header)
    results: list[StackResult] = []
    for distance in (10.0, 50.0):
        for block in sizes:
            blocks = 2 if block >= 1_000_000 or args.quick else 4
            r = asyncio.run(_run_stack(distance, block, blocks, args.seed, args.schedule))
            results.append(r)
            print(f"{distance:>4.0f} {block:>9d} {r.blocks:>6d} "
                  f"{r.sifted_bits / r.cpu_s / 1e6:>16.2f} {r.secret_bits / r.cpu_s / 1e6:>16.3f} "
                  f"{r.qber:>6.4f} {r.f_ec:>5.3f} {r.emulated_skr_bps:>16.0f}")
    if args.sequence_sim_s <= 0:
        return
    print()
    try:
        import sequence  # noqa: F401
    except ImportError as exc:
        print(f"SeQUeNCe not installed ({exc}); comparison skipped")
        return
    from importlib.metadata import version

    keysize = 256
    s = _run_sequence(10.0, args.sequence_sim_s, keysize)
    ours = next(r for r in results if r.distance_km == 10.0 and r.block_bits == 100_000)
    ours_secret_per_wall = ours.secret_bits / ours.wall_s
    print(f"SeQUeNCe {version('sequence')} BB84 + Cascade, 10 km, {s.sim_s} s simulated, "
          f"key size {keysize}: wall {s.wall_s:.1f} s, BB84 sifted {s.sifted_bits} bits, "
          f"Cascade-corrected {s.corrected_bits} bits, disclosed {s.disclosed_bits} bits")
    seq_secret_per_wall = s.secret_bits / s.wall_s
    seq_sifted_per_wall = s.sifted_bits / s.wall_s
    print(f"SeQUeNCe: sifted {seq_sifted_per_wall:.0f} bits/wall-s, "
          f"secret (corrected - disclosed) {seq_secret_per_wall:.1f} bits/wall-s")
    print(f"keyplane (10 km, 1e5-bit blocks): secret {ours_secret_per_wall:.0f} bits/wall-s, "
          f"sifted {ours.sifted_bits / ours.wall_s:.0f} bits/wall-s")
    if seq_secret_per_wall > 0:
        print(f"ratio secret bits per wall-second keyplane/SeQUeNCe: "
              f"{ours_secret_per_wall / seq_secret_per_wall:.0f}x")
    else:
        bound = ours_secret_per_wall / (keysize / s.wall_s)
        print("SeQUeNCe delivered no corrected key within the run; ratio is at least "
              f"{bound:.0f}x (as if it had delivered one {keysize}-bit key)")
    if seq_sifted_per_wall > 0:
        print(f"ratio sifted bits per wall-second keyplane/SeQUeNCe: "
              f"{ours.sifted_bits / ours.wall_s / seq_sifted_per_wall:.0f}x")


if __name__ == "__main__":
    main()
