"""The nats-server configuration ``keyplane nats-config`` writes for a topology."""

from __future__ import annotations

import subprocess
from pathlib import Path

from typer.testing import CliRunner

from keyplane.bus import topics
from keyplane.bus.base import topic_matches
from keyplane.bus.natsconf import control_user, km_user, operator_user, topology_users
from keyplane.cli import app
from keyplane.config import load_topology
from keyplane.services import find_nats_server

ROOT = Path(__file__).resolve().parents[2]
PAPER = load_topology(ROOT / "examples" / "paper_poc.yaml")


def _may(patterns: tuple[str, ...], subject: str) -> bool:
    return any(topic_matches(p, subject) for p in patterns)


def test_no_element_may_subscribe_to_everything() -> None:
    for user in topology_users(PAPER):
        assert ">" not in user.subscribe and "*" not in user.subscribe, user.subject
        assert not _may(user.subscribe, "keyplane.km.anything.at.all"), user.subject


def test_a_km_uses_only_its_own_topics_and_its_neighbours_relay() -> None:
    km2 = km_user(PAPER, "km2")  # paper PoC: km2's only link is to km0
    assert _may(km2.publish, topics.km_relay("km0"))
    assert not _may(km2.publish, topics.km_relay("km3"))  # not a neighbour
    assert not _may(km2.publish, topics.km_relay("km2"))
    for node in ("km0", "km2", "km3"):  # nobody's configuration or deletion
        assert not _may(km2.publish, topics.km_config(node))
    assert not _may(km2.publish, topics.SDN) and not _may(km2.publish, topics.ROUTING)
    assert not _may(km2.publish, "keyplane.control.link.km0-km2")
    assert _may(km2.publish, topics.ACCESS) and _may(km2.publish, topics.ADMISSION)
    assert _may(km2.subscribe, topics.km_config("km2"))
    assert not _may(km2.subscribe, topics.km_config("km0"))
    assert not _may(km2.subscribe, topics.km_relay("km0"))
    assert not _may(km2.subscribe, topics.ACCESS)  # cannot answer Access Control requests
    assert _may(km2.subscribe, "_INBOX.km.km2.x.y") and not _may(km2.subscribe, "_INBOX.km.km0.x")


def test_only_the_control_plane_publishes_configuration() -> None:
    ctl = control_user()
    assert _may(ctl.publish, topics.km_config("km4"))
    assert not _may(ctl.publish, topics.km_relay("km4"))
    assert not any(_may(u.publish, topics.km_config("km4"))
                   for u in [*(km_user(PAPER, n.id) for n in PAPER.nodes), operator_user()])


def test_cli_writes_a_config_nats_server_accepts(tmp_path: Path) -> None:
    out = tmp_path / "nats.conf"
    res = CliRunner().invoke(app, ["nats-config", "-t", str(ROOT / "examples" / "paper_poc.yaml"),
                                   "--certs", str(tmp_path / "certs"), "-o", str(out),
                                   "--listen", "127.0.0.1:14222"])
    assert res.exit_code == 0, res.output
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    text = out.read_text()
    assert "verify_and_map: true" in text and '"CN=km0,OU=km,O=keyplane"' in text
    assert (tmp_path / "certs" / "nats" / "server.pem").exists()
    check = subprocess.run([find_nats_server(), "-t", "-c", str(out)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_cli_refuses_a_bad_listen_address(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["nats-config", "-t", str(ROOT / "examples" / "paper_poc.yaml"),
                                   "--certs", str(tmp_path / "certs"), "-o",
                                   str(tmp_path / "n.conf"), "--listen", "nohost"])
    assert res.exit_code == 2 and "HOST:PORT" in res.output
    assert not (tmp_path / "n.conf").exists()
