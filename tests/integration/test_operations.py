"""The operators' surface of real processes: /metrics series, the dashboard's state, status.

``keyplane run`` of the paper's network, and a controller with two node processes over a real
nats-server: each process serves the series of what it runs; ``keyplane status`` reads the
running network; the waits are on conditions, bounded by tests/support/deadlines.py.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from keyplane.api.client import Etsi004Client, Etsi004StatusError
from keyplane.ops.network import SERIES
from keyplane.services import NatsServer
from tests.support.deadlines import DEADLINE_S
from tests.support.processes import ROOT, keyplane_env, log_tail, start_keyplane, stop, wait_until

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

TOPO = str(ROOT / "examples" / "paper_poc.yaml")
COUNTERS = {"keyplane_link_secret_bits", "keyplane_session_keys_delivered"}


def _endpoints(state: Path) -> dict[str, Any]:
    path = state / "endpoints.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _series(ops_url: str) -> dict[str, list[dict[str, str]]]:
    text = httpx.get(ops_url + "/metrics", timeout=DEADLINE_S).text
    out: dict[str, list[dict[str, str]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(dict(s.labels))
    return out


def _exported_name(name: str) -> str:
    return name + "_total" if name in COUNTERS else name


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state = tmp_path_factory.mktemp("ops-run")
    proc = start_keyplane("run", "-t", TOPO, "-s", str(state), "--ops", "127.0.0.1:0",
                          ready="keyplane running", log=state / "run.log")
    try:
        yield state
    finally:
        assert stop(proc) == 0, log_tail(proc)


def _retry(fn):  # type: ignore[no-untyped-def]
    """Call ``fn`` until the KMs have link key (status 2 while the links warm up; status 6
    when none came within the request's QoS timeout on a loaded machine: nothing was
    handed out, so the same index is asked again)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            return fn()
        except Etsi004StatusError as exc:
            if time.monotonic() > deadline or int(exc.status) not in (2, 6):
                raise
            time.sleep(0.1)  # retry pace of a deadline-bounded retry


def test_run_exports_every_network_series_and_its_dashboard(running: Path) -> None:
    ops = _endpoints(running)["operations"]
    assert ops["dashboard"] == ops["ops"] + "/dashboard/"
    sid = str(uuid.uuid4())
    with Etsi004Client.from_state(running, "sae4") as a, \
            Etsi004Client.from_state(running, "sae5") as b:
        joined: dict[str, Any] = {}
        t = threading.Thread(target=lambda: joined.update(
            b=b.open_connect("sae5", "sae4", key_stream_id=sid)))
        t.start()
        a.open_connect("sae4", "sae5", key_stream_id=sid)
        t.join(DEADLINE_S)
        for i in range(2):
            assert _retry(lambda i=i: a.get_key(sid, i)).key == \
                _retry(lambda i=i: b.get_key(sid, i)).key
        wanted = {_exported_name(n) for n in SERIES}
        per_session = {n for n in wanted if n.startswith("keyplane_session_")}

        def session_shown() -> bool:
            seen = _series(ops["ops"])
            return per_session <= set(seen) and sid in {
                lab.get("session") for lab in seen["keyplane_session_queue_depth"]}

        # the session's series while it is young (its KM closes it after the SLA's idle
        # timeout, and the waits below may outlast that on a loaded machine)
        wait_until(session_shown)
        # a fault raises an alarm series (the dashboard's control, as an operator would)
        with httpx.Client(base_url=ops["dashboard"], timeout=DEADLINE_S) as c:
            r = c.post("api/links/km0-km3/cut", headers={"X-Keyplane-Dashboard": "1"})
            assert r.status_code == 200, r.text
            assert c.post("api/links/km0-km3/cut").status_code == 403  # no CSRF header
        links = {"km0-km1", "km0-km2", "km0-km3", "km0-km4", "km0-km5", "km4-km5"}

        def complete() -> bool:  # a link's rate appears with its first block: on a loaded
            # machine a long link's first block may take minutes, so only the session's own
            # link (it made the keys above) must have one
            seen = _series(ops["ops"])
            rated = {lab["link"] for lab in seen.get("keyplane_link_skr_bps", [])}
            return wanted - per_session <= set(seen) and "km4-km5" in rated

        wait_until(complete)
        seen = _series(ops["ops"])
        assert "km4-km5" in {lab["link"] for lab in seen["keyplane_link_skr_bps"]}
        assert {lab["link"] for lab in seen["keyplane_link_skr_bps"]} <= links
        assert {"node": "km4", "link": "km4-km5"} in seen["keyplane_keystore_bits"]
        assert {"link": "km0-km3", "kind": "link_down"} in seen["keyplane_link_alarm"]
        # requests, status and latency per interface: the ETSI 004 calls above
        assert {"interface": "etsi004", "method": "POST", "status": "200"} in seen[
            "keyplane_http_requests_total"]
        assert {"interface": "etsi004"} in seen["keyplane_http_request_duration_seconds_count"]
        for end in (a, b):  # its KM may have closed it for idleness meanwhile
            with contextlib.suppress(Etsi004StatusError):
                end.close_stream(sid)
    with httpx.Client(base_url=ops["dashboard"], timeout=DEADLINE_S) as c:
        assert c.post("api/links/km0-km3/restore",
                      headers={"X-Keyplane-Dashboard": "1"}).status_code == 200
    # the session ended: its series go
    wait_until(lambda: sid not in {lab.get("session") for lab in _series(ops["ops"]).get(
        "keyplane_session_queue_depth", [])})


def test_status_shows_the_running_network(running: Path) -> None:
    def status(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "keyplane", "status", *args],
                              capture_output=True, text=True, env={**keyplane_env(),
                                                                   "COLUMNS": "200"},
                              timeout=DEADLINE_S, check=False)

    wait_until(lambda: all(n["reported_s_ago"] is not None for n in json.loads(
        status("-s", str(running), "--json").stdout)["nodes"]))
    res = status("-s", str(running))
    assert res.returncode == 0, res.stderr
    for node in ("km0", "km1", "km2", "km3", "km4", "km5"):
        assert node in res.stdout
    assert "km4-km5" in res.stdout and "sessions" in res.stdout
    ops = _endpoints(running)["operations"]["ops"]
    by_ops = status("--ops", ops.removeprefix("http://"), "--json")
    assert by_ops.returncode == 0 and json.loads(by_ops.stdout)["network"] == "paper-poc"


@pytest.mark.nats
def test_controller_and_node_processes_export_what_they_run(
        topology_nats: Callable[..., NatsServer], tmp_path: Path) -> None:
    state = tmp_path / "state"
    nats_server = topology_nats(TOPO, state / "certs")  # secured: each process its own cert
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    common = ["-t", TOPO, "--bus", nats_server.url, "-s", str(state), "--db", db]
    ctl = start_keyplane("controller", *common, ready="controller ready",
                         log=tmp_path / "ctl.log")
    nodes = []
    try:
        for node in ("km0", "km1"):
            nodes.append(start_keyplane("node", "--id", node, *common,
                                        ready=f"node {node} ready",
                                        log=tmp_path / f"{node}.log"))
        wait_until(lambda: {"km0", "km1"} <= set(_endpoints(state).get("kms", {})))
        doc = _endpoints(state)
        km1_ops = doc["kms"]["km1"]["ops"]
        ctl_ops = doc["operations"]["ops"]

        def node_ready() -> bool:
            seen = _series(km1_ops)
            return ({"link": "km0-km1"} in seen.get("keyplane_link_skr_bps", [])
                    and {"node": "km1", "link": "km0-km1"} in seen.get(
                        "keyplane_keystore_bits", [])
                    and seen.get("keyplane_bus_up") == [{}])

        wait_until(node_ready)
        seen = _series(km1_ops)
        # a node exports its own KM and links only
        assert {lab["node"] for lab in seen["keyplane_keystore_bits"]} == {"km1"}
        assert {lab["link"] for lab in seen["keyplane_link_skr_bps"]} == {"km0-km1"}
        assert {"process": "node-km1"} in seen["keyplane_process_info"]

        def controller_sees_both() -> bool:
            s = _series(ctl_ops)
            return {lab.get("node") for lab in s.get("keyplane_keystore_bits", [])} >= {
                "km0", "km1"} and {"link": "km0-km1"} in s.get("keyplane_link_qber", [])

        wait_until(controller_sees_both)
        state_doc = httpx.get(doc["operations"]["dashboard"] + "api/state",
                              timeout=DEADLINE_S).json()
        reported = {n["id"] for n in state_doc["nodes"] if n["reported_s_ago"] is not None}
        assert reported >= {"km0", "km1"}
        # controls are off on the controller unless asked for
        r = httpx.post(doc["operations"]["dashboard"] + "api/links/km0-km1/cut",
                       headers={"X-Keyplane-Dashboard": "1"}, timeout=DEADLINE_S)
        assert r.status_code == 403
    finally:
        for proc in nodes:
            assert stop(proc) == 0, log_tail(proc)
        assert stop(ctl) == 0, log_tail(ctl)
