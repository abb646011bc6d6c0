"""Control plane and a node as separate OS processes over a real nats-server."""

import json
from pathlib import Path

import pytest

from keyplane.events import EventType, read_jsonl
from keyplane.services import NatsServer
from tests.support.processes import start_keyplane, stop, wait_until

ROOT = Path(__file__).resolve().parents[2]
TOPO = str(ROOT / "examples" / "paper_poc.yaml")

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
        finally:
            assert stop(node) == 0
    finally:
        assert stop(ctl) == 0
    events = read_jsonl(state / "events-controller.jsonl")
    registered = [e for e in events if e.type is EventType.topology_changed]
    assert [e.node for e in registered] == ["km1"]
