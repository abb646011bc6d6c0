"""ETSI 014 throughput over HTTPS with mutual TLS: enc_keys + dec_keys pairs per second.

CPU time per pair is measured in both processes (after a warm-up), so the
"pairs/s per server core" column, 1 / (server CPU per pair), does not depend on how busy
the machine is; pairs/s does.

Starts the KM API servers of a three-node line (km0 - km1 - km2) in ONE child process
(uvicorn, mutual TLS, uvloop when installed) and drives them with the async SDK client
over keep-alive connections from this process and ``--clients - 1`` more (2 in all by
default: one Python client spends more CPU per pair than the server, so alone it cannot
keep the server busy, and a server that waits for requests shares no journal commit
between them): the master (sae_a at km0) asks enc_keys, the slave (sae_b at km1 for the
adjacent pair, sae_c at km2 for the 2-hop pair) asks dec_keys for the same key_IDs.
Reports request pairs/s for number=1 and keys/s in bulk, at 100 and at 1,000 keys per
request (the KMs allow 1,024: ``max_keys_per_request``).

Behind the API runs one keyplane KeyManager per node under the real control plane
(bench/_support.py: Access and Admission Control with SLA profiles generous enough not to
limit the bench, Routing, Monitoring, the SDN Controller) on one bus and SQLite store, with
link key stores fed with the same random blocks at both link ends (standing in for the
physical layer: up front, then topped up before each window to what it may spend), so 2-hop
keys really are relayed through km1. Every pair is checked: the slave must get the
master's bytes, or the bench stops.

    python bench/api.py [--seconds 5] [--clients 2] [--concurrency 4] [--blocks 1500]
        [--max-rate 100000] [--profile DIR]

``--profile DIR`` runs cProfile on the server's event-loop thread during each measured
window, timed by that thread's CPU clock (so a loaded machine does not skew it), and
writes ``DIR/server-<pair>-<number>.pstats`` (read with ``python -m pstats``); the CPU of
the server's other threads (the journal's SQLite commits) is printed beside it.

Prints figures; never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from _support import start_net

from keyplane import heap
from keyplane.api.client import AsyncEtsi014Client
from keyplane.certs import Issued, ensure_network_certs
from keyplane.config import Topology, parse_topology

_SLA = "{max_sessions: 1000, max_bps: 1000000000000, idle_timeout_s: 3600}"
API_TOPOLOGY = f"""
version: 1
name: bench-api-line3
nodes: [{{id: km0}}, {{id: km1}}, {{id: km2}}]
links:
  - {{endpoints: [km0, km1], length_km: 5}}
  - {{endpoints: [km1, km2], length_km: 5}}
users:
  - {{id: alice, certificate_subject: "CN=alice,O=bench", sla: {_SLA}}}
  - {{id: bob, certificate_subject: "CN=bob,O=bench", sla: {_SLA}}}
  - {{id: carol, certificate_subject: "CN=carol,O=bench", sla: {_SLA}}}
applications:
  - {{sae_id: sae_a, owner: alice, node: km0}}
  - {{sae_id: sae_b, owner: bob, node: km1}}
  - {{sae_id: sae_c, owner: carol, node: km2}}
"""


def line3() -> Topology:
    """km0 - km1 - km2; sae_a at km0 (master), sae_b at km1 and sae_c at km2 (slaves)."""
    return parse_topology(API_TOPOLOGY)


def _thread_cpu_s() -> dict[str, float]:
    """CPU seconds of each thread of this process so far (Linux /proc; empty elsewhere)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    main_tid = str(threading.main_thread().native_id)
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the thread ended
        name = "loop" if tid == main_tid else "other threads"
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def _serve(pki: str, seed: int, blocks: int, conn: Connection) -> None:
    """Child process: serve km0..km2 until the parent says stop; answer "cpu" queries
    (and, with ``--profile``, "profile" / ("profile-stop", path) around a window)."""
    from keyplane.api.httpserver import HttpLimits
    from keyplane.api.server import serve_km_api
    from keyplane.api.settings import ApiSettings, Etsi014Limits
    from keyplane.bus import MemoryBus
    from keyplane.clock import RealClock
    from keyplane.events import EventStream
    from keyplane.keymanager import KmSettings
    from keyplane.store import Database, sqlite_url

    topo = line3()
    issued = ensure_network_certs(topo, Path(pki))
    # the Monitoring Element imports the physical package on its first link probe (about
    # a second of CPU): import it now, or it lands in whichever measured window it hits
    import keyplane.physical.wire  # noqa: F401

    async def main() -> None:
        # the KMs' defaults: the ETSI 014 key stock on (docs/api/etsi014.md "Key stock")
        settings = KmSettings()
        db = await Database.open(sqlite_url(Path(pki) / "km.db"))
        bus = MemoryBus()
        clock = RealClock()
        net = await start_net(topo, bus, db, clock, EventStream(clock), km_settings=settings,
                              seed=seed, blocks=blocks, block_bytes=16384)
        limits = Etsi014Limits.from_km_settings(settings)
        servers = [await serve_km_api(net.kms[n.id], kme_id=n.id, server_cert=issued.kms[n.id],
                                      ca_file=issued.ca.cert,
                                      settings=ApiSettings.from_topology(topo, n.id,
                                                                         limits=limits),
                                      limits=HttpLimits(keep_alive_s=60,
                                                        header_timeout_s=60))
                   for n in topo.nodes]
        # as a keyplane node process does once started (keyplane.heap.settle, called by
        # runtime.Embedded): what the start built is frozen, so the collector's full
        # collections no longer walk it (without this, about 8 % of the server's CPU in
        # bulk went to generation-2 collections walking ~200,000 start-up objects)
        gc.collect()
        gc.freeze()
        # and collects its youngest generation as seldom as a settled node process does
        # (keyplane.heap.YOUNG_THRESHOLD; a tree without it keeps CPython's default)
        young = getattr(heap, "YOUNG_THRESHOLD", None)
        if young is not None:
            gc.set_threshold(young, *gc.get_threshold()[1:])
        conn.send({s.app.state.kme_id: s.port for s in servers})
        loop = asyncio.get_running_loop()
        profiler: cProfile.Profile | None = None
        while (msg := await loop.run_in_executor(None, conn.recv)) != "stop":
            if isinstance(msg, tuple) and msg[0] == "top-up":  # link key for the next window
                conn.send(await net.top_up(msg[1], block_bytes=16384))
            elif msg == "cpu":  # server CPU s so far, and the journals' commits so far
                journals = {id(km.journal): km.journal for km in net.kms.values()}
                commits = sum(j.commits for j in journals.values())
                conn.send((time.process_time(), {**_thread_cpu_s(), "commits": commits}))
            elif msg == "profile":
                profiler = cProfile.Profile(time.thread_time)  # this thread's CPU clock
                profiler.enable()
            elif profiler is not None:  # ("profile-stop", path)
                profiler.disable()
                profiler.dump_stats(msg[1])
                profiler = None
        for s in servers:
            await s.close()
        await net.close()
        await bus.close()
        await db.close()

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


async def _pair(master: AsyncEtsi014Client, dec: AsyncEtsi014Client, slave: str, number: int,
                size: int) -> None:
    """One enc_keys at the master, then dec_keys of the same key_IDs at the slave."""
    keys = await master.enc_keys(slave, number, size)
    got = await dec.dec_keys("sae_a", [k.key_id for k in keys])
    if [k.key for k in got] != [k.key for k in keys]:
        raise RuntimeError("slave got different key bytes")


async def _drive(master: AsyncEtsi014Client, dec: AsyncEtsi014Client, slave: str,
                 number: int, size: int, concurrency: int, stop_at: float) -> int:
    """``concurrency`` loops of pairs until ``stop_at`` (monotonic clock); the pairs made."""
    pairs = 0

    async def worker() -> None:
        nonlocal pairs
        while time.monotonic() < stop_at:
            await _pair(master, dec, slave, number, size)
            pairs += 1
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return pairs


def _extra_client(issued: Issued, ports: dict[str, int], slave: str, slave_node: str,
                  number: int, size: int, concurrency: int, conn: Connection) -> None:
    """Another client process (``--clients``): warms up, says "ready", gets the window's
    end on the system's monotonic clock, runs until then and sends ``(pairs completed in
    the window, its CPU s in the window)``; ends quietly if the main process went first."""

    async def run() -> tuple[int, float]:
        master = _client(issued, "sae_a", ports["km0"])
        dec = _client(issued, slave, ports[slave_node])
        try:
            await _drive(master, dec, slave, number, size, concurrency,
                         time.monotonic() + 0.5)  # warm-up
            conn.send("ready")
            stop_at = conn.recv()  # the window started when the main process sent it
            cpu0 = time.process_time()
            pairs = await _drive(master, dec, slave, number, size, concurrency, stop_at)
            return pairs, time.process_time() - cpu0
        finally:
            await master.aclose()
            await dec.aclose()

    try:
        conn.send(_arun(run()))
    except (EOFError, BrokenPipeError):
        return  # the main process stopped (it reports why)


def _recv(pipe: Connection, who: str) -> Any:
    """The next message from a child process; its end a clear error, not a hang."""
    try:
        return pipe.recv()
    except EOFError:
        raise RuntimeError(f"the {who} process ended (its traceback is above)") from None


async def _run(issued: Issued, ports: dict[str, int], slave: str, slave_node: str,
               number: int, size: int, seconds: float, concurrency: int, conn: Connection,
               profile: str | None = None, clients: int = 1, max_rate: int = 100_000
               ) -> tuple[int, float, float, float, dict[str, float]]:
    """``(pairs, seconds, server CPU s, client CPU s, server CPU s per thread kind)`` of the
    measured window (after the warm-up, so one-off costs such as TLS handshakes and first
    imports stay out); ``profile``: where the server writes its cProfile of the window;
    ``clients``: client processes (this one and ``clients - 1`` more), ``concurrency``
    pairs in flight in each; ``max_rate``: keys/s the links are topped up for."""
    master = _client(issued, "sae_a", ports["km0"])
    dec = _client(issued, slave, ports[slave_node])
    # link key for the window, per direction of each link: (warm-up + window) x a rate
    # above what the server's one loop serves (``max_rate`` keys/s; 5,000 pairs/s)
    conn.send(("top-up", int((seconds + 1) * min(max_rate, 5_000 * number) * size / 8)))
    _recv(conn, "server")
    ctx = mp.get_context("spawn")
    extra: list[tuple[BaseProcess, Connection]] = []
    try:
        for _ in range(clients - 1):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_extra_client, daemon=True,
                               args=(issued, ports, slave, slave_node, number, size,
                                     concurrency, child))
            proc.start()
            child.close()  # its end closes with the process: recv then raises, not hangs
            extra.append((proc, parent))
        # Warm-up: open the TLS connections, then measure.
        await _drive(master, dec, slave, number, size, concurrency, time.monotonic() + 0.5)
        for _, pipe in extra:  # each extra client warmed up too
            if await asyncio.to_thread(_recv, pipe, "client") != "ready":
                raise RuntimeError("a client process did not start")
        conn.send("cpu")
        (srv0, threads0), cli0 = _recv(conn, "server"), time.process_time()
        if profile:
            conn.send("profile")
        start = time.monotonic()
        stop_at = start + seconds
        for _, pipe in extra:
            pipe.send(stop_at)
        pairs = await _drive(master, dec, slave, number, size, concurrency, stop_at)
        cli = time.process_time() - cli0
        for _, pipe in extra:  # their last pairs end before the server's CPU is read
            n, cpu = await asyncio.to_thread(_recv, pipe, "client")
            pairs, cli = pairs + n, cli + cpu
        dt = time.monotonic() - start
        if profile:
            conn.send(("profile-stop", profile))
        conn.send("cpu")
        srv1, threads1 = _recv(conn, "server")
        threads = {k: v - threads0.get(k, 0.0) for k, v in threads1.items()}
        return pairs, dt, srv1 - srv0, cli, threads
    finally:
        await master.aclose()
        await dec.aclose()
        for helper, pipe in extra:
            pipe.close()  # a client still waiting for its window ends (EOFError)
            helper.join(5)
            if helper.is_alive():
                helper.kill()
                helper.join()


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=4,
                    help="pairs in flight in each client process")
    ap.add_argument("--clients", type=_at_least_one, default=2,
                    help="client processes (one Python client cannot keep the server busy "
                         "at one key per request: its CPU per pair exceeds the server's)")
    ap.add_argument("--max-rate", type=_at_least_one, default=100_000,
                    help="keys/s the links are topped up for before each window (a server "
                         "faster than this runs them dry: 503, keys not relayed in time)")
    ap.add_argument("--size", type=int, default=256, help="key size, bits")
    ap.add_argument("--bulk", type=int, nargs="+", default=[100, 1000],
                    help="numbers of keys per bulk request")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--blocks", type=int, default=1500,
                    help="16 KiB link key blocks fed to each link up front (each window "
                         "then tops the links up to what it may spend)")
    ap.add_argument("--pairs", nargs="+", choices=("adjacent", "2-hop"),
                    default=["adjacent", "2-hop"], help="which master/slave pairs to run")
    ap.add_argument("--numbers", type=int, nargs="+", default=None,
                    help="keys per request to run (default: 1 and --bulk)")
    ap.add_argument("--profile", metavar="DIR", default=None,
                    help="write a cProfile (CPU time) of the server's loop thread per window")
    args = ap.parse_args()
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)

    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.platform()}, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    print(f"parameters: seconds={args.seconds} clients={args.clients} "
          f"concurrency={args.concurrency} "
          f"size={args.size} bulk={','.join(map(str, args.bulk))} seed={args.seed}")

    with tempfile.TemporaryDirectory() as pki:
        issued = ensure_network_certs(line3(), Path(pki))
        parent, child = mp.get_context("spawn").Pipe()
        proc = mp.get_context("spawn").Process(
            target=_serve, args=(pki, args.seed, args.blocks, child))
        proc.start()
        child.close()  # the server's end closes with it: a recv then raises, not hangs
        try:
            ports = _recv(parent, "server")
            print("pair       number   pairs/s    keys/s   server CPU/pair  client CPU/pair  "
                  "pairs/s per server core  keys/s per server core  load")
            for label, slave, node in (("adjacent", "sae_b", "km1"),
                                       ("2-hop", "sae_c", "km2")):
                if label not in args.pairs:
                    continue
                for number in args.numbers or (1, *args.bulk):
                    profile = (str(Path(args.profile).resolve() / f"server-{label}-{number}"
                                   ".pstats") if args.profile else None)
                    pairs, dt, srv_s, cli_s, threads = _arun(_run(
                        issued, ports, slave, node, number, args.size, args.seconds,
                        args.concurrency, parent, profile, args.clients, args.max_rate))
                    srv_ms = srv_s * 1000 / pairs
                    cli_ms = cli_s * 1000 / pairs
                    print(f"{label:8s} {number:8d} {pairs / dt:9.0f} {pairs * number / dt:9.0f} "
                          f"{srv_ms:13.2f} ms {cli_ms:13.2f} ms {1000 / srv_ms:14.0f} "
                          f"{1000 * number / srv_ms:23.0f} {os.getloadavg()[0]:5.1f}")
                    commits = threads.pop("commits", 0.0)
                    if threads:
                        print("         server CPU/pair by thread: " + ", ".join(
                            f"{name} {v * 1000 / pairs:.2f} ms"
                            for name, v in sorted(threads.items()))
                            + f"; journal commits/pair {commits / pairs:.2f}")
        finally:
            with contextlib.suppress(OSError):  # BrokenPipeError: the server is gone
                parent.send("stop")
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()


if __name__ == "__main__":
    main()
