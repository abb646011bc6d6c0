"""The dashboard's model and HTTP side (the browser test is tests/integration/test_dashboard_browser.py)."""

from __future__ import annotations

import json

import httpx
import pytest

from keyplane.clock import VirtualClock
from keyplane.config import load_topology
from keyplane.dashboard import NetworkView, create_dashboard_app
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.messages import KmTelemetry, LinkAlarm, LinkTelemetry

TOPO = load_topology("paper_poc")


def test_view_folds_telemetry_alarms_and_events_into_the_snapshot() -> None:
    view = NetworkView(TOPO)
    snap = view.snapshot()
    assert {n["id"] for n in snap["nodes"]} == {f"km{i}" for i in range(6)}
    assert all(0 <= n["x"] <= 1000 and 0 <= n["y"] <= 1000 for n in snap["nodes"])
    view.on_link_telemetry(LinkTelemetry(link_id="km0-km2", node="km0", block_id=1,
                                         secret_bits=4000, skr_bps=12_000.0, qber=0.021, t=5.0))
    view.on_km_telemetry(KmTelemetry(node="km0", buffer_bits={"km0-km2": 81920},
                                     sessions={"km0-km2": 1}, t=5.5))
    view.on_alarm(LinkAlarm(link_id="km4-km5", kind="qber_high", qber=0.2, t=6.0))
    clock = VirtualClock(start=7.0)
    stream = EventStream(clock, [view_sink := MemorySink()])
    for e_type, node, data in [
            (EventType.request_arrived, "km2", {"sae": "sae2", "peer": "sae3"}),
            (EventType.route_computed, "km2", {"path": ["km2", "km0", "km3"]}),
            (EventType.session_operative, "km2", {}),
            (EventType.key_delivered, "km2", {"key_count": 3}),
            (EventType.key_delivered, "km3", {"key_count": 3})]:
        stream.emit(e_type, "km", node=node, session="s-1", **data)
    for e in view_sink.events:
        view.on_event(e)
    snap = view.snapshot()
    link = next(x for x in snap["links"] if x["id"] == "km0-km2")
    assert link["skr_bps"] == 12_000.0 and link["qber"] == 0.021
    assert link["store_bits"] == {"km0": 81920} and link["sessions"] == 1
    assert [a["link"] for a in snap["alarms"]] == ["km4-km5"]
    (session,) = snap["sessions"]
    assert session["path"] == ["km2", "km0", "km3"] and session["keys"] == 3
    assert session["pair"] == "sae2 - sae3" and session["state"] == "operative"
    assert {m["type"] for m in snap["timeline"]} >= {"request", "operative", "response"}
    view.on_alarm(LinkAlarm(link_id="km4-km5", kind="cleared", t=9.0))
    assert view.snapshot()["alarms"] == []
    assert "key" not in json.dumps(snap["timeline"]).replace("key ready", "")


async def test_app_serves_state_page_and_guards_controls() -> None:
    view = NetworkView(TOPO)
    calls: list[tuple[str, str, float]] = []

    async def control(link_id: str, action: str, fraction: float) -> str:
        calls.append((link_id, action, fraction))
        return "down" if action == "cut" else "up"

    app = create_dashboard_app(view, control)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as c:
        page = await c.get("/")
        assert page.status_code == 200 and 'data-controls="true"' in page.text
        assert (await c.get("/static/vendor/echarts.min.js")).status_code == 200
        state = (await c.get("/api/state")).json()
        assert state["network"] == "paper-poc" and len(state["links"]) == 6
        r = await c.post("/api/links/km4-km5/cut")
        assert r.status_code == 403 and calls == []  # no CSRF header
        h = {"X-Keyplane-Dashboard": "1"}
        assert (await c.post("/api/links/nope/cut", headers=h)).status_code == 404
        assert (await c.post("/api/links/km4-km5/explode", headers=h)).status_code == 422
        r = await c.post("/api/links/km4-km5/eve?fraction=0.25", headers=h)
        assert r.status_code == 200 and calls == [("km4-km5", "eve", 0.25)]
        assert (await c.post("/api/links/km4-km5/cut", headers=h)).json()["state"] == "down"


async def test_app_without_controls_refuses_them() -> None:
    app = create_dashboard_app(NetworkView(TOPO), None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as c:
        assert 'data-controls="false"' in (await c.get("/")).text
        r = await c.post("/api/links/km4-km5/cut", headers={"X-Keyplane-Dashboard": "1"})
        assert r.status_code == 403


@pytest.mark.parametrize("name", ["generated_100", "long_haul"])
def test_layout_scales_to_the_examples(name: str) -> None:
    snap = NetworkView(load_topology(name)).snapshot()
    xs = {(n["x"], n["y"]) for n in snap["nodes"]}
    assert len(xs) == len(snap["nodes"])  # no two nodes on the same spot
