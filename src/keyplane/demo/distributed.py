"""``keyplane demo --distributed``: every element in its own process over NATS and PostgreSQL.

What runs:

* a real ``nats-server`` and a real PostgreSQL cluster (started here on free loopback ports
  unless URLs are given; without PostgreSQL's server binaries the demo says so and falls
  back to a shared SQLite file). The nats-server is the secured one ``keyplane nats-config``
  configures: TLS, each process's client certificate, per-element permissions, signed
  state-changing messages (``danger_insecure_bus`` runs a plain one instead);
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
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from keyplane.api.client import (
    AsyncEtsi004Client,
    ClientError,
    Etsi004StatusError,
    TransportError,
)
from keyplane.api.etsi004.models import QosParameters
from keyplane.bus import BusCredentials, BusSecurity, Message, topics
from keyplane.bus.nats import NatsBus
from keyplane.certs import OPERATOR_ID, ensure_network_certs
from keyplane.demo.run import DemoOptions, default_pairs, summarize
from keyplane.demo.scenario import RETRY_STATUSES, PairResult, run_pair
from keyplane.demo.timeline import render_timeline
from keyplane.errors import InsufficientKeyMaterial, KeyplaneError, PeerNotConnected, QosNotMet
from keyplane.events import Event, EventMessage, EventType, read_jsonl
from keyplane.fileperms import ensure_private_dir, open_private, write_private
from keyplane.lifecycle import stop_subprocess
from keyplane.messages import Qos
from keyplane.progress import NoProgress, file_size, process_cpu_s, wait_progressing
from keyplane.services import NatsServer, PostgresServer

__all__ = ["DistributedOptions", "SdkEndpoint", "run_distributed_demo"]

PositiveS = Annotated[float, Field(gt=0.0)]


class DistributedOptions(BaseModel):
    """Extra knobs of the distributed demo (waits in real seconds, sized for a loaded
    2-core machine; ``KEYPLANE_DEMO_<FIELD>`` environment variables override them through
    :meth:`from_env`)."""

    model_config = ConfigDict(extra="forbid")

    nats_url: str | None = None
    db_url: str | None = None
    kill_km: str | None = None
    kill_after_s: Annotated[float, Field(ge=0.0)] = 2.0
    restart_after_s: Annotated[float, Field(ge=0.0)] = 1.0
    danger_insecure_bus: bool = False
    """Run a plain nats-server and the processes with ``--danger-insecure-bus``."""
    startup_stall_s: PositiveS = 240.0
    """A process still starting (the controller, each node, a restarted KM) fails only
    once it has made no progress for this long: no CPU time used and nothing written to
    its log (a busy 2-core machine slows a start down, it does not stop it)."""
    startup_timeout_s: PositiveS = 1800.0
    """The cap on one process's start however it progresses (a broken build must not
    hang the demo); also added to a pair's stall bound when a KM is killed, as the pair
    waits for the KM's restart."""
    stop_timeout_s: PositiveS = 30.0
    """SIGTERM to exit of one process before it gets SIGKILL (above the processes' own
    shutdown bound, ``KEYPLANE_PROCESS_SHUTDOWN_TIMEOUT_S``)."""
    close_wait_s: PositiveS = 60.0
    """After the pairs closed their streams: how long to wait for Admission Control to
    report each session deleted at every KM of its path (the timeline's last events)."""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **explicit: Any
                 ) -> DistributedOptions:
        """Options from ``KEYPLANE_DEMO_*`` variables, explicit arguments winning."""
        from keyplane.bus.settings import settings_from_env

        result: DistributedOptions = settings_from_env(cls, "KEYPLANE_DEMO_", environ,
                                                       **explicit)
        return result


class SdkEndpoint:
    """A :class:`~keyplane.demo.scenario.StreamEndpoint` over ETSI 004 HTTPS (mutual TLS)."""

    def __init__(self, state: Path, sae_id: str, *, close_retry_s: float = 60.0) -> None:
        self.sae_id = sae_id
        self._state = state
        self._close_retry_s = close_retry_s  # how long CLOSE tries a KM that is restarting
        self.client = AsyncEtsi004Client.from_state(state, sae_id)
        self._received: dict[str, int] = {}  # per stream: last index not yet confirmed
        self._closed = False  # close() closed the client: a re-open makes a new one

    async def _reresolve(self) -> None:
        """A KM restarted listens on a new port: read endpoints.json again (the controller
        rewrites it when the node re-announces itself)."""
        await self.client.aclose()
        self.client = AsyncEtsi004Client.from_state(self._state, self.sae_id)

    async def open(self, destination: str, qos: Qos, key_stream_id: str) -> str:
        if self._closed:  # the pair re-opens after its stream ended (scenario.run_pair)
            self._closed = False
            self.client = AsyncEtsi004Client.from_state(self._state, self.sae_id)
        try:
            res = await self.client.open_connect(self.sae_id, destination,
                                                 QosParameters.from_domain(qos), key_stream_id)
        except Etsi004StatusError as exc:
            if int(exc.status) == 7:  # QoS cannot be met (e.g. no route yet): may be retried
                raise QosNotMet(f"{self.sae_id} OPEN_CONNECT: {exc}") from exc
            raise KeyplaneError(f"{self.sae_id} OPEN_CONNECT: {exc}") from exc
        except ClientError as exc:
            raise KeyplaneError(f"{self.sae_id} OPEN_CONNECT: {exc}") from exc
        return res.key_stream_id

    async def get_key(self, key_stream_id: str, index: int) -> tuple[bytes, dict[str, Any]]:
        # GET_KEY with acknowledgement (docs/api/etsi004.md): the previous index is
        # confirmed with this call, so a KM killed before its answer arrived hands the
        # same chunk again on the retry instead of losing it
        last = self._received.get(key_stream_id)
        ack: dict[str, Any] = {"keyplane_ack": True}
        if last is not None:
            ack["keyplane_confirm"] = last
        try:
            chunk = await self.client.get_key(key_stream_id, index, metadata=ack)
        except Etsi004StatusError as exc:
            if int(exc.status) in RETRY_STATUSES:  # no key yet, no connection, timeout
                raise InsufficientKeyMaterial(str(exc)) from exc
            if int(exc.status) == 3:  # the stream ended at this KM (the pair re-opens)
                raise PeerNotConnected(f"{self.sae_id} GET_KEY: {exc}") from exc
            raise KeyplaneError(f"{self.sae_id} GET_KEY: {exc}") from exc
        except TransportError as exc:  # a KM restarting: find it again, retry like status 2
            await self._reresolve()
            raise InsufficientKeyMaterial(f"{self.sae_id} GET_KEY: {exc}") from exc
        except ClientError as exc:
            raise KeyplaneError(f"{self.sae_id} GET_KEY: {exc}") from exc
        self._received[key_stream_id] = index
        return chunk.key, dict(chunk.metadata or {})

    async def close(self, key_stream_id: str) -> None:
        deadline = time.monotonic() + self._close_retry_s
        delay = 0.25
        retried = False
        try:
            while True:
                try:
                    await self.client.close_stream(key_stream_id)
                    return
                except TransportError:
                    # a kept-alive connection the server closed meanwhile, or a KM killed
                    # and restarting (on a new port): find it again and ask again until
                    # ``close_retry_s`` (CLOSE is idempotent)
                    if time.monotonic() + delay > deadline:
                        raise
                    await asyncio.sleep(delay)
                    delay = min(2.0, delay * 2)
                    await self._reresolve()
                    retried = True
                except Etsi004StatusError as exc:
                    if not retried or int(exc.status) != 9:  # 9: an earlier CLOSE ended it
                        raise
                    return
        except ClientError as exc:
            raise KeyplaneError(f"{self.sae_id} CLOSE: {exc}") from exc
        finally:
            self._closed = True
            await self.client.aclose()


class _Proc:
    """One ``python -m keyplane ...`` child: its ready line read from stdout on the event
    loop (no executor thread that a timeout could leave blocked), bounded stop."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str, log: Path) -> None:
        self.proc = proc
        self.name = name
        self.log = log
        self.ready_s: float | None = None  # how long its start took (the ready line)

    @classmethod
    async def spawn(cls, name: str, args: list[str], log: Path) -> _Proc:
        with open_private(log, "w") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "keyplane", *args, stdout=asyncio.subprocess.PIPE,
                stderr=err)
        return cls(proc, name, log)

    async def wait_ready(self, ready: str, dist: DistributedOptions) -> None:
        """Wait for the line containing ``ready`` while the process progresses (CPU time,
        its log): ``startup_stall_s`` without progress, or ``startup_timeout_s`` in all.

        Raises:
            KeyplaneError: the process exited first, or stalled, or the cap passed.
        """
        stdout = self.proc.stdout
        assert stdout is not None
        started = time.monotonic()

        async def line() -> None:
            while True:
                text = (await stdout.readline()).decode(errors="replace")
                if ready in text:
                    return
                if not text:
                    code = await self.proc.wait()
                    raise KeyplaneError(f"{self.name} exited with {code} before '{ready}'")
        try:
            await wait_progressing(
                line(), [process_cpu_s(self.proc.pid), file_size(self.log)],
                stall_s=dist.startup_stall_s, cap_s=dist.startup_timeout_s,
                what=f"{self.name} waiting for '{ready}'")
        except NoProgress as exc:
            raise KeyplaneError(str(exc)) from None
        self.ready_s = time.monotonic() - started

    async def stop(self, sig: int, timeout_s: float) -> int:
        """Send ``sig``; SIGKILL if the process has not exited after ``timeout_s``."""
        return await stop_subprocess(self.proc, sig, timeout_s)


class _Deletions:
    """Sessions Admission Control reported deleted (its ``session_deleted`` event, sent once
    every KM of the path confirmed), seen on the bus's event stream."""

    def __init__(self) -> None:
        self.deleted: set[str] = set()
        self._changed = asyncio.Event()

    async def on_event(self, _topic: str, msg: Message) -> None:
        if isinstance(msg, EventMessage) and msg.event.type is EventType.session_deleted \
                and msg.event.session:
            self.deleted.add(msg.event.session)
            self._changed.set()

    async def wait(self, sessions: set[str], timeout_s: float, console: Console) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                while not sessions <= self.deleted:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            console.print(f"{len(sessions - self.deleted)} session(s) not reported deleted "
                          f"after {timeout_s:g} s; the timeline ends without it")


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
    certs = state / "certs"
    ensure_network_certs(topo, certs)
    nats: NatsServer | None = None
    pg: PostgresServer | None = None
    observer: NatsBus | None = None
    procs: dict[str, _Proc] = {}
    results = [PairResult(p) for p in (opts.pairs or default_pairs(topo))]
    try:
        started = time.monotonic()

        def progress(what: str) -> None:  # a line per step: start-up takes a while
            console.print(f"[{time.monotonic() - started:5.1f} s] {what}", highlight=False)

        bus_url = dist.nats_url
        if bus_url is None:
            progress("starting nats-server")
            nats = (NatsServer.start() if dist.danger_insecure_bus else
                    NatsServer.start_secured(topo, certs, config_path=state / "nats.conf"))
            bus_url = nats.url
        db_url = dist.db_url
        if db_url is None:
            try:
                progress("starting PostgreSQL")
                pg = PostgresServer.start()
                db_url = pg.create_database("keyplane")
            except (FileNotFoundError, subprocess.SubprocessError) as exc:
                console.print(f"PostgreSQL unavailable ({exc}); using a shared SQLite file")
                db_url = f"sqlite:///{state / 'keyplane.db'}"
        console.print(f"bus {bus_url}{' (INSECURE)' if dist.danger_insecure_bus else ''}  "
                      f"database {db_url.split('@')[-1]}")
        common = ["-t", str(topo_file), "--bus", bus_url, "--db", db_url, "-s", str(state)]
        if dist.danger_insecure_bus:
            common.append("--danger-insecure-bus")
        # the demo watches the run as the operator: events only, nothing it could change
        observer = await NatsBus.connect(
            bus_url, name="keyplane-demo",
            security=(BusSecurity.danger_insecure("demo --danger-insecure-bus")
                      if dist.danger_insecure_bus else BusSecurity.load(
                          BusCredentials.for_element(certs, "operator", OPERATOR_ID))))
        deletions = _Deletions()
        await observer.subscribe(topics.events("admission"), deletions.on_event)
        progress("starting the controller")
        procs["controller"] = await _Proc.spawn("controller", ["controller", *common],
                                                state / "controller.log")
        await procs["controller"].wait_ready("controller ready", dist)
        progress(f"controller ready; starting {len(topo.nodes)} node processes")
        for node in topo.nodes:
            procs[node.id] = await _Proc.spawn(node.id, ["node", "--id", node.id, *common],
                                               state / f"node-{node.id}.log")
        up: list[str] = []

        async def node_ready(node_id: str) -> None:
            await procs[node_id].wait_ready(f"node {node_id} ready", dist)
            up.append(node_id)
            progress(f"node {node_id} ready ({len(up)}/{len(topo.nodes)}) after "
                     f"{procs[node_id].ready_s or 0:.0f} s")

        await asyncio.gather(*(node_ready(n.id) for n in topo.nodes))
        endpoints = json.loads((state / "endpoints.json").read_text())
        missing = {n.id for n in topo.nodes} - set(endpoints["kms"])
        if missing:
            raise KeyplaneError(f"nodes never registered: {sorted(missing)}")
        console.print(f"{len(topo.nodes)} node processes and the controller are up")
        if (endpoints.get("operations") or {}).get("dashboard"):
            console.print(f"dashboard: {endpoints['operations']['dashboard']}")
        t0 = time.monotonic()

        async def chaos() -> None:
            if dist.kill_km is None:
                return
            # mid-run: every session is past its set-up (both ends have a key), so the kill
            # hits key exchange; a KM killed while a session is being configured is another
            # fault (Admission Control refuses the session), not what this demo shows
            await asyncio.gather(*(r.keying.wait() for r in results))
            await asyncio.sleep(dist.kill_after_s)
            console.print(f"killing {dist.kill_km} (SIGKILL)")
            await procs[dist.kill_km].stop(signal.SIGKILL, dist.stop_timeout_s)
            await asyncio.sleep(dist.restart_after_s)
            procs[dist.kill_km] = await _Proc.spawn(
                dist.kill_km, ["node", "--id", dist.kill_km, *common],
                state / f"node-{dist.kill_km}-restarted.log")
            await procs[dist.kill_km].wait_ready(f"node {dist.kill_km} ready", dist)
            console.print(f"{dist.kill_km} restarted (ready after "
                          f"{procs[dist.kill_km].ready_s or 0:.0f} s)")

        chaos_task = asyncio.create_task(chaos())
        # a pair crossing the killed KM waits for its restart too (GET_KEY and CLOSE)
        stall_s = opts.timeout_s + (dist.startup_timeout_s if dist.kill_km else 0)
        await asyncio.gather(*(
            run_pair(r.pair, SdkEndpoint(state, r.pair.a, close_retry_s=stall_s),
                     SdkEndpoint(state, r.pair.b, close_retry_s=stall_s),
                     keys=opts.keys, chunk_bytes=opts.chunk_bytes, interval_s=opts.interval_s,
                     timeout_s=opts.timeout_s, result=r, t0=t0,
                     stall_s=stall_s)
            for r in results))
        await chaos_task
        await deletions.wait({r.key_stream_id for r in results
                              if r.status == "closed" and r.key_stream_id},
                             dist.close_wait_s, console)
    finally:
        if observer is not None:
            await observer.close()
        await asyncio.gather(*(p.stop(signal.SIGTERM, dist.stop_timeout_s)
                               for p in reversed(list(procs.values()))),
                             return_exceptions=True)
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
