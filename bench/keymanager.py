"""Key manager benchmark: latency added per relay hop and end-to-end 256-bit keys/s.

Runs real KeyManagers (one per node of a line km0 - ... - km<h>) under the real control plane
(Access Control, Admission Control, Routing, Monitoring, SDN Controller; bench/_support.py)
on one bus and one SQLite store, with link key stores fed directly (standing in for the
physical layer). Keys are ETSI 014 enc_keys of 256 bits from km0's master SAE to the last
node's slave SAE; every key is relayed hop by hop, confirmed, and persisted before it is
returned.

    python bench/keymanager.py [--hops 1 2 3 4] [--keys 4000] [--nats]

Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from _support import CALLER_A, CALLER_B, BenchNet, line_topology, machine_line, start_net

from keyplane.bus import Bus, MemoryBus
from keyplane.clock import RealClock
from keyplane.events import EventStream
from keyplane.keymanager import KeyManager, KmSettings
from keyplane.keymanager.interface import DeliveredKey
from keyplane.store import Database, sqlite_url

CALLER = CALLER_A
SETTINGS = KmSettings(link_reserve_bytes=65_536, max_concurrent_exchanges=256,
                      keystore_low_water_bits=0, relay_confirm_timeout_s=30.0)
BLOCK_BYTES = 1 << 14  # 16 KiB blocks, about what one privacy-amplified QKD block yields


async def build(bus: Bus, hops: int, tmp: Path, seed: int, link_bytes: int
                ) -> tuple[list[KeyManager], BenchNet, Database]:
    topo = line_topology(hops + 1)
    db = await Database.open(sqlite_url(tmp / f"bench-{hops}-{seed}.db"))
    clock = RealClock()
    net = await start_net(topo, bus, db, clock, EventStream(clock), km_settings=SETTINGS,
                          seed=seed, blocks=max(1, link_bytes // BLOCK_BYTES),
                          block_bytes=BLOCK_BYTES)
    return [net.km(i) for i in range(hops + 1)], net, db


async def teardown(kms: list[KeyManager], net: BenchNet, db: Database) -> None:
    await net.close()
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
                     concurrency: int) -> tuple[float, int]:
    """256-bit keys per second with ``concurrency`` callers of enc_keys(per_request).

    Returns the rate and how many of the keys the slave then fetched (dec_keys, untimed)
    with the same bytes: only those count as delivered.
    """
    src = kms[0]
    await src.enc_keys(CALLER, "sc", "sd", 1, 256)
    requests = max(1, total_keys // per_request)
    todo = iter(range(requests))
    made: list[DeliveredKey] = []

    async def worker() -> None:
        for _ in todo:
            made.extend(await src.enc_keys(CALLER, "sc", "sd", per_request, 256))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    rate = requests * per_request / (time.perf_counter() - t0)
    return rate, await verified(kms[-1], made)


async def verified(dst: KeyManager, made: list[DeliveredKey]) -> int:
    """How many of ``made`` the slave SAE gets from the destination KM with equal bytes."""
    same = 0
    for i in range(0, len(made), 128):
        chunk = made[i:i + 128]
        got = await dst.dec_keys(CALLER_B, "sd", "sc", [k.key_id for k in chunk])
        by_id = {k.key_id: k.key for k in got}
        same += sum(1 for k in chunk if by_id.get(k.key_id) == k.key)
    return same


async def run_bus(name: str, make_bus, hops_list: list[int], keys: int, seed: int) -> None:  # type: ignore[no-untyped-def]
    print(f"\n== bus: {name}")
    print(f"{'hops':>4} {'latency ms':>11} {'keys/s (1/req, c=64)':>21} "
          f"{'keys/s (32/req, c=8)':>21} {'fetched by slave, same bytes':>29}")
    lat: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as d:
        for hops in hops_list:
            bus = await make_bus()
            kms, net, db = await build(bus, hops, Path(d), seed, link_bytes=keys * 200 + (4 << 20))
            try:
                lat[hops] = await latency(kms, 200)
                single, single_ok = await throughput(kms, keys, 1, 64)
                batched, batched_ok = await throughput(kms, keys * 4, 32, 8)
            finally:
                await teardown(kms, net, db)
                await bus.close()
            made = keys + (keys * 4 // 32) * 32
            print(f"{hops:>4} {lat[hops] * 1e3:>11.3f} {single:>21.0f} {batched:>21.0f} "
                  f"{single_ok + batched_ok:>19} of {made}")
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
    print(machine_line())
    print(f"parameters: hops={args.hops} keys={args.keys} key_size=256 bits seed={args.seed}")
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
