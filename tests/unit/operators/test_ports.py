"""Ports that can be pinned: per node in the topology, or on the command line."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

from keyplane.bus import MemoryBus
from keyplane.cli import app
from keyplane.clock import RealClock
from keyplane.config import parse_topology
from keyplane.errors import ConfigError
from keyplane.events import EventStream
from keyplane.runtime import ControlRuntime, NodeRuntime, RuntimeContext
from keyplane.services import free_port
from keyplane.store import Database, sqlite_url

runner = CliRunner()


def _topology(ports_a: str = "", ports_b: str = "") -> str:
    return f"""
version: 1
nodes:
  - {{id: a{ports_a}}}
  - {{id: b{ports_b}}}
links:
  - {{endpoints: [a, b], length_km: 5, protocol: analytic}}
users:
  - {{id: u, certificate_subject: "CN=u"}}
applications:
  - {{sae_id: sa, owner: u, node: a}}
  - {{sae_id: sb, owner: u, node: b}}
"""


def test_a_port_given_twice_on_one_address_is_refused_with_every_clash() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_topology(_topology(", ports: {api: 9001, etsi015: 9001}",
                                 ", ports: {api: 9001, ops: 9002}"))
    text = str(exc.value)
    assert "nodes[0].ports.etsi015: port 9001 on 127.0.0.1 is also nodes[0].ports.api" in text
    assert "nodes[1].ports.api: port 9001 on 127.0.0.1 is also nodes[0].ports.api" in text
    # other hosts may use the same port
    parse_topology(_topology(", ports: {api: 9001}", ", address: 10.0.0.2, ports: {api: 9001}"))
    with pytest.raises(ConfigError):
        parse_topology(_topology(", ports: {api: 70000}"))


async def test_a_node_serves_on_its_pinned_ports(tmp_path: Path) -> None:
    api, agent = free_port(), free_port()
    topo = parse_topology(_topology(f", ports: {{api: {api}, etsi015: {agent}}}"))
    clock = RealClock()
    bus = MemoryBus()
    db = await Database.open(sqlite_url(tmp_path / "ports.db"))
    ctx = RuntimeContext(topology=topo, bus=bus, db=db, clock=clock,
                         events=EventStream(clock), state_dir=tmp_path / "state")
    try:
        async with ControlRuntime(ctx, northbound_port=None), \
                NodeRuntime(ctx, "a", run_links=False) as node:
            assert urlsplit(node.endpoints["etsi014"]).port == api
            assert urlsplit(node.endpoints["etsi015"]).port == agent
    finally:
        await bus.close()
        await db.close()


def test_node_port_flags_override_the_topology_and_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(_topology(", ports: {etsi015: 9005}"))
    res = runner.invoke(app, ["node", "--id", "a", "-t", str(path), "--bus",
                              "nats://127.0.0.1:1", "-s", str(tmp_path / "s"),
                              "--api-port", "9005"])
    assert res.exit_code == 2
    said = " ".join(res.output.split())  # the console wraps long lines
    assert "nodes[0].ports.etsi015: port 9005 on 127.0.0.1 is also nodes[0].ports.api" in said
