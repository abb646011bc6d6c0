"""Cost of keys at rest: sealing (AES-256-GCM under the node's KEK) per value, and ETSI 014
keys/s over 2 hops with sealing against the same run with sealing taken out.

Part 1 times :class:`keyplane.store.sealing.Sealer` alone (CPU time per seal + open) for a
256-bit key, a 100-key batch and a 16 KiB link key block.

Part 2 runs real KeyManagers on a line km0 - km1 - km2 with the real control-plane
elements (Access Control, Admission Control, Routing; no SDN Controller, no physical
layer: link key stores are fed up front with the same random blocks at both ends) on one
in-memory bus and one SQLite file, and measures enc_keys from sa (km0) to sb (km2), one
key per request at concurrency 64, then dec_keys of the same keys at km2 (so every key is
relayed through km1, confirmed, written, delivered at both ends). The two variants
alternate, ``--rounds`` times each, in this process and window:

* ``sealed``: as shipped;
* ``unsealed``: the counterfactual: :meth:`Sealer.seal` and :meth:`Sealer.open` replaced
  by the identity in this process (what the store would cost without encryption at rest).

    python bench/at_rest.py [--keys 2000] [--rounds 3]

Prints wall and process CPU time per key; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from keyplane.bus import MemoryBus  # noqa: E402
from keyplane.clock import RealClock  # noqa: E402
from keyplane.config import Topology, parse_topology  # noqa: E402
from keyplane.control import ControlPlane  # noqa: E402
from keyplane.events import EventStream  # noqa: E402
from keyplane.keymanager import KeyManager, KmSettings  # noqa: E402
from keyplane.keymanager.interface import Caller  # noqa: E402
from keyplane.store import Database, sqlite_url  # noqa: E402
from keyplane.store.sealing import KeyRing, Sealer  # noqa: E402
from keyplane.store.topology import load_topology_into  # noqa: E402

TOPOLOGY = """
version: 1
name: bench-at-rest
nodes: [{id: km0}, {id: km1}, {id: km2}]
links:
  - {endpoints: [km0, km1], length_km: 10}
  - {endpoints: [km1, km2], length_km: 10}
users:
  - {id: ua, certificate_subject: "CN=ua", sla: {max_bps: 1000000000, max_sessions: 8}}
  - {id: ub, certificate_subject: "CN=ub", sla: {max_bps: 1000000000, max_sessions: 8}}
applications:
  - {sae_id: sa, owner: ua, node: km0}
  - {sae_id: sb, owner: ub, node: km2}
"""
SETTINGS = KmSettings(link_reserve_bytes=65_536, max_concurrent_exchanges=256,
                      keystore_low_water_bits=0, relay_confirm_timeout_s=30.0)
BLOCK_BYTES = 1 << 14


def micro(sealer: Sealer, n: int) -> None:
    print(f"\n== seal + open, CPU time per value ({n} each)")
    print(f"{'value':>24} {'us':>8}")
    for label, size in (("256-bit key", 32), ("100-key batch (3.2 kB)", 3200),
                        ("16 KiB link key block", BLOCK_BYTES)):
        data = random.randbytes(size)
        t0 = time.process_time()
        for i in range(n):
            sealer.open("key_batches", str(i), sealer.seal("key_batches", str(i), data))
        print(f"{label:>24} {(time.process_time() - t0) / n * 1e6:>8.1f}")


@contextmanager
def unsealed() -> Iterator[None]:
    """The counterfactual: sealing replaced by the identity in this process only."""
    seal, open_ = Sealer.seal, Sealer.open
    Sealer.seal = lambda self, table, row, plaintext: plaintext  # type: ignore[method-assign]
    Sealer.open = lambda self, table, row, sealed: sealed  # type: ignore[method-assign]
    try:
        yield
    finally:
        Sealer.seal, Sealer.open = seal, open_  # type: ignore[method-assign]


async def one_run(tmp: Path, topo: Topology, keys: int, seed: int
                  ) -> tuple[float, float, float]:
    """``(keys/s wall, process CPU us per key, KM rows written per key)`` of one fresh
    network."""
    db = await Database.open(sqlite_url(tmp / "km.db"), keyring=KeyRing(tmp / "kek"))
    await load_topology_into(db, topo)
    bus = MemoryBus()
    clock = RealClock()
    events = EventStream(clock)
    plane = ControlPlane(topo, bus, db, clock, events,
                         elements=["routing", "access", "admission"])
    await plane.start()
    kms = {n.id: KeyManager(n.id, topo, bus, db, clock, events, SETTINGS) for n in topo.nodes}
    try:
        for km in kms.values():
            await km.start()
        rng = random.Random(seed)
        for link in topo.links:
            for b in range(max(1, keys * 200 // BLOCK_BYTES + 64)):
                material = rng.randbytes(BLOCK_BYTES)
                for end in link.endpoints:
                    await kms[end].put_block(link.link_id, b, material)
        for km in kms.values():
            await km.links_acknowledged()
        a, b = Caller("CN=ua"), Caller("CN=ub")
        src, dst = kms["km0"], kms["km2"]
        warm = await src.enc_keys(a, "sa", "sb", 1, 256)  # opens the session
        await dst.dec_keys(b, "sb", "sa", [k.key_id for k in warm])
        todo = iter(range(keys))

        async def worker() -> None:
            for _ in todo:
                (k,) = await src.enc_keys(a, "sa", "sb", 1, 256)
                (got,) = await dst.dec_keys(b, "sb", "sa", [k.key_id])
                if got.key != k.key:
                    raise RuntimeError("the slave got other key bytes")

        journal = src.journal
        await journal.sync()
        r0 = journal.store.rows_written
        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(64)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        await journal.sync()
        return keys / wall, cpu / keys * 1e6, (journal.store.rows_written - r0) / keys
    finally:
        for km in kms.values():
            await km.close()
        await plane.close()
        await bus.close()
        await db.close()


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keys", type=int, default=2000, help="keys per run (enc + dec each)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"parameters: keys={args.keys} rounds={args.rounds} key_size=256 bits hops=2 "
          f"concurrency=64 seed={args.seed}")
    print(f"machine: {platform.machine()} cpus={os.cpu_count()} "
          f"python={platform.python_version()} {platform.system()} "
          f"load={os.getloadavg()[0]:.1f}")
    random.seed(args.seed)
    with tempfile.TemporaryDirectory() as d:
        micro(KeyRing(Path(d) / "kek").sealer("km0"), 20_000)
    topo = parse_topology(TOPOLOGY)
    results: dict[str, list[tuple[float, float, float]]] = {"sealed": [], "unsealed": []}
    print(f"\n== ETSI 014 over 2 hops, enc_keys(1) + dec_keys(1), c=64, {args.keys} keys/run")
    print(f"{'round':>5} {'variant':>9} {'keys/s':>8} {'CPU us/key':>11} "
          f"{'rows/key (3 KMs)':>17}")
    for r in range(args.rounds):
        for variant in ("sealed", "unsealed") if r % 2 == 0 else ("unsealed", "sealed"):
            with tempfile.TemporaryDirectory() as d:
                if variant == "sealed":
                    res = await one_run(Path(d), topo, args.keys, args.seed + r)
                else:
                    with unsealed():
                        res = await one_run(Path(d), topo, args.keys, args.seed + r)
            results[variant].append(res)
            print(f"{r + 1:>5} {variant:>9} {res[0]:>8.0f} {res[1]:>11.0f} {res[2]:>17.2f}")
    print("\nmedian over rounds:")
    for variant, rows in results.items():
        print(f"{variant:>9}: {statistics.median(x[0] for x in rows):8.0f} keys/s, "
              f"{statistics.median(x[1] for x in rows):6.0f} CPU us/key")
    s = statistics.median(x[1] for x in results["sealed"])
    u = statistics.median(x[1] for x in results["unsealed"])
    print(f"sealing costs {s - u:+.0f} CPU us per key ({(s - u) / u * 100:+.1f} %)")


if __name__ == "__main__":
    asyncio.run(main())
