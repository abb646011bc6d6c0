"""Process lifecycle (keyplane.lifecycle): bounded shutdown, cancellation while starting,
and elements closed after a failed start."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from keyplane.errors import ConfigError
from keyplane.lifecycle import EXIT_FORCED, Service, process_settings_from_env
from tests.support.processes import ROOT, keyplane_env

EXIT_WAIT_S = 120.0  # a deadline for the child to exit, not a timing assertion

HUNG_TEARDOWN = """
import asyncio, sys, threading
from keyplane.lifecycle import ProcessSettings, run_process

never = threading.Event()

async def main(pc):
    # a default-executor thread that never ends: asyncio.run's teardown waits for it
    asyncio.get_running_loop().run_in_executor(None, never.wait)
    if sys.argv[1] == "fail":
        raise RuntimeError("start failed")
    pc.ready("ready")
    await pc.serve_until_stopped()

run_process(main, ProcessSettings(shutdown_timeout_s=1.0))
"""


def _child(mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(HUNG_TEARDOWN), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=keyplane_env(), cwd=ROOT)


def test_sigterm_ends_a_process_whose_teardown_hangs() -> None:
    proc = _child("serve")
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(EXIT_WAIT_S) == EXIT_FORCED
        _, err = proc.communicate()
        # it says what it still waited for: the executor thread stuck in Event.wait
        assert "did not finish within 1 s" in err and "in wait" in err, err
    finally:
        proc.kill()


def test_failed_start_with_a_hanging_teardown_still_exits() -> None:
    proc = _child("fail")
    try:
        assert proc.wait(EXIT_WAIT_S) == EXIT_FORCED
        _, err = proc.communicate()
        assert "did not finish within 1 s" in err
    finally:
        proc.kill()


HUNG_CLOSE = """
import asyncio
from keyplane.lifecycle import ProcessSettings, run_process

async def close_the_element(never):
    await never.wait()  # a shutdown step that never ends

async def main(pc):
    pc.ready("ready")
    await pc.serve_until_stopped()
    await close_the_element(asyncio.Event())

run_process(main, ProcessSettings(shutdown_timeout_s=1.0))
"""


def test_the_report_names_the_step_a_hung_shutdown_waits_in() -> None:
    # not only the task's own frame (``await main(control)``) but the coroutine it awaits,
    # down to the awaited future
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HUNG_CLOSE)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=keyplane_env(), cwd=ROOT)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(EXIT_WAIT_S) == EXIT_FORCED
        _, err = proc.communicate()
        assert "in close_the_element" in err and "in wait" in err and "<Future pending" in err, err
    finally:
        proc.kill()


class _Half(Service):
    def __init__(self) -> None:
        self.started: list[str] = []
        self.closed = 0

    async def start(self) -> None:
        self.started.append("server")
        raise RuntimeError("the second part failed")

    async def close(self) -> None:
        self.closed += 1


async def test_service_closes_what_a_failed_start_left_running() -> None:
    svc = _Half()
    with pytest.raises(RuntimeError, match="second part"):
        async with svc:
            raise AssertionError("not reached")
    assert svc.started == ["server"] and svc.closed == 1


def test_process_settings_from_env_name_the_bad_variable() -> None:
    st = process_settings_from_env({"KEYPLANE_PROCESS_SHUTDOWN_TIMEOUT_S": "3"})
    assert st.shutdown_timeout_s == 3.0
    with pytest.raises(ConfigError, match="KEYPLANE_PROCESS_SHUTDOWN_TIMEOUT_S"):
        process_settings_from_env({"KEYPLANE_PROCESS_SHUTDOWN_TIMEOUT_S": "-1"})
    with pytest.raises(ConfigError, match="KEYPLANE_PROCESS_NOPE: no such setting"):
        process_settings_from_env({"KEYPLANE_PROCESS_NOPE": "1"})
