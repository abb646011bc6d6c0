"""Processes and their bus under faults (issue 14.2): ``keyplane controller`` and ``keyplane
node`` over a secured nats-server that is killed with SIGKILL for longer than the old
10-attempt reconnection window; a bus that stays down; a start that fails; SIGTERM while
starting."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyplane.demo.distributed import SdkEndpoint
from keyplane.errors import KeyplaneError
from keyplane.lifecycle import ProcessSettings
from keyplane.messages import Qos
from keyplane.services import NatsServer, free_port
from tests.support.processes import READY_TIMEOUT_S, log_tail, spawn_keyplane, start_keyplane, stop

pytestmark = [pytest.mark.multiprocess, pytest.mark.nats, pytest.mark.slow]

TOPOLOGY = """
version: 1
name: outage
nodes: [{id: km0}, {id: km1}]
links:
  - {endpoints: [km0, km1], length_km: 10, protocol: analytic}
users:
  - {id: alice, certificate_subject: "CN=alice,O=keyplane-demo",
     sla: {max_sessions: 4, max_bps: 100000, allowed_peers: [sae1]}}
  - {id: bob, certificate_subject: "CN=bob,O=keyplane-demo",
     sla: {max_sessions: 4, max_bps: 100000, allowed_peers: [sae0]}}
applications:
  - {sae_id: sae0, owner: alice, node: km0}
  - {sae_id: sae1, owner: bob, node: km1}
"""
OLD_ATTEMPTS = 10
FAST_RECONNECT = {"KEYPLANE_BUS_RECONNECT_BACKOFF_BASE_S": "0.05",
                  "KEYPLANE_BUS_RECONNECT_BACKOFF_CAP_S": "0.25"}
EXIT_WAIT_S = 120.0  # deadline for a process to exit by itself (not a timing assertion)
DEFAULT_SHUTDOWN_S = ProcessSettings().shutdown_timeout_s


class DeadServer:
    """Something on a killed server's port that accepts and drops every connection, counting
    them: each is one reconnection attempt of some process."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self._sock.settimeout(0.2)
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


@pytest.fixture
def network(tmp_path: Path, topology_nats) -> Iterator[tuple[Path, list[str], NatsServer]]:  # type: ignore[no-untyped-def]
    topo = tmp_path / "topology.yaml"
    topo.write_text(TOPOLOGY)
    state = tmp_path / "state"
    srv = topology_nats(topo, state / "certs")
    common = ["-t", str(topo), "--bus", srv.url, "--db", f"sqlite:///{tmp_path / 'kp.db'}",
              "-s", str(state)]
    yield state, common, srv


def _wait_accepts(dead: DeadServer, n: int) -> None:
    done = threading.Event()
    for _ in range(int(EXIT_WAIT_S / 0.1)):
        if dead.accepted >= n:
            return
        done.wait(0.1)
    raise AssertionError(f"only {dead.accepted} reconnection attempts, expected {n}")


async def _open(state: Path, sae: str, peer: str) -> str:
    """OPEN_CONNECT at one end: Access Control and Admission Control answer over the bus."""
    ep = SdkEndpoint(state, sae)
    try:
        return await ep.open(peer, Qos(key_chunk_size=32), str(uuid.uuid4()))
    finally:
        await ep.client.aclose()


def test_processes_resume_after_the_bus_was_down_longer_than_ten_attempts(network) -> None:  # type: ignore[no-untyped-def]
    state, common, srv = network
    procs = [start_keyplane("controller", *common, ready="controller ready",
                            log=state.parent / "ctl.log", env=FAST_RECONNECT)]
    try:
        for node in ("km0", "km1"):
            procs.append(start_keyplane("node", "--id", node, *common,
                                        ready=f"node {node} ready",
                                        log=state.parent / f"{node}.log", env=FAST_RECONNECT))
        assert asyncio.run(_open(state, "sae0", "sae1"))

        srv.kill()
        dead = DeadServer(srv.port)
        try:
            _wait_accepts(dead, len(procs) * (OLD_ATTEMPTS + 1))
        finally:
            dead.close()
        assert all(p.poll() is None for p in procs)
        srv.restart()

        async def reopen() -> str:
            async with asyncio.timeout(EXIT_WAIT_S):
                while True:
                    try:
                        return await _open(state, "sae1", "sae0")
                    except KeyplaneError:  # a process still reconnecting: as an app would
                        await asyncio.sleep(0.5)

        assert asyncio.run(reopen())
        assert all(p.poll() is None for p in procs)
    finally:
        codes = [stop(p) for p in reversed(procs)]
    assert codes == [0, 0, 0]


def test_processes_exit_non_zero_when_the_bus_stays_down(network) -> None:  # type: ignore[no-untyped-def]
    state, common, srv = network
    env = {**FAST_RECONNECT, "KEYPLANE_BUS_MAX_OUTAGE_S": "2"}
    procs = [start_keyplane("controller", *common, ready="controller ready",
                            log=state.parent / "ctl.log", env=env)]
    try:
        procs.append(start_keyplane("node", "--id", "km0", *common, ready="node km0 ready",
                                    log=state.parent / "km0.log", env=env))
        srv.kill()
        codes = [p.wait(EXIT_WAIT_S) for p in procs]
    finally:
        for p in procs:
            stop(p)
    assert codes == [1, 1]
    assert "bus unreachable for more than 2 s" in (state.parent / "km0.log").read_text()


def test_node_whose_start_fails_exits_non_zero_by_itself(network) -> None:  # type: ignore[no-untyped-def]
    state, common, _srv = network
    # no control plane: the announcement is never answered
    proc = spawn_keyplane("node", "--id", "km0", *common, log=state.parent / "km0.log",
                          env={"KEYPLANE_PROCESS_ANNOUNCE_TIMEOUT_S": "3"})
    try:
        code = proc.wait(EXIT_WAIT_S)
    finally:
        stop(proc)
    assert code == 1
    assert "did not answer its announcement" in (state.parent / "km0.log").read_text()


def test_process_still_starting_ends_promptly_on_sigterm(tmp_path: Path) -> None:
    topo = tmp_path / "topology.yaml"
    topo.write_text(TOPOLOGY)
    log = tmp_path / "km0.log"
    # nobody listens on the bus port: the process backs off, waiting for it
    proc = spawn_keyplane("node", "--id", "km0", "-t", str(topo), "--bus",
                          f"tls://127.0.0.1:{free_port()}", "-s", str(tmp_path / "state"),
                          log=log)
    try:
        waited = threading.Event()
        for _ in range(int(READY_TIMEOUT_S / 0.1)):
            if "not reachable yet" in log.read_text():
                break
            waited.wait(0.1)
        else:
            raise AssertionError("the node never started waiting for its bus")
        proc.send_signal(signal.SIGTERM)
        # it must not wait out the bus startup timeout (120 s): it is cancelled at once and
        # the watchdog bounds whatever remains
        code = proc.wait(DEFAULT_SHUTDOWN_S + 30.0)
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            stop(proc)
    assert code == 0


def test_insecure_bus_only_with_its_flag_and_a_warning(tmp_path: Path) -> None:
    topo = tmp_path / "topology.yaml"
    topo.write_text(TOPOLOGY)
    plain = NatsServer.start()  # a server without TLS or authorization
    try:
        common = ["-t", str(topo), "--bus", plain.url, "-s", str(tmp_path / "state")]
        # by default a process insists on TLS with its certificate: it does not connect
        refused = spawn_keyplane("controller", *common, log=tmp_path / "secure.log",
                                 env={"KEYPLANE_BUS_STARTUP_TIMEOUT_S": "3"})
        try:
            assert refused.wait(EXIT_WAIT_S) == 1
        finally:
            stop(refused)
        assert "cannot connect to NATS" in (tmp_path / "secure.log").read_text()
        ctl = start_keyplane("controller", *common, "--danger-insecure-bus",
                             ready="controller ready", log=tmp_path / "insecure.log")
        assert stop(ctl) == 0, log_tail(ctl)
        log = (tmp_path / "insecure.log").read_text()
        assert "WARNING" in log and "DANGER: insecure bus" in log
    finally:
        plain.stop()
