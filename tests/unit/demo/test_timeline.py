import itertools
from pathlib import Path

import pytest

from keyplane.clock import VirtualClock
from keyplane.demo.timeline import render_timeline
from keyplane.events import EventStream, EventType, MemorySink


async def test_timeline_renders_one_lane_per_km_with_fig4_markers(tmp_path: Path) -> None:
    clock = VirtualClock()
    mem = MemorySink()
    stream = EventStream(clock, [mem])
    for node in ("km2", "km0", "km3"):
        stream.emit(EventType.request_arrived, "km", node=node, session="s-23")
        await clock.advance(0.002)
        stream.emit(EventType.key_relayed, "km", node=node, session="s-23", hop="km2->km0")
    stream.emit(EventType.key_delivered, "km", node="km3", session="s-23", key_id="abc")
    png, page = render_timeline(list(mem.events), tmp_path)
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = page.read_text()
    assert "<svg" in text and text.count("<tr><td>") == 7
    for lane in ("KM0", "KM2", "KM3"):
        assert lane in text
    assert "key relayed" in text


def test_timeline_without_matplotlib_writes_the_page_and_names_the_extra(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import keyplane.demo.timeline as timeline
    from keyplane.extras import MissingDependency

    def missing() -> None:
        raise MissingDependency("matplotlib")

    monkeypatch.setattr(timeline, "_pyplot", missing)
    stream = EventStream(VirtualClock(), [mem := MemorySink()])
    stream.emit(EventType.request_arrived, "km", node="km0", session="s-1")
    png, page = render_timeline(list(mem.events), tmp_path)
    assert png is None and not (tmp_path / "timeline.png").exists()
    text = page.read_text()
    assert "pip install &#x27;keyplane[plots]&#x27;" in text and text.count("<tr><td>") == 1


def test_missing_dependency_names_its_extra() -> None:
    from keyplane.extras import MissingDependency, require

    with pytest.raises(MissingDependency, match=r"keyplane\[postgres\]"):
        raise MissingDependency("asyncpg")
    assert require("json").dumps(1) == "1"
    with pytest.raises(MissingDependency, match="keyplane"):
        require("keyplane_no_such_module_xyz")


def _busy_events() -> list:  # type: ignore[type-arg]
    """Three sessions crossing KM0 with steps at the same instants (worst case for overlap)."""
    import asyncio

    clock = VirtualClock()
    mem = MemorySink()
    stream = EventStream(clock, [mem])

    async def run() -> None:
        stream.emit(EventType.element_started, "control")  # the run's first event
        await clock.advance(0.5)
        for i, (a, b) in enumerate([("km0", "km1"), ("km2", "km3"), ("km4", "km5")]):
            sid = f"s{i}-0000000000"
            for node in (a, "km0", b):
                stream.emit(EventType.request_arrived, "km", node=node, session=sid,
                            sae=f"sae{2 * i}", peer=f"sae{2 * i + 1}")
                stream.emit(EventType.configured, "km", node=node, session=sid)
                stream.emit(EventType.session_operative, "km", node=node, session=sid)
            for _ in range(5):
                stream.emit(EventType.key_material_ready, "km", node="km0", session=sid)
                stream.emit(EventType.key_relayed, "km", node="km0", session=sid)
                stream.emit(EventType.key_delivered, "km", node=b, session=sid)
                await clock.advance(0.0001)
        stream.emit(EventType.alarm, "monitoring", node="km4", link="km4-km5")
        stream.emit(EventType.authenticated, "access", node="km0")  # no session: not drawn

    asyncio.run(run())
    return list(mem.events)


def test_fig4_colours_are_the_papers() -> None:
    from keyplane.demo.fig4 import FIG4_MARKERS

    assert FIG4_MARKERS[EventType.request_arrived][2] == "#1f77b4"  # blue
    assert FIG4_MARKERS[EventType.key_material_ready][2] == "#ff7f0e"  # orange
    assert FIG4_MARKERS[EventType.key_relayed][2] == "#8c564b"  # brown
    assert len({c for _, _, c in FIG4_MARKERS.values()}) == len(FIG4_MARKERS)


def test_fig4_no_marker_hides_another_and_sessions_have_their_own_rows() -> None:
    from keyplane.demo.fig4 import layout, overlapping

    events = _busy_events()
    lay = layout(events)
    assert overlapping(lay) == []
    assert lay.lanes == ("km0", "km1", "km2", "km3", "km4", "km5")
    drawn = {m.event.event_id for m in lay.markers}
    assert all(e.event_id in drawn for e in events
               if e.session and e.type is not EventType.element_started)
    assert not any(m.event.element == "access" for m in lay.markers)
    # at KM0 the three sessions occupy disjoint bands, each with its own ring colour
    bands = {}
    for m in lay.markers:
        if m.event.node == "km0":
            lo, hi = bands.get(m.event.session, (1e9, -1e9))
            bands[m.event.session] = (min(lo, m.y_px), max(hi, m.y_px))
    spans = sorted(bands.values())
    assert len(spans) == 3 and all(a[1] < b[0] for a, b in itertools.pairwise(spans))
    assert len({ring for _, ring in lay.sessions}) == len(lay.sessions)
    # every marker sits inside its lane
    for m in lay.markers:
        i = lay.lanes.index(m.event.node)
        assert lay.lane_top_px[i] < m.y_px < lay.lane_top_px[i] + lay.lane_height_px[i]


def test_fig4_png_and_table_share_the_runs_first_event_as_origin(tmp_path: Path) -> None:
    from keyplane.demo.fig4 import layout

    events = _busy_events()
    lay = layout(events)
    assert lay.t0 == events[0].t  # the element_started event, which is not drawn
    first = min(lay.markers, key=lambda m: m.x_px)
    assert first.x_px == pytest.approx(lay.marker_px + (first.event.t - events[0].t)
                                       * lay.px_per_s)
    _, page = render_timeline(events, tmp_path)
    first_row = page.read_text().split("<tbody>", 1)[1].split("</td>", 1)[0]
    assert first_row.strip().endswith("0.000")
