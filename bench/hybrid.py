"""Hybrid provisioning benchmarks: ML-KEM-768 hop keys, the combiner, and PQC/combined hops
inside a live relay.

    python bench/hybrid.py [--seconds 3] [--samples 200] [--seed 1]

Part 1 (micro): ML-KEM hop keys per second (the whole authenticated exchange: keygen, both
ECDSA signatures and certificate checks, encapsulation, decapsulation, HKDF on both sides, in
one process, so both KMs' CPU time is counted), the latency that exchange adds to a hop, and
the cost of the XOR combiner.

Part 2 (live relay, embedded): real KeyManagers on a line km0 - km1 - km2 (one asyncio
process, in-memory bus, one SQLite store, link key stores fed directly) under the real
control plane (bench/_support.py), both users' SLA carrying the hybrid policy. Median and p99 latency of
sequential ETSI 014 ``enc_keys(1 x 256 bit)`` with every hop QKD (``qkd-only``), every hop
combined (``qkd-and-pqc``), and the km1-km2 hop on ML-KEM alone (``either`` with that link's
key used up). Every frame of a PQC or combined hop (the key frame and its confirmation) makes
its own exchange. The added latency per hop is (policy latency - qkd-only latency) / hops
switched. Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from _support import CALLER_A, line_topology, machine_line, start_net

from keyplane.bus import MemoryBus
from keyplane.certs import ensure_network_certs
from keyplane.clock import RealClock
from keyplane.config import load_topology
from keyplane.events import EventStream
from keyplane.keymanager import KmSettings
from keyplane.keymanager.pqc import KmIdentity, PqcReceiver, combine_hop_key, pqc_send
from keyplane.store import Database, sqlite_url

ROOT = Path(__file__).resolve().parents[1]
CALLER = CALLER_A
SETTINGS = KmSettings(link_reserve_bytes=65_536, keystore_low_water_bits=0,
                      relay_confirm_timeout_s=30.0)


def micro(seconds: float, certs_dir: str) -> None:
    topo = load_topology(ROOT / "examples" / "paper_poc.yaml")
    certs = ensure_network_certs(topo, certs_dir)
    a = KmIdentity.load("km0", certs.kms["km0"].cert, certs.kms["km0"].key, certs.ca.cert)
    b = KmIdentity.load("km2", certs.kms["km2"].cert, certs.kms["km2"].key, certs.ca.cert)
    lat: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        rx = PqcReceiver(a, "km2", b"bench")
        reply, k1 = pqc_send(b, "km0", rx.offer, 32)
        k2 = rx.finish(reply, 32)
        lat.append(time.perf_counter() - t0)
        assert k1 == k2
    n = len(lat)
    print(f"ML-KEM-768 authenticated hop keys: {n / sum(lat):,.0f} keys/s (both ends, one core)")
    print(f"latency added per PQC hop (CPU, no network): p50 {statistics.median(lat) * 1e3:.3f} ms,"
          f" p99 {sorted(lat)[int(0.99 * (n - 1))] * 1e3:.3f} ms over {n} exchanges")
    q, p = bytes(32), bytes(range(32))
    reps = 100_000
    t0 = time.perf_counter()
    for _ in range(reps):
        combine_hop_key(q, p)
    dt = time.perf_counter() - t0
    print(f"XOR combiner (256-bit): {dt / reps * 1e6:.2f} us per hop key")


async def relay_latency(policy: str, outage: bool, samples: int, seed: int, tmp: Path
                        ) -> list[float]:
    """Sequential enc_keys(1 x 256 bit) latencies (s) over km0 - km1 - km2 under ``policy``."""
    topo = line_topology(3, hybrid_policy=policy)
    certs = ensure_network_certs(topo, tmp / "certs")
    identities = {n.id: KmIdentity.load(n.id, certs.kms[n.id].cert, certs.kms[n.id].key,
                                        certs.ca.cert) for n in topo.nodes}
    db = await Database.open(sqlite_url(tmp / f"hybrid-{policy}-{outage}.db"))
    bus = MemoryBus(seed=seed)
    clock = RealClock()
    net = await start_net(topo, bus, db, clock, EventStream(clock), km_settings=SETTINGS,
                          seed=seed, identities=identities)
    try:
        src = net.kms["km0"]
        await src.enc_keys(CALLER, "sc", "sd", 1, 256)  # opens the session
        if outage:
            for node in ("km1", "km2"):
                store = net.kms[node].link_stores["km1-km2"]
                store.take_send(store.sendable_bytes)
        out = []
        for _ in range(samples):
            t0 = time.perf_counter()
            await src.enc_keys(CALLER, "sc", "sd", 1, 256)
            out.append(time.perf_counter() - t0)
        return out
    finally:
        await net.close()
        await bus.close()
        await db.close()


async def relay(samples: int, seed: int) -> None:
    print("\n== live relay, embedded: km0 - km1 - km2, enc_keys(1 x 256 bit), sequential")
    print(f"{'policy':<14} {'hops':<22} {'p50 ms':>8} {'p99 ms':>8} {'added/hop ms':>13}")
    cases = [("qkd-only", False, "qkd, qkd", 0), ("either", True, "qkd, pqc (outage)", 1),
             ("qkd-and-pqc", False, "combined, combined", 2)]
    base = 0.0
    with tempfile.TemporaryDirectory() as d:
        for policy, outage, hops, switched in cases:
            lat = await relay_latency(policy, outage, samples, seed, Path(d))
            p50 = statistics.median(lat)
            p99 = sorted(lat)[int(0.99 * (len(lat) - 1))]
            if switched == 0:
                base = p50
                added = "-"
            else:
                added = f"{(p50 - base) / switched * 1e3:.3f}"
            print(f"{policy:<14} {hops:<22} {p50 * 1e3:>8.3f} {p99 * 1e3:>8.3f} {added:>13}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    print(machine_line())
    print(f"parameters: seconds={args.seconds} samples={args.samples} seed={args.seed}")
    with tempfile.TemporaryDirectory() as d:
        micro(args.seconds, d)
    asyncio.run(relay(args.samples, args.seed))


if __name__ == "__main__":
    main()
