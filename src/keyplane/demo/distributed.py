"""``keyplane demo --distributed``: every element in its own process over NATS and PostgreSQL.

What runs:

* a real ``nats-server`` and a real PostgreSQL cluster (started here on free loopback ports
  unless URLs are given; without PostgreSQL's server binaries the demo says so and falls
  back to a shared SQLite file);
* ``keyplane controller`` (the five control-plane elements) and one ``keyplane node --id``
  process per node, each KM serving ETSI 014/004 and its ETSI 015 agent on its own port with
  mutual TLS, each link's two QKD modules in the two nodes' processes talking over NATS;
* the sample SAE applications: for each pair, two ETSI 004 clients over HTTPS with their own
  client certificates, which open the same stream and compare the keys they get.

Optionally a KM process is killed (SIGKILL) mid-run and restarted: its persisted link key
stores and sessions let it carry on without losing or re-delivering a key, and its restarted
QKD modules draw fresh randomness (the run seed is salted per start), so no link ever distils
the same key twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from keyplane.api.client import (
    AsyncEtsi004Client,
    ClientError,
    Etsi004StatusError,
    TransportError,
)
from keyplane.api.etsi004.models import QosParameters
from keyplane.certs import ensure_network_certs
from keyplane.demo.run import DemoOptions, default_pairs, summarize
from keyplane.demo.scenario import PairResult, run_pair
from keyplane.demo.timeline import render_timeline
from keyplane.errors import InsufficientKeyMaterial, KeyNotFound, KeyplaneError
from keyplane.events import Event, read_jsonl
from keyplane.fileperms import ensure_private_dir, open_private, write_private
from keyplane.messages import Qos
from keyplane.services import NatsServer, PostgresServer

__all__ = ["DistributedOptions", "SdkEndpoint", "run_distributed_demo"]


@dataclass
class DistributedOptions:
    """Extra knobs of the distributed demo."""

    nats_url: str | None = None
    db_url: str | None = None
    kill_km: str | None = None
    kill_after_s: float = 2.0
    restart_after_s: float = 1.0
    startup_timeout_s: float = 90.0


class SdkEndpoint:
    """A :class:`~keyplane.demo.scenario.StreamEndpoint` over ETSI 004 HTTPS (mutual TLS)."""

    def __init__(self, state: Path, sae_id: str) -> None:
        self.sae_id = sae_id
        self._state = state
        self.client = AsyncEtsi004Client.from_state(state, sae_id)

    async def _reresolve(self) -> None:
        """A KM restarted listens on a new port: read endpoints.json again (the controller
        rewrites it when the node re-announces itself)."""
        await self.client.aclose()
        self.client = AsyncEtsi004Client.from_state(self._state, self.sae_id)

    async def open(self, destination: str, qos: Qos, key_stream_id: str) -> str:
        try:
            res = await self.client.open_connect(self.sae_id, destination,
                                                 QosParameters.from_domain(qos), key_stream_id)
        except ClientError as exc:
            raise KeyplaneError(f"{self.sae_id} OPEN_CONNECT: {exc}") from exc
        return res.key_stream_id

    async def get_key(self, key_stream_id: str, index: int) -> tuple[bytes, dict[str, Any]]:
        try:
            chunk = await self.client.get_key(key_stream_id, index)
        except Etsi004StatusError as exc:
            if int(exc.status) in (2, 4, 6):  # insufficient key, no QKD connection, timeout
                raise InsufficientKeyMaterial(str(exc)) from exc
            if int(exc.status) == 9:  # this index (or the stream) is gone at this KM
                raise KeyNotFound(f"{self.sae_id} GET_KEY: {exc}") from exc
            raise KeyplaneError(f"{self.sae_id} GET_KEY: {exc}") from exc
        except TransportError as exc:  # a KM restarting: find it again, retry like status 2
            await self._reresolve()
            raise InsufficientKeyMaterial(f"{self.sae_id} GET_KEY: {exc}") from exc
        except ClientError as exc:
            raise KeyplaneError(f"{self.sae_id} GET_KEY: {exc}") from exc
        return chunk.key, dict(chunk.metadata or {})

    async def close(self, key_stream_id: str) -> None:
        try:
            await self.client.close_stream(key_stream_id)
        except ClientError as exc:
            raise KeyplaneError(f"{self.sae_id} CLOSE: {exc}") from exc
        finally:
            await self.client.aclose()


def _spawn(args: list[str], log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "keyplane", *args], stdout=subprocess.PIPE,
                            stderr=open_private(log, "w"), text=True)


async def _wait_ready(proc: subprocess.Popen[str], ready: str, timeout_s: float) -> None:
    assert proc.stdout is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        line = await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline),
                                      deadline - loop.time())
        if ready in line:
            return
        if not line and proc.poll() is not None:
            raise KeyplaneError(f"process exited with {proc.returncode} before '{ready}'")
    raise KeyplaneError(f"no '{ready}' after {timeout_s} s")


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout_s: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)


async def run_distributed_demo(opts: DemoOptions, dist: DistributedOptions,
                               console: Console | None = None) -> dict[str, Any]:
    """Run the scenario with one process per element; write the outputs; return the summary."""
    console = console or Console()
    out = opts.out
    ensure_private_dir(out)
    state = out / "state"
    shutil.rmtree(state, ignore_errors=True)
    ensure_private_dir(state)
    topo = opts.topology
    topo_file = out / "topology.yaml"
    write_private(topo_file, yaml.safe_dump(topo.model_dump(mode="json")))
    ensure_network_certs(topo, state / "certs")
    nats: NatsServer | None = None
    pg: PostgresServer | None = None
    procs: dict[str, subprocess.Popen[str]] = {}
    results = [PairResult(p) for p in (opts.pairs or default_pairs(topo))]
    try:
        bus_url = dist.nats_url
        if bus_url is None:
            nats = NatsServer.start()
            bus_url = nats.url
        db_url = dist.db_url
        if db_url is None:
            try:
                pg = PostgresServer.start()
                db_url = pg.create_database("keyplane")
            except (FileNotFoundError, subprocess.SubprocessError) as exc:
                console.print(f"PostgreSQL unavailable ({exc}); using a shared SQLite file")
                db_url = f"sqlite:///{state / 'keyplane.db'}"
        console.print(f"bus {bus_url}  database {db_url.split('@')[-1]}")
        common = ["-t", str(topo_file), "--bus", bus_url, "--db", db_url, "-s", str(state)]
        procs["controller"] = _spawn(["controller", *common], state / "controller.log")
        await _wait_ready(procs["controller"], "controller ready", dist.startup_timeout_s)
        for node in topo.nodes:
            procs[node.id] = _spawn(["node", "--id", node.id, *common],
                                    state / f"node-{node.id}.log")
        await asyncio.gather(*(_wait_ready(procs[n.id], f"node {n.id} ready",
                                           dist.startup_timeout_s) for n in topo.nodes))
        endpoints = json.loads((state / "endpoints.json").read_text())
        missing = {n.id for n in topo.nodes} - set(endpoints["kms"])
        if missing:
            raise KeyplaneError(f"nodes never registered: {sorted(missing)}")
        console.print(f"{len(topo.nodes)} node processes and the controller are up")
        t0 = time.monotonic()

        async def chaos() -> None:
            if dist.kill_km is None:
                return
            await asyncio.sleep(dist.kill_after_s)
            console.print(f"killing {dist.kill_km} (SIGKILL)")
            _stop(procs[dist.kill_km], signal.SIGKILL)
            await asyncio.sleep(dist.restart_after_s)
            procs[dist.kill_km] = _spawn(["node", "--id", dist.kill_km, *common],
                                         state / f"node-{dist.kill_km}-restarted.log")
            await _wait_ready(procs[dist.kill_km], f"node {dist.kill_km} ready",
                              dist.startup_timeout_s)
            console.print(f"{dist.kill_km} restarted")

        chaos_task = asyncio.create_task(chaos())
        await asyncio.gather(*(
            run_pair(r.pair, SdkEndpoint(state, r.pair.a), SdkEndpoint(state, r.pair.b),
                     keys=opts.keys, chunk_bytes=opts.chunk_bytes, interval_s=opts.interval_s,
                     timeout_s=opts.timeout_s, result=r, t0=t0)
            for r in results))
        await chaos_task
        await asyncio.sleep(0.5)  # let the closes reach every KM on the paths
    finally:
        for name, proc in reversed(list(procs.items())):
            with contextlib.suppress(Exception):
                _stop(proc)
            if proc.stdout is not None:
                proc.stdout.close()
            del name
        if nats is not None:
            nats.stop()
        if pg is not None:
            pg.stop()
    events: list[Event] = []
    for f in sorted(state.glob("events-*.jsonl")):
        events.extend(read_jsonl(f))
    events.sort(key=lambda e: (e.t, e.event_id))
    with open_private(out / "events.jsonl", "w", encoding="utf-8") as fh:
        for e in events:
            fh.write(e.model_dump_json() + "\n")
    summary = summarize(topo, results, events, seed=opts.seed, mode="distributed")
    summary["mode"] = "distributed"
    write_private(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    render_timeline(events, out, title="keyplane distributed event timeline (paper Fig. 4)")
    return summary
