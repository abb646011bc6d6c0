"""Launch ``keyplane`` subprocesses for integration tests, wait for readiness, stop them."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.support.deadlines import DEADLINE_S

ROOT = Path(__file__).resolve().parents[2]


def keyplane_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra or {})
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


_LOGS: dict[int, Path] = {}
"""Where each started process's stderr goes, by pid (:func:`log_tail`)."""

READY_TIMEOUT_S = DEADLINE_S
"""How long a process may take to print its ready line (KEYPLANE_TEST_DEADLINE_S)."""


def spawn_keyplane(*args: str, log: Path | None = None, env: dict[str, str] | None = None
                   ) -> subprocess.Popen[str]:
    """Start ``python -m keyplane ARGS`` (stdout piped, stderr to ``log``) without waiting."""
    out = open(log, "w") if log else subprocess.DEVNULL
    try:
        proc = subprocess.Popen([sys.executable, "-m", "keyplane", *args],
                                stdout=subprocess.PIPE, stderr=out, text=True,
                                env=keyplane_env(env), cwd=ROOT)
        if log:
            _LOGS[proc.pid] = log
        return proc
    finally:
        if log:
            out.close()  # type: ignore[union-attr]


def start_keyplane(*args: str, ready: str, timeout_s: float = READY_TIMEOUT_S,
                   log: Path | None = None, env: dict[str, str] | None = None
                   ) -> subprocess.Popen[str]:
    """Start ``python -m keyplane ARGS`` and wait until it prints ``ready`` on stdout."""
    proc = spawn_keyplane(*args, log=log, env=env)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:  # read stdout in a thread so that the wait below has a deadline
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        if ready in line:
            return proc
        if not line and proc.poll() is not None:
            raise RuntimeError(f"keyplane {' '.join(args)} exited with {proc.returncode}")
    stop(proc)
    raise RuntimeError(f"keyplane {' '.join(args)} not ready after {timeout_s} s")


def stop(proc: subprocess.Popen[str], timeout_s: float = DEADLINE_S) -> int:
    """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)
    return proc.returncode


def log_tail(proc: subprocess.Popen[str], lines: int = 80) -> str:
    """The last ``lines`` of ``proc``'s log, for an assertion's message (a process that
    exited badly, e.g. 70 when its shutdown bound ran out, says why there)."""
    log = _LOGS.get(proc.pid)
    if log is None or not log.exists():
        return f"exit {proc.returncode}; no log kept"
    text = log.read_text(encoding="utf-8", errors="replace").splitlines()
    return f"exit {proc.returncode}; last lines of {log}:\n" + "\n".join(text[-lines:])


def wait_until(pred, timeout_s: float = DEADLINE_S, interval_s: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval_s)
    raise AssertionError("condition not reached in time")
