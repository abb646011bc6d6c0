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
