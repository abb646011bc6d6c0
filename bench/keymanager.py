"""Key manager benchmark: latency added per relay hop and end-to-end 256-bit keys/s.

Runs real KeyManagers (one per node of a line km0 - ... - km<h>) under the real control plane
(Access Control, Admission Control, Routing, Monitoring, SDN Controller; bench/_support.py)
on one bus and one SQLite store, with link key stores fed directly (standing in for the
physical layer). Keys are ETSI 014 enc_keys of 256 bits from km0's master SAE to the last
node's slave SAE; every key is relayed hop by hop, confirmed, and persisted before it is
returned.

    python bench/keymanager.py [--hops 1 2 3 4] [--keys 4000] [--nats]

``--nats`` also runs over a real nats-server, twice in the same run: plain (no TLS, no
signatures: ``--danger-insecure-bus``) and secured as ``keyplane nats-config`` configures it
(TLS with each element's client certificate, per-element permissions, Ed25519-signed
state-changing messages), each KM and the control plane on its own connection. The difference
between the two is the cost of bus security.

Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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
# the relay itself is measured: no ETSI 014 key stock (#15), which would serve a busy
# pair's one-key requests with keys relayed ahead (bench/api.py measures it on)
SETTINGS = KmSettings(link_reserve_bytes=65_536, max_concurrent_exchanges=256,
                      keystore_low_water_bits=0, relay_confirm_timeout_s=30.0,
                      etsi014_stock_keys=0)
BLOCK_BYTES = 1 << 14  # 16 KiB blocks, about what one privacy-amplified QKD block yields
LAST_CPU_PER_KEY_S = [0.0]
"""CPU seconds of this process (every KM and the control plane run in it) per key, of the
last throughput run: steadier than wall-clock figures on a shared machine."""


async def build(bus: Bus, hops: int, tmp: Path, seed: int, link_bytes: int,
                km_buses: dict[str, Bus] | None = None
                ) -> tuple[list[KeyManager], BenchNet, Database]:
    # the Monitoring Element imports the physical package on its first link probe (about
    # a second of CPU): import it now, or it lands in whichever measured run it hits
    import keyplane.physical.wire  # noqa: F401

    topo = line_topology(hops + 1)
    db = await Database.open(sqlite_url(tmp / f"bench-{hops}-{seed}.db"))
    clock = RealClock()
    net = await start_net(topo, bus, db, clock, EventStream(clock), km_settings=SETTINGS,
                          seed=seed, blocks=max(1, link_bytes // BLOCK_BYTES),
                          block_bytes=BLOCK_BYTES, km_buses=km_buses)
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

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    rate = requests * per_request / (time.perf_counter() - t0)
    LAST_CPU_PER_KEY_S[0] = (time.process_time() - c0) / (requests * per_request)
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


class Buses:
    """How one run connects: one shared bus, or one per element on its own server."""

    async def open(self, hops: int, tmp: Path) -> tuple[Bus, dict[str, Bus] | None]:
        """The control plane's bus and the KMs' (None: they share the control plane's)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Close what :meth:`open` made."""


class Shared(Buses):
    def __init__(self, make) -> None:  # type: ignore[no-untyped-def]
        self._make = make
        self._bus: Bus | None = None

    async def open(self, hops: int, tmp: Path) -> tuple[Bus, dict[str, Bus] | None]:
        self._bus = await self._make()
        return self._bus, None

    async def close(self) -> None:
        if self._bus is not None:
            await self._bus.close()


class OverNats(Buses):
    """A nats-server per network size; every element on its own connection."""

    def __init__(self, secured: bool) -> None:
        self.secured = secured
        self._srv = None
        self._buses: list[Bus] = []

    async def open(self, hops: int, tmp: Path) -> tuple[Bus, dict[str, Bus] | None]:
        from keyplane.bus import BusCredentials, BusSecurity
        from keyplane.bus.nats import NatsBus
        from keyplane.certs import CONTROLLER_ID
        from keyplane.services import NatsServer

        topo = line_topology(hops + 1)
        certs = tmp / f"certs-{hops}"
        if self.secured:
            self._srv = NatsServer.start_secured(topo, certs, config_path=tmp / f"n{hops}.conf")
        else:
            self._srv = NatsServer.start()

        def security(role: str, element: str) -> BusSecurity:
            if not self.secured:
                return BusSecurity(tls=None)  # the plain bus, as --danger-insecure-bus
            return BusSecurity.load(BusCredentials.for_element(certs, role, element))

        ctl = await NatsBus.connect(self._srv.url, name="bench-control",
                                    security=security("control", CONTROLLER_ID))
        self._buses = [ctl]
        kms: dict[str, Bus] = {}
        for node in topo.nodes:
            kms[node.id] = await NatsBus.connect(self._srv.url, name=f"bench-{node.id}",
                                                 security=security("km", node.id))
            self._buses.append(kms[node.id])
        return ctl, kms

    async def close(self) -> None:
        for bus in self._buses:
            await bus.close()
        if self._srv is not None:
            self._srv.stop()


async def run_bus(name: str, buses: Buses, hops_list: list[int], keys: int, seed: int
                  ) -> dict[str, float]:
    print(f"\n== bus: {name}")
    print(f"{'hops':>4} {'latency ms':>11} {'keys/s (1/req, c=64)':>21} {'CPU us/key':>10} "
          f"{'keys/s (32/req, c=8)':>21} {'CPU us/key':>10} {'fetched by slave, same bytes':>29}"
          f" {'load':>5}")
    lat: dict[int, float] = {}
    rates: dict[int, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as d:
        for hops in hops_list:
            bus, km_buses = await buses.open(hops, Path(d))
            try:
                kms, net, db = await build(bus, hops, Path(d), seed,
                                           link_bytes=keys * 200 + (4 << 20), km_buses=km_buses)
                try:
                    lat[hops] = await latency(kms, 200)
                    single, single_ok = await throughput(kms, keys, 1, 64)
                    single_cpu = LAST_CPU_PER_KEY_S[0]
                    batched, batched_ok = await throughput(kms, keys * 4, 32, 8)
                    batched_cpu = LAST_CPU_PER_KEY_S[0]
                finally:
                    await teardown(kms, net, db)
            finally:
                await buses.close()
            rates[hops] = (single, batched)
            made = keys + (keys * 4 // 32) * 32
            print(f"{hops:>4} {lat[hops] * 1e3:>11.3f} {single:>21.0f} {single_cpu * 1e6:>10.0f} "
                  f"{batched:>21.0f} {batched_cpu * 1e6:>10.0f} "
                  f"{single_ok + batched_ok:>19} of {made} {os.getloadavg()[0]:>5.1f}")
    out: dict[str, float] = {}
    if len(lat) >= 2:
        xs = sorted(lat)
        slope = statistics.linear_regression(xs, [lat[h] for h in xs]).slope
        print(f"latency added per relay hop (least-squares slope): {slope * 1e3:.3f} ms")
        out["per_hop_ms"] = slope * 1e3
    if 2 in rates:
        out["keys_s_2hops_single"], out["keys_s_2hops_batched"] = rates[2]
    return out


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hops", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--keys", type=int, default=4000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--nats", action="store_true",
                   help="also compare plain and secured NATS (real nats-server)")
    p.add_argument("--rounds", type=int, default=3,
                   help="--nats: interleaved rounds of plain and secured")
    p.add_argument("--no-memory", action="store_true", help="skip the in-memory bus runs")
    args = p.parse_args()
    print(machine_line())
    print(f"parameters: hops={args.hops} keys={args.keys} key_size=256 bits seed={args.seed}")
    print("store: SQLite file (WAL), group commit; embedded = one asyncio process")

    async def memory() -> Bus:
        return MemoryBus()

    async def memory_fast() -> Bus:
        return MemoryBus(roundtrip=False)

    if not args.no_memory:
        await run_bus("memory (roundtrip=True: JSON codec per delivery)", Shared(memory),
                      args.hops, args.keys, args.seed)
        await run_bus("memory (roundtrip=False)", Shared(memory_fast), args.hops, args.keys,
                      args.seed)
    if args.nats:
        await compare_security(args.hops, args.keys, args.seed, args.rounds)


async def measure(buses: Buses, hops: int, keys: int, seed: int, tmp: Path
                  ) -> dict[str, float]:
    """One network of ``hops`` hops: median latency, keys/s (1/req c=64) and its CPU per key."""
    bus, km_buses = await buses.open(hops, tmp)
    try:
        kms, net, db = await build(bus, hops, tmp, seed, link_bytes=keys * 200 + (4 << 20),
                                   km_buses=km_buses)
        try:
            lat = await latency(kms, 200)
            rate, ok = await throughput(kms, keys, 1, 64)
            cpu = LAST_CPU_PER_KEY_S[0]
        finally:
            await teardown(kms, net, db)
    finally:
        await buses.close()
    if ok != keys:
        raise RuntimeError(f"the slave fetched {ok} of {keys} keys with the same bytes")
    return {"latency_ms": lat * 1e3, "keys_s": rate, "cpu_us_per_key": cpu * 1e6}


async def compare_security(hops_list: list[int], keys: int, seed: int, rounds: int) -> None:
    """Plain and secured NATS, interleaved round by round (a shared machine's load drifts):
    relay latency per hop, keys/s over 2 hops and this process's CPU per key; medians."""
    print(f"\n== cost of bus security over NATS: plain (no TLS, no signatures) vs secured "
          f"(TLS + client certificates + permissions + Ed25519 signatures), each element on "
          f"its own connection; {rounds} interleaved rounds, medians")
    hops_list = sorted(set(hops_list) | {2})
    got: dict[tuple[str, int], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as d:
        for r in range(rounds):
            for mode in ("plain", "secured"):
                for hops in hops_list:
                    tmp = Path(d) / f"{mode}-{r}-{hops}"
                    tmp.mkdir()
                    m = await measure(OverNats(secured=mode == "secured"), hops, keys,
                                      seed + r, tmp)
                    got.setdefault((mode, hops), []).append(m)
                    print(f"  round {r + 1} {mode:<7} {hops} hops: latency "
                          f"{m['latency_ms']:7.3f} ms, {m['keys_s']:7.0f} keys/s (1/req, c=64),"
                          f" {m['cpu_us_per_key']:6.0f} us CPU/key", flush=True)

    def med(mode: str, hops: int, key: str) -> float:
        return statistics.median(x[key] for x in got[(mode, hops)])

    print(f"\n{'':>34} {'plain':>10} {'secured':>10} {'change':>9}")
    def per_hop(mode: str) -> float:
        return statistics.linear_regression(
            hops_list, [med(mode, h, "latency_ms") for h in hops_list]).slope

    rows = [("relay latency per hop, ms", per_hop("plain"), per_hop("secured"))]
    for key, label in (("latency_ms", "latency over 2 hops, ms"),
                       ("keys_s", "keys/s over 2 hops (1/req, c=64)"),
                       ("cpu_us_per_key", "CPU per key over 2 hops, us")):
        rows.append((label, med("plain", 2, key), med("secured", 2, key)))
    for label, a, b in rows:
        print(f"{label:>34} {a:>10.3f} {b:>10.3f} {(b / a - 1) * 100:>+8.1f}%")
    envelope_cost()


def envelope_cost(n: int = 2000) -> None:
    """CPU per relay KeyFrame in the envelope layer: plain encode/decode vs seal/open."""
    from keyplane.bus.auth import MessageAuth, Signer, TrustStore, topic_binding
    from keyplane.bus.codec import decode, encode
    from keyplane.certs import ensure_network_certs, signing_paths
    from keyplane.keymanager.wire import KeyFrame

    with tempfile.TemporaryDirectory() as d:
        certs = Path(d) / "certs"
        ensure_network_certs(line_topology(2), certs)
        p = signing_paths(certs, "km", "km0")
        auth = MessageAuth(Signer.load(p.cert, p.key), TrustStore(certs / "ca.pem", certs))
    frame = KeyFrame(session_id="0" * 36, epoch=0, sender="km0", link_id="km0-km1",
                     segments=[(1, 0, 64)], batch_id="1" * 36, key_ids=["2" * 36],
                     indexes=[0], key_size_bytes=32, ciphertext="A" * 44, tag="f" * 64)
    binding = topic_binding("keyplane.km.km1.relay")
    plain, sealed = encode(frame), auth.seal(frame, binding)

    def cpu_us(fn) -> float:  # type: ignore[no-untyped-def]
        t = time.process_time()
        for _ in range(n):
            fn()
        return (time.process_time() - t) / n * 1e6

    print(f"envelope of one KeyFrame, CPU: encode {cpu_us(lambda: encode(frame)):.1f} us -> "
          f"seal (Ed25519 sign) {cpu_us(lambda: auth.seal(frame, binding)):.1f} us; decode "
          f"{cpu_us(lambda: decode(plain)):.1f} us -> open (verify) "
          f"{cpu_us(lambda: auth.open(sealed, binding)):.1f} us")


if __name__ == "__main__":
    asyncio.run(main())
