"""keyplane status: renders a dashboard state; a clear error and exit 1 when nothing runs."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner

from keyplane.cli import app
from keyplane.config import load_topology
from keyplane.dashboard import NetworkView
from keyplane.messages import KmTelemetry, LinkAlarm, LinkTelemetry
from keyplane.services import free_port
from keyplane.status import StatusUnavailable, dashboard_url, fetch_state, render_status

runner = CliRunner()


def test_render_shows_nodes_links_sessions_and_alarms() -> None:
    view = NetworkView(load_topology("paper_poc"))
    view.on_link_telemetry(LinkTelemetry(link_id="km4-km5", node="km4", block_id=1,
                                         secret_bits=10, skr_bps=2500.0, qber=0.031, t=2.0))
    view.on_km_telemetry(KmTelemetry(node="km4", buffer_bits={"km4-km5": 81920}, t=2.5))
    view.on_alarm(LinkAlarm(link_id="km4-km5", kind="qber_high", qber=0.25, t=3.0,
                            message="possible eavesdropper"))
    console = Console(width=200, record=True)
    console.print(render_status(view.snapshot()))
    text = console.export_text()
    for needed in ("km0", "km5", "KM0 (hub)", "2.5 kbit/s", "3.10 %", "km4 10.0 KiB",
                   "qber_high", "possible eavesdropper", "0.5 s ago", "no report yet"):
        assert needed in text, needed


def test_status_without_a_running_network_fails_clearly(tmp_path: Path) -> None:
    res = runner.invoke(app, ["status", "-s", str(tmp_path)])
    assert res.exit_code == 1
    assert "nothing is running" in res.stderr and res.stdout == ""
    (tmp_path / "endpoints.json").write_text(json.dumps({"kms": {}}))
    res = runner.invoke(app, ["status", "-s", str(tmp_path)])
    assert res.exit_code == 1 and "names no dashboard" in res.stderr
    port = free_port()  # nothing listens there
    (tmp_path / "endpoints.json").write_text(json.dumps(
        {"operations": {"dashboard": f"http://127.0.0.1:{port}/dashboard/"}}))
    res = runner.invoke(app, ["status", "-s", str(tmp_path)])
    assert res.exit_code == 1 and "nothing answers" in res.stderr
    res = runner.invoke(app, ["status", "--ops", f"127.0.0.1:{port}"])
    assert res.exit_code == 1 and "nothing answers" in res.stderr


def test_a_process_without_a_dashboard_is_named() -> None:
    not_found = httpx.MockTransport(lambda request: httpx.Response(404, text="Not Found"))
    with pytest.raises(StatusUnavailable, match="serves no dashboard"):
        fetch_state(dashboard_url(ops="127.0.0.1:9100"), transport=not_found)
    other = httpx.MockTransport(lambda request: httpx.Response(200, json={"hello": 1}))
    with pytest.raises(StatusUnavailable, match="not a keyplane dashboard"):
        fetch_state(dashboard_url(ops="127.0.0.1:9100"), transport=other)
    assert dashboard_url(ops="http://h:1/") == "http://h:1/dashboard/"
