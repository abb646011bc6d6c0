"""ETSI 014 throughput over HTTPS with mutual TLS: enc_keys + dec_keys pairs per second.

CPU time per pair is measured in both processes (the warm-up included), so the
"pairs/s per server core" column, 1 / (server CPU per pair), does not depend on how busy
the machine is; pairs/s does.

Starts the KM API servers of a three-node line (km0 - km1 - km2) in ONE child process
(uvicorn, mutual TLS, uvloop when installed) and drives them from this process with the
async SDK client over keep-alive connections: the master (sae_a at km0) asks enc_keys, the
slave (sae_b at km1 for the adjacent pair, sae_c at km2 for the 2-hop pair) asks dec_keys
for the same key_IDs. Reports request pairs/s for number=1 and keys/s for number=100.

Key manager behind the API: ``--km real`` (default) runs one keyplane KeyManager per node
on one bus and SQLite store, with the test-support control plane (tests/support/
fake_control.py: accepts every identity, configures shortest paths, unbounded token
bucket) and link key stores fed up front with the same random blocks at both link ends
(standing in for the physical layer), so 2-hop keys really are relayed through km1.
``--km fake`` uses the API test double (tests/support/fake_km.py): the cost of the API
layer alone (TLS, HTTP, JSON, the SDK).

    PYTHONPATH=src:. python bench/api.py [--km real|fake] [--seconds 5] [--concurrency 4]

Prints figures; never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.support.topologies import line3  # noqa: E402

from keyplane.api.client import AsyncEtsi014Client  # noqa: E402
from keyplane.certs import Issued, ensure_network_certs  # noqa: E402


def _serve(pki: str, seed: int, km_kind: str, blocks: int, conn: Any) -> None:
    """Child process: serve km0..km2 until the parent says stop; answer "cpu" queries."""
    from keyplane.api.httpserver import HttpLimits
    from keyplane.api.server import serve_km_api
    from keyplane.api.settings import ApiSettings, Etsi014Limits

    topo = line3()
    issued = ensure_network_certs(topo, Path(pki))

    async def main() -> None:
        closers: list[Any] = []
        limits = Etsi014Limits()
        if km_kind == "real":
            from tests.support.km_net import start_net

            from keyplane.bus import MemoryBus
            from keyplane.clock import RealClock
            from keyplane.store import Database, sqlite_url

            db = await Database.open(sqlite_url(Path(pki) / "km.db"))
            net = await start_net(topo, MemoryBus(), db, RealClock(), seed=seed,
                                  blocks=blocks, block_bytes=16384)
            kms: dict[str, Any] = dict(net.kms)
            limits = Etsi014Limits.from_km_settings(net.settings)
            closers += [net.close, net.bus.close, db.close]
        else:
            from tests.support.fake_km import FakeKeyNetwork

            network = FakeKeyNetwork(topo, seed=seed, pool_bits=1 << 62)
            kms = {n.id: network.km(n.id) for n in topo.nodes}
        servers = [await serve_km_api(kms[n.id], kme_id=n.id, server_cert=issued.kms[n.id],
                                      ca_file=issued.ca.cert,
                                      settings=ApiSettings.from_topology(topo, n.id,
                                                                         limits=limits),
                                      limits=HttpLimits(keep_alive_s=60,
                                                        header_timeout_s=60))
                   for n in topo.nodes]
        conn.send({s.app.state.kme_id: s.port for s in servers})
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, conn.recv) == "cpu":
            conn.send(time.process_time())  # server CPU seconds so far
        for s in servers:
            await s.close()
        for close in closers:
            await close()

    _arun(main())


def _arun(coro: Any) -> Any:
    """Run ``coro`` on uvloop when installed (its TLS is faster than asyncio's)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _client(issued: Issued, sae: str, port: int) -> AsyncEtsi014Client:
    c = issued.saes[sae]
    # httpx keeps up to 20 idle connections per client: one keep-alive connection per worker.
    return AsyncEtsi014Client(f"https://127.0.0.1:{port}", cert=c.cert, key=c.key,
                              ca=issued.ca.cert, timeout_s=30.0)


async def _run(issued: Issued, ports: dict[str, int], slave: str, slave_node: str,
               number: int, size: int, seconds: float, concurrency: int) -> tuple[int, float]:
    master = _client(issued, "sae_a", ports["km0"])
    dec = _client(issued, slave, ports[slave_node])
    pairs = 0
    stop_at = 0.0

    async def worker() -> None:
        nonlocal pairs
        while time.perf_counter() < stop_at:
            keys = await master.enc_keys(slave, number, size)
            got = await dec.dec_keys("sae_a", [k.key_id for k in keys])
            if [k.key for k in got] != [k.key for k in keys]:
                raise RuntimeError("slave got different key bytes")
            pairs += 1

    try:
        # Warm-up: open the TLS connections, then measure.
        stop_at = time.perf_counter() + 0.5
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        pairs = 0
        start = time.perf_counter()
        stop_at = start + seconds
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return pairs, time.perf_counter() - start
    finally:
        await master.aclose()
        await dec.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--size", type=int, default=256, help="key size, bits")
    ap.add_argument("--bulk", type=int, default=100, help="number of keys per bulk request")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--km", choices=["fake", "real"], default="real",
                    help="real: keyplane.keymanager.KeyManager per node with the test-support "
                         "control plane and fed link key stores; fake: the API test double")
    ap.add_argument("--blocks", type=int, default=600,
                    help="16 KiB link key blocks fed to each link (--km real)")
    args = ap.parse_args()

    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.platform()}, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    print(f"parameters: seconds={args.seconds} concurrency={args.concurrency} "
          f"size={args.size} bulk={args.bulk} seed={args.seed} km={args.km}")

    with tempfile.TemporaryDirectory() as pki:
        issued = ensure_network_certs(line3(), Path(pki))
        parent, child = mp.get_context("spawn").Pipe()
        proc = mp.get_context("spawn").Process(
            target=_serve, args=(pki, args.seed, args.km, args.blocks, child))
        proc.start()
        try:
            ports = parent.recv()
            print("pair       number   pairs/s    keys/s   server CPU/pair  client CPU/pair  "
                  "pairs/s per server core")
            for label, slave, node in (("adjacent", "sae_b", "km1"),
                                       ("2-hop", "sae_c", "km2")):
                for number in (1, args.bulk):
                    parent.send("cpu")
                    srv0, cli0 = parent.recv(), time.process_time()
                    pairs, dt = _arun(_run(issued, ports, slave, node, number,
                                           args.size, args.seconds, args.concurrency))
                    parent.send("cpu")
                    srv_ms = (parent.recv() - srv0) * 1000 / pairs
                    cli_ms = (time.process_time() - cli0) * 1000 / pairs
                    print(f"{label:8s} {number:8d} {pairs / dt:9.0f} {pairs * number / dt:9.0f} "
                          f"{srv_ms:13.2f} ms {cli_ms:13.2f} ms {1000 / srv_ms:14.0f}")
        finally:
            parent.send("stop")
            proc.join(30)


if __name__ == "__main__":
    main()
