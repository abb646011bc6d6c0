"""Key manager benchmark: latency added per relay hop and end-to-end 256-bit keys/s.

Runs real KeyManagers (one per node of a line km0 - ... - km<h>) on one bus and one SQLite
store, with link key stores fed directly, and a minimal control-plane counterpart
(tests/support/fake_control.py) that answers Access/Admission Control and configures paths.
Keys are ETSI 014 enc_keys of 256 bits from km0's master SAE to the last node's slave SAE;
every key is relayed hop by hop, confirmed, and persisted before it is returned.

    PYTHONPATH=src:. python bench/keymanager.py [--hops 1 2 3 4] [--keys 4000] [--nats]

Prints figures only; asserts nothing.
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
from pathlib import Path

from tests.support.fake_control import FakeControlPlane
from tests.support.km_net import line_topology

from keyplane.bus import Bus, MemoryBus
from keyplane.clock import RealClock
from keyplane.events import EventStream
from keyplane.keymanager import KeyManager, KmSettings
from keyplane.keymanager.interface import Caller
from keyplane.store import Database, sqlite_url

CALLER = Caller("CN=a")
SETTINGS = KmSettings(link_reserve_bytes=65_536, max_concurrent_exchanges=256,
                      keystore_low_water_bits=0, relay_confirm_timeout_s=30.0)


async def build(bus: Bus, hops: int, tmp: Path, seed: int, link_bytes: int
                ) -> tuple[list[KeyManager], FakeControlPlane, Database]:
    topo = line_topology(hops + 1)
    db = await Database.open(sqlite_url(tmp / f"bench-{hops}-{seed}.db"))
    clock = RealClock()
    events = EventStream(clock)
    ctl = await FakeControlPlane(bus, topo).start()
    kms = []
    for node in topo.nodes:
        km = KeyManager(node.id, topo, bus, db, clock, events, SETTINGS)
        await km.start()
        kms.append(km)
    rng = random.Random(seed)
    block = 1 << 14  # 16 KiB blocks, about what one privacy-amplified QKD block yields
    for link in topo.links:
        for b in range(max(1, link_bytes // block)):
            material = rng.randbytes(block)
            for end in link.endpoints:
                await kms[int(end[2:])].put_block(link.link_id, b, material)
    for km in kms:  # the peers acknowledged every block
        await km.links_acknowledged()
    return kms, ctl, db


async def teardown(kms: list[KeyManager], ctl: FakeControlPlane, db: Database) -> None:
    for km in kms:
        await km.close()
    await ctl.close()
    await db.close()


async def latency(kms: list[KeyManager], n: int) -> float:
    """Median seconds of one enc_keys(1 x 256 bit) call, sequential."""
    src = kms[0]
    await src.enc_keys(CALLER, "sc", "sd", 1, 256)  # opens the session
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await src.enc_keys(CALLER, "sc", "sd", 1, 256)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


async def throughput(kms: list[KeyManager], total_keys: int, per_request: int,
                     concurrency: int) -> float:
    """256-bit keys per second with ``concurrency`` callers of enc_keys(per_request)."""
    src = kms[0]
    await src.enc_keys(CALLER, "sc", "sd", 1, 256)
    requests = max(1, total_keys // per_request)
    todo = iter(range(requests))

    async def worker() -> None:
        for _ in todo:
            await src.enc_keys(CALLER, "sc", "sd", per_request, 256)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return requests * per_request / (time.perf_counter() - t0)


async def run_bus(name: str, make_bus, hops_list: list[int], keys: int, seed: int) -> None:  # type: ignore[no-untyped-def]
    print(f"\n== bus: {name}")
    print(f"{'hops':>4} {'latency ms':>11} {'keys/s (1/req, c=64)':>21} "
          f"{'keys/s (32/req, c=8)':>21}")
    lat: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as d:
        for hops in hops_list:
            bus = await make_bus()
            kms, ctl, db = await build(bus, hops, Path(d), seed, link_bytes=keys * 200 + (4 << 20))
            try:
                lat[hops] = await latency(kms, 200)
                single = await throughput(kms, keys, 1, 64)
                batched = await throughput(kms, keys * 4, 32, 8)
            finally:
                await teardown(kms, ctl, db)
                await bus.close()
            print(f"{hops:>4} {lat[hops] * 1e3:>11.3f} {single:>21.0f} {batched:>21.0f}")
    if len(lat) >= 2:
        xs = sorted(lat)
        slope = statistics.linear_regression(xs, [lat[h] for h in xs]).slope
        print(f"latency added per relay hop (least-squares slope): {slope * 1e3:.3f} ms")


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hops", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--keys", type=int, default=4000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--nats", action="store_true", help="also run over a real nats-server")
    args = p.parse_args()
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"parameters: hops={args.hops} keys={args.keys} key_size=256 bits seed={args.seed}")
    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
          f"python={platform.python_version()} {platform.system()}")
    print("store: SQLite file (WAL), group commit; embedded = one asyncio process")

    async def memory() -> Bus:
        return MemoryBus()

    async def memory_fast() -> Bus:
        return MemoryBus(roundtrip=False)

    await run_bus("memory (roundtrip=True: JSON codec per delivery)", memory, args.hops,
                  args.keys, args.seed)
    await run_bus("memory (roundtrip=False)", memory_fast, args.hops, args.keys, args.seed)
    if args.nats:
        from keyplane.bus.nats import NatsBus
        from keyplane.services import NatsServer

        srv = NatsServer.start()
        try:
            async def nats() -> Bus:
                return await NatsBus.connect(srv.url)
            await run_bus("NATS (real nats-server on 127.0.0.1)", nats, args.hops, args.keys,
                          args.seed)
        finally:
            srv.stop()


if __name__ == "__main__":
    asyncio.run(main())
