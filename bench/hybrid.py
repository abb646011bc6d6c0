"""Hybrid provisioning micro-benchmarks: authenticated ML-KEM-768 hop keys and the combiner.

    python bench/hybrid.py [--seconds 3]

Prints ML-KEM hop keys per second (the whole authenticated exchange: keygen, both ECDSA
signatures and certificate checks, encapsulation, decapsulation, HKDF on both sides, in one
process, so both KMs' CPU time is counted), the latency that exchange adds to a hop, and the
cost of the XOR combiner. Relay-level figures (a PQC or combined hop inside a live relay) are
printed by bench/keymanager.py.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from keyplane.certs import ensure_network_certs
from keyplane.config import load_topology
from keyplane.keymanager.pqc import KmIdentity, PqcReceiver, combine_hop_key, pqc_send

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    print(f"command: python bench/hybrid.py --seconds {args.seconds}")
    print(f"machine: {platform.machine()} {platform.processor() or ''} python {sys.version.split()[0]}")
    topo = load_topology(ROOT / "examples" / "paper_poc.yaml")
    with tempfile.TemporaryDirectory() as d:
        certs = ensure_network_certs(topo, d)
        a = KmIdentity.load("km0", certs.kms["km0"].cert, certs.kms["km0"].key, certs.ca.cert)
        b = KmIdentity.load("km2", certs.kms["km2"].cert, certs.kms["km2"].key, certs.ca.cert)
        lat: list[float] = []
        end = time.perf_counter() + args.seconds
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


if __name__ == "__main__":
    main()
