"""Control plane and a node as separate OS processes over a real nats-server."""

import json
import ssl
from pathlib import Path

import httpx
import pytest

from keyplane.events import EventType, read_jsonl
from tests.support.processes import log_tail, start_keyplane, stop, wait_until

ROOT = Path(__file__).resolve().parents[2]
TOPO = str(ROOT / "examples" / "paper_poc.yaml")

def ssl_ctx(ca: Path, cert: tuple[str, str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(*cert)
    return ctx


pytestmark = [pytest.mark.multiprocess, pytest.mark.nats, pytest.mark.slow]


def test_controller_and_node_processes_talk_over_nats(topology_nats, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    state = tmp_path / "state"
    nats_server = topology_nats(TOPO, state / "certs")
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    ctl = start_keyplane("controller", "-t", TOPO, "--bus", nats_server.url, "-s", str(state),
                         "--db", db, ready="controller ready", log=tmp_path / "ctl.log")
    try:
        node = start_keyplane("node", "--id", "km1", "-t", TOPO, "--bus", nats_server.url,
                              "-s", str(state), "--db", db, ready="node km1 ready",
                              log=tmp_path / "node.log")
        try:
            wait_until(lambda: (state / "endpoints.json").exists())
            doc = json.loads((state / "endpoints.json").read_text())
            assert "km1" in doc["kms"]
            assert (state / doc["saes"]["sae1"]["cert"]).exists()
            # the node's ETSI 015 agent answers the controller over mutual TLS
            ctl_cert = (str(state / doc["controller"]["cert"]), str(state / doc["controller"]["key"]))
            with httpx.Client(verify=ssl_ctx(state / doc["ca"], ctl_cert)) as client:
                r = client.get(doc["kms"]["km1"]["etsi015"]
                               + "/restconf/data/etsi-qkd-sdn-node:qkd_node/qkdn_capabilities")
            assert r.status_code == 200, r.text
            assert "etsi-qkd-sdn-node:qkdn_capabilities" in r.json()
        finally:
            assert stop(node) == 0, log_tail(node)
    finally:
        assert stop(ctl) == 0, log_tail(ctl)
    events = read_jsonl(state / "events-controller.jsonl")
    registered = [e for e in events if e.type is EventType.topology_changed]
    assert [e.node for e in registered] == ["km1"]


def test_controller_discovers_node_processes_and_serves_the_northbound_view(
        topology_nats, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Controller + two node processes over NATS: the SDN Controller reads both agents with
    the controller certificate and an orchestrator sees both nodes northbound."""
    state = tmp_path / "state"
    nats_server = topology_nats(TOPO, state / "certs")
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    ctl = start_keyplane("controller", "-t", TOPO, "--bus", nats_server.url, "-s", str(state),
                         "--db", db, ready="controller ready", log=tmp_path / "ctl.log")
    nodes = []
    try:
        for node in ("km1", "km2"):
            nodes.append(start_keyplane("node", "--id", node, "-t", TOPO, "--bus",
                                        nats_server.url, "-s", str(state), "--db", db,
                                        ready=f"node {node} ready",
                                        log=tmp_path / f"{node}.log"))

        def endpoints() -> dict:  # type: ignore[type-arg]
            path = state / "endpoints.json"
            return json.loads(path.read_text()) if path.exists() else {}

        wait_until(lambda: set(endpoints().get("kms", {})) == {"km1", "km2"})
        doc = endpoints()
        northbound = doc["controller"]["etsi015_northbound"]
        ctl_cert = (str(state / doc["controller"]["cert"]), str(state / doc["controller"]["key"]))
        with httpx.Client(verify=ssl_ctx(state / doc["ca"], ctl_cert)) as client:
            r = client.get(northbound + "/restconf/data/keyplane-network:network")
        assert r.status_code == 200, r.text
        view = {n["node-id"]: n for n in r.json()["keyplane-network:network"]["node"]}
        assert set(view) == {"km1", "km2"}
        assert all(n["reachable"] for n in view.values())
        assert {n["url"] for n in view.values()} == {
            doc["kms"][n]["etsi015"] for n in ("km1", "km2")}
    finally:
        for proc in nodes:
            assert stop(proc) == 0, log_tail(proc)
        assert stop(ctl) == 0, log_tail(ctl)
    discovered = [e for e in read_jsonl(state / "events-controller.jsonl")
                  if e.type is EventType.node_discovered]
    assert sorted(e.node for e in discovered) == ["km1", "km2"]
    assert all(e.data["status"] == "OPERATING" for e in discovered)
