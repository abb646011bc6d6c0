"""Control plane and a node as separate OS processes over a real nats-server."""

import json
import ssl
from pathlib import Path

import httpx
import pytest

from keyplane.events import EventType, read_jsonl
from keyplane.services import NatsServer
from tests.support.processes import start_keyplane, stop, wait_until

ROOT = Path(__file__).resolve().parents[2]
TOPO = str(ROOT / "examples" / "paper_poc.yaml")

def ssl_ctx(ca: Path, cert: tuple[str, str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(*cert)
    return ctx


pytestmark = [pytest.mark.multiprocess, pytest.mark.nats, pytest.mark.slow]


def test_controller_and_node_processes_talk_over_nats(nats_server: NatsServer,
                                                      tmp_path: Path) -> None:
    state = tmp_path / "state"
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
            assert stop(node) == 0
    finally:
        assert stop(ctl) == 0
    events = read_jsonl(state / "events-controller.jsonl")
    registered = [e for e in events if e.type is EventType.topology_changed]
    assert [e.node for e in registered] == ["km1"]
