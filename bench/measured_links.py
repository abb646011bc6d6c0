"""Measured links (MDI-QKD, TF-QKD, BBM92): the emulated stack against the cited formulas.

For each protocol and distance: the asymptotic rate of the cited formula (bits per pulse,
and bit/s at the link's repetition rate), the PLOB bound at the same end-to-end
transmittance, and the rate the whole emulated stack delivered (emulation, sifting,
estimation, Cascade, verification, privacy amplification; 100,000-bit blocks) on virtual
time, with its ratio to the formula. Default physics (0.2 dB/km, 1 dB insertion, detector
efficiency 0.2, dark counts 1e-6, 100 MHz) unless --low-noise (0 dB, 0.5, 1e-8, 1 GHz: the
regime where TF-QKD beats the PLOB bound).

    python bench/measured_links.py [--blocks 4] [--low-noise]
    python bench/measured_links.py --finite

``--finite``: the finite decoy-state rates of MDI-QKD and TF-QKD (bits per pulse) against
the asymptotic formula, for N = 1e10 ... 1e16 pulses, and the reach (last 5 km step with a
key) per N (keyplane.physical.finite_decoy).

Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from _support import machine_line

from keyplane.clock import VirtualClock
from keyplane.config import PostProcessing, QuantumLink
from keyplane.physical import LinkRunner, MemoryKeySink
from keyplane.physical.finite_decoy import FiniteDecoy, finite_decoy_rate
from keyplane.physical.measured import MeasuredPhysics, measured_physics, plob_bound

SWEEP = {"mdi-qkd": (0, 20, 50, 80), "tf-qkd": (0, 50, 100, 150), "bbm92": (0, 20, 50, 80)}
LOW_NOISE_SWEEP = {"mdi-qkd": (50, 150), "tf-qkd": (100, 250, 300), "bbm92": (50, 150)}


async def delivered_bps(link: QuantumLink, blocks: int) -> tuple[float, int]:
    clock = VirtualClock()
    sa, sb = MemoryKeySink(), MemoryKeySink()
    async with LinkRunner(link, clock=clock, seed=7, alice_sink=sa, bob_sink=sb) as r:
        for _ in range(60 * blocks + 20):
            await clock.advance(r.frame_duration_s)
            if min(sa.qsize(), sb.qsize()) >= blocks:
                break
        elapsed = clock.now()
    a = [b.material for b in sa.drain()]
    assert a == [b.material for b in sb.drain()]
    return 8 * sum(len(m) for m in a) / elapsed, len(a)


FINITE_N = (1e10, 1e12, 1e14, 1e16)
FINITE_SWEEP = {"mdi-qkd": (0, 20, 50, 80, 120), "tf-qkd": (0, 50, 100, 150, 200)}


def _physics(protocol: str, km: float) -> MeasuredPhysics:
    m = measured_physics(QuantumLink(endpoints=("a", "b"), length_km=km,
                                     protocol=protocol, station="m"))  # type: ignore[arg-type]
    assert m is not None
    return m


def finite() -> None:
    """Finite decoy-state rates against the asymptotic formula (bits per pulse)."""
    head = " ".join(f"{f'N={n:.0e}':>11}" for n in FINITE_N)
    print(f"{'protocol':9} {'km':>4} {'asymptotic':>11} {head}")
    for protocol, sweep in FINITE_SWEEP.items():
        for km in sweep:
            m = _physics(protocol, km)
            rates = " ".join(f"{finite_decoy_rate(m, FiniteDecoy(n_pulses=n)).rate:11.3e}"
                             for n in FINITE_N)
            print(f"{protocol:9} {km:4d} {m.asymptotic_rate():11.3e} {rates}")
    for protocol in FINITE_SWEEP:
        reach = []
        for n in FINITE_N:
            ok = [km for km in range(0, 400, 5)
                  if finite_decoy_rate(_physics(protocol, km), FiniteDecoy(n_pulses=n)).rate > 0]
            reach.append(f"N={n:.0e}: {max(ok) if ok else '-'} km")
        print(f"reach {protocol}: " + ", ".join(reach))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--low-noise", action="store_true")
    ap.add_argument("--finite", action="store_true")
    args = ap.parse_args()
    print(machine_line())
    if args.finite:
        finite()
        return
    extra = {"dark_count_probability": 1e-8, "detector_efficiency": 0.5,
             "insertion_loss_db": 0.0, "repetition_rate_hz": 1e9} if args.low_noise else {}
    print(f"{'protocol':9} {'km':>4} {'formula b/pulse':>15} {'PLOB b/pulse':>13} "
          f"{'formula bit/s':>13} {'stack bit/s':>12} {'ratio':>6} {'blocks':>6} {'cpu s':>6}")
    for protocol, sweep in (LOW_NOISE_SWEEP if args.low_noise else SWEEP).items():
        for km in sweep:
            link = QuantumLink(endpoints=("a", "b"), length_km=km, protocol=protocol,  # type: ignore[arg-type]
                               station="m", postprocessing=PostProcessing(
                                   block_size_bits=100_000), **extra)  # type: ignore[arg-type]
            m = measured_physics(link)
            assert m is not None
            rate = m.asymptotic_rate()
            formula = rate * link.repetition_rate_hz
            stack, n = (0.0, 0)
            t0 = time.process_time()
            sifted_bps = m.expected_sifted_fraction() * link.repetition_rate_hz
            if formula > 0 and sifted_bps * 60 >= 100_000:  # a block per emulated minute
                stack, n = asyncio.run(delivered_bps(link, args.blocks))
            cpu = time.process_time() - t0
            ratio = f"{stack / formula:6.2f}" if n else "     -"
            print(f"{protocol:9} {km:4d} {rate:15.3e} {plob_bound(m.eta_total):13.3e} "
                  f"{formula:13.1f} {stack:12.1f} {ratio} {n:6d} {cpu:6.1f}")


if __name__ == "__main__":
    main()
