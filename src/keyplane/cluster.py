"""A local distributed network whose every element can be stopped, killed and restarted.

:class:`LocalCluster` runs the distributed mode on loopback, as Kubernetes would run it on
pods: a secured nats-server (:meth:`keyplane.services.NatsServer.start_secured`), a
PostgreSQL server (:class:`keyplane.services.PostgresServer`), ``keyplane controller`` and
one ``keyplane node`` process per node (or per group of nodes, ``groups``: ``keyplane node
--id km1,km2``), each node on pinned ports so that a restarted node is found where it was.
Faults are methods: :meth:`kill` (SIGKILL, as a crash or an OOM kill) and :meth:`start` of a
keyplane process, :meth:`stop_nats` / :meth:`start_nats` on the same
port, :meth:`stop_postgres` / :meth:`start_postgres` on the same port and data directory.

Used by the fault matrix (:mod:`keyplane.faultmatrix`, its test and ``bench/faults.py``).
Every wait is bounded by a :class:`ClusterSettings` field; readiness is each process's own
ready line, never a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from keyplane.certs import ensure_network_certs
from keyplane.config import Topology
from keyplane.errors import ConfigError, KeyplaneError
from keyplane.events import Event
from keyplane.fileperms import ensure_private_dir, open_private, write_private
from keyplane.lifecycle import stop_subprocess
from keyplane.services import NatsServer, PostgresServer, free_port

__all__ = ["CONTROLLER", "ClusterSettings", "EventTail", "LocalCluster", "ManagedProcess",
           "read_events", "restartable_port"]

CONTROLLER = "controller"
"""The element name of the ``keyplane controller`` process."""


class ClusterSettings(BaseModel):
    """Bounds of a :class:`LocalCluster` (real seconds, sized for a loaded 2-core machine)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ready_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    """How long a keyplane process may take to print its ready line."""
    stop_timeout_s: Annotated[float, Field(gt=0)] = 40.0
    """SIGTERM to exit before SIGKILL (above the processes' own 25 s shutdown bound)."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment of every keyplane process (``KEYPLANE_BUS_*``, ...)."""


class ManagedProcess:
    """One ``python -m keyplane ...`` child: ready line read on the event loop, bounded
    stop."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self._drain: asyncio.Task[None] | None = None

    @classmethod
    async def spawn(cls, name: str, args: list[str], log: Path,
                    env: dict[str, str] | None = None) -> ManagedProcess:
        """Start ``python -m keyplane ARGS``; stderr goes to ``log`` (appended)."""
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open_private(log, "a") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "keyplane", *args, stdout=asyncio.subprocess.PIPE,
                stderr=err, env=full_env)
        return cls(name, proc)

    async def wait_ready(self, ready: str, timeout_s: float) -> None:
        """Wait for the stdout line containing ``ready``, then keep draining stdout.

        Raises:
            KeyplaneError: the process exited first, or ``timeout_s`` passed.
        """
        out = self.proc.stdout
        assert out is not None
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    line = (await out.readline()).decode(errors="replace")
                    if ready in line:
                        break
                    if not line:
                        code = await self.proc.wait()
                        raise KeyplaneError(f"{self.name} exited with {code} before "
                                            f"'{ready}'")
        except TimeoutError:
            raise KeyplaneError(f"{self.name}: no '{ready}' after {timeout_s:g} s") from None
        # a full pipe would block the child's prints
        self._drain = asyncio.create_task(self._discard(out))

    @staticmethod
    async def _discard(out: asyncio.StreamReader) -> None:
        while await out.readline():
            pass

    @property
    def running(self) -> bool:
        """Whether the process has not exited."""
        return self.proc.returncode is None

    async def stop(self, sig: int, timeout_s: float) -> int:
        """Send ``sig``; SIGKILL if the process has not exited after ``timeout_s``."""
        return await stop_subprocess(self.proc, sig, timeout_s)


def read_events(state: Path) -> list[Event]:
    """Every event the processes wrote to ``state/events-*.jsonl``, in wall-clock order.

    A process killed with SIGKILL may leave a partial last line; such lines are skipped.
    """
    events: list[Event] = []
    for f in sorted(state.glob("events-*.jsonl")):
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                with contextlib.suppress(ValidationError, ValueError):
                    events.append(Event.model_validate_json(line))
    events.sort(key=lambda e: (e.wall, e.event_id))
    return events


class EventTail:
    """The events the processes append to ``state/events-*.jsonl`` from now on, read
    incrementally: each :meth:`new` parses only the complete lines added since the previous
    one (a run writes tens of thousands; re-reading them all on every poll would cost more
    than the processes it watches). ``contains`` skips lines without that text unparsed."""

    def __init__(self, state: Path, contains: str = "") -> None:
        self.state = state
        self.contains = contains
        self._offsets = {f: f.stat().st_size for f in state.glob("events-*.jsonl")}

    def new(self) -> list[Event]:
        """Events written since the last call (or since this tail was made)."""
        out: list[Event] = []
        for f in sorted(self.state.glob("events-*.jsonl")):
            start = self._offsets.get(f, 0)
            with open(f, "rb") as fh:
                fh.seek(start)
                data = fh.read()
            end = data.rfind(b"\n") + 1  # a line still being written waits for the next call
            self._offsets[f] = start + end
            for line in data[:end].decode("utf-8", "replace").splitlines():
                if self.contains and self.contains not in line:
                    continue
                with contextlib.suppress(ValidationError, ValueError):
                    out.append(Event.model_validate_json(line))
        return out


def restartable_port(*, lowest: int = 10_000, attempts: int = 200) -> int:
    """A free TCP port on 127.0.0.1 *below* the kernel's ephemeral range, for a server that
    is stopped and started again on the same port (a killed node, nats-server, PostgreSQL).

    While such a server is down its clients keep connecting to it. A port inside the
    ephemeral range may meanwhile become one of those connections' own source port (on
    loopback, a connect to a closed ephemeral port can even connect to itself), and the
    server then cannot bind it again ("Address already in use": a node's restart failed so
    in one of three fault-matrix runs on a busy machine). Ports below the range are never
    given out implicitly. Falls back to :func:`~keyplane.services.free_port` where the range
    cannot be read or leaves no room.
    """
    try:
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return free_port()
    rng = random.SystemRandom()
    for _ in range(attempts if first - lowest > 1000 else 0):
        port = rng.randrange(lowest, first)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    return free_port()


class LocalCluster:
    """The distributed mode of ``topology`` on loopback, under ``workdir``.

    Args:
        topology: the network; no node may be named ``controller``.
        workdir: where the topology copy, state folder, certificates, logs, nats-server's
            configuration and PostgreSQL's data go.
        settings: the waits.
        groups: nodes that share a process (``keyplane node --id a,b``; that process's
            element name is ``"a,b"``); every other node runs in a process of its own.

    Raises:
        ConfigError: a node named ``controller``, or a group naming an unknown node or a
            node already in another group.
    """

    def __init__(self, topology: Topology, workdir: Path,
                 settings: ClusterSettings | None = None,
                 groups: Sequence[Sequence[str]] = ()) -> None:
        if any(n.id == CONTROLLER for n in topology.nodes):
            raise ConfigError(f"a node may not be named {CONTROLLER!r} in a LocalCluster")
        grouped = [n for g in groups for n in g]
        if set(grouped) - {n.id for n in topology.nodes} or len(set(grouped)) < len(grouped):
            raise ConfigError(f"groups {[list(g) for g in groups]}: each node of the "
                              "topology at most once")
        self.groups = [list(g) for g in groups if g]
        self.topology = topology
        self.workdir = workdir
        self.settings = settings or ClusterSettings()
        self.state = workdir / "state"
        self.certs = self.state / "certs"
        self.logs = workdir / "logs"
        self.topology_file = workdir / "topology.yaml"
        self.nats: NatsServer | None = None
        self.postgres: PostgresServer | None = None
        self.db_url = ""
        self.ports: dict[str, tuple[int, int]] = {}
        """Each node's (ETSI 014/004, ETSI 015) ports, kept across restarts."""
        self.processes: dict[str, ManagedProcess] = {}
        self._starts: dict[str, int] = {}

    @property
    def node_processes(self) -> list[str]:
        """The node processes' element names: ``"a,b"`` for a group, else the node id."""
        grouped = {n for g in self.groups for n in g}
        return [*(",".join(g) for g in self.groups),
                *(n.id for n in self.topology.nodes if n.id not in grouped)]

    def process_of(self, node: str) -> str:
        """The element name of the process that runs ``node``."""
        return next((",".join(g) for g in self.groups if node in g), node)

    @property
    def elements(self) -> list[str]:
        """The keyplane processes: the controller, then every node process."""
        return [CONTROLLER, *self.node_processes]

    def etsi014_url(self, node: str) -> str:
        """The ETSI 014 base URL of ``node`` (ETSI 004 is under ``/etsi004``)."""
        return f"https://127.0.0.1:{self.ports[node][0]}"

    def sae_files(self, sae_id: str) -> tuple[Path, Path, Path]:
        """(certificate, key, CA) of an SAE."""
        return (self.certs / "sae" / f"{sae_id}.pem", self.certs / "sae" / f"{sae_id}.key",
                self.certs / "ca.pem")

    async def __aenter__(self) -> LocalCluster:
        try:
            await self.start_all()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start_all(self) -> None:
        """Certificates, nats-server, PostgreSQL, the controller, then every node."""
        ensure_private_dir(self.workdir)
        ensure_private_dir(self.state)
        self.ports = {n.id: (restartable_port(), restartable_port())
                      for n in self.topology.nodes}
        # the ports in the topology copy too: a process of several nodes takes them there
        doc = self.topology.model_dump(mode="json")
        for n in doc["nodes"]:
            n["ports"].update(api=self.ports[n["id"]][0], etsi015=self.ports[n["id"]][1])
        write_private(self.topology_file, yaml.safe_dump(doc))
        ensure_network_certs(self.topology, self.certs)
        self.nats = await asyncio.to_thread(
            NatsServer.start_secured, self.topology, self.certs, port=restartable_port(),
            config_path=self.state / "nats.conf")
        self.postgres = await asyncio.to_thread(PostgresServer.start, restartable_port())
        self.db_url = await asyncio.to_thread(self.postgres.create_database, "keyplane")
        await self.start(CONTROLLER)
        await asyncio.gather(*(self.start(p) for p in self.node_processes))

    def _args(self, element: str) -> tuple[list[str], str]:
        assert self.nats is not None
        common = ["-t", str(self.topology_file), "--bus", self.nats.url, "--db", self.db_url,
                  "-s", str(self.state)]
        if element == CONTROLLER:
            return ["controller", *common], "controller ready"
        if "," in element:  # a group: its nodes' ports are in the topology copy
            return ["node", "--id", element, *common], f"node {element} ready"
        api, agent = self.ports[element]
        return (["node", "--id", element, *common, "--etsi014-port", str(api),
                 "--etsi015-port", str(agent)], f"node {element} ready")

    async def start(self, element: str) -> float:
        """Start (or restart) a keyplane process and wait for its ready line; returns how
        long that took, seconds.

        Raises:
            KeyplaneError: it exited or was not ready within ``ready_timeout_s``.
        """
        old = self.processes.get(element)
        if old is not None and old.running:
            raise KeyplaneError(f"{element} is running")
        args, ready = self._args(element)
        n = self._starts[element] = self._starts.get(element, 0) + 1
        t0 = time.monotonic()
        proc = await ManagedProcess.spawn(element, args, self.logs / f"{element}.{n}.log",
                                          self.settings.env)
        self.processes[element] = proc
        await proc.wait_ready(ready, self.settings.ready_timeout_s)
        return time.monotonic() - t0

    async def kill(self, element: str) -> None:
        """SIGKILL a keyplane process and reap it."""
        await self.processes[element].stop(signal.SIGKILL, self.settings.stop_timeout_s)

    async def stop(self, element: str) -> int:
        """SIGTERM a keyplane process (SIGKILL after ``stop_timeout_s``); its exit code."""
        return await self.processes[element].stop(signal.SIGTERM, self.settings.stop_timeout_s)

    async def stop_nats(self) -> None:
        """Kill nats-server (SIGKILL)."""
        assert self.nats is not None
        await asyncio.to_thread(self.nats.kill)

    async def start_nats(self) -> None:
        """Start nats-server again on its port with its configuration."""
        assert self.nats is not None
        await asyncio.to_thread(self.nats.restart)

    async def stop_postgres(self) -> None:
        """Stop PostgreSQL as a crash would, keeping its data."""
        assert self.postgres is not None
        await asyncio.to_thread(self.postgres.halt)

    async def start_postgres(self) -> None:
        """Start PostgreSQL again on its port and data directory."""
        assert self.postgres is not None
        await asyncio.to_thread(self.postgres.restart)

    def exited(self) -> dict[str, int]:
        """Keyplane processes that exited on their own, with their codes."""
        return {name: p.proc.returncode for name, p in self.processes.items()
                if p.proc.returncode is not None}

    def events(self) -> list[Event]:
        """Every event written so far (:func:`read_events`)."""
        return read_events(self.state)

    def endpoints(self) -> dict[str, Any]:
        """``endpoints.json`` as the controller last wrote it."""
        doc: dict[str, Any] = json.loads((self.state / "endpoints.json").read_text())
        return doc

    async def close(self) -> None:
        """SIGTERM every keyplane process (nodes first), then stop the servers."""
        procs = list(self.processes.values())
        await asyncio.gather(*(p.stop(signal.SIGTERM, self.settings.stop_timeout_s)
                               for p in reversed(procs)), return_exceptions=True)
        if self.nats is not None:
            await asyncio.to_thread(self.nats.stop)
        if self.postgres is not None:
            await asyncio.to_thread(self.postgres.stop)
