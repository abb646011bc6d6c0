"""Logging set-up: quiet by default, one line per notable event, JSON on request."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from keyplane.clock import VirtualClock
from keyplane.events import EventStream, EventType
from keyplane.logsetup import NotableEvents, setup_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level
              for name in ("keyplane", "keyplane.events", "alembic", "uvicorn.error", "httpx")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in levels.items():
        logging.getLogger(name).setLevel(lvl)
    logging.captureWarnings(False)


def _emit_session(stream: EventStream) -> None:
    sid = "148a8f3e-3795-4a20-8ba6-4e0b8fdba4d4"
    # the KMs of the path report too; only Admission Control's decision is a notable line
    stream.emit(EventType.session_operative, "km", node="km2", session=sid)
    stream.emit(EventType.session_operative, "admission", node="km2", session=sid,
                path=["km2", "km0", "km3"], rate_bps=100_000.0, priority=3)
    stream.emit(EventType.key_delivered, "km", node="km2", session=sid, key_count=1)
    stream.emit(EventType.alarm, "monitoring", link="km4-km5", kind="qber_high",
                message="QBER 0.25 above 0.11: possible eavesdropper")
    stream.emit(EventType.session_closed, "admission", session=sid, reason="close from km2",
                path=["km2", "km0", "km3"])


def test_quiet_default_keeps_notable_events_and_drops_routine_lines(restore_logging: None
                                                                    ) -> None:
    out = io.StringIO()
    setup_logging(stream=out)
    logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
    logging.getLogger("uvicorn.error").info("Started server process [1]")
    logging.getLogger("httpx").info('HTTP Request: GET https://x/ "HTTP/1.1 200 OK"')
    logging.getLogger("keyplane.api.httpserver").info("km-api-km0 server listening on x")
    logging.getLogger("keyplane.keymanager.relay").warning("something is wrong")
    _emit_session(EventStream(VirtualClock(), [NotableEvents()]))
    lines = out.getvalue().splitlines()
    assert len(lines) == 4, lines
    assert "something is wrong" in lines[0]
    assert "session 148a8f3e operative over km2 -> km0 -> km3, 100 kbit/s, priority 3" in lines[1]
    assert "WARNING" in lines[2] and "alarm qber_high on link km4-km5" in lines[2]
    assert "session 148a8f3e closed (close from km2)" in lines[3]


def test_verbose_shows_debug_and_library_info(restore_logging: None) -> None:
    out = io.StringIO()
    setup_logging(verbose=True, stream=out)
    logging.getLogger("keyplane.physical.modules").debug("dropping stale frame 3")
    logging.getLogger("uvicorn.error").info("Started server process [1]")
    logging.getLogger("uvicorn.error").debug("library debug stays out")
    logging.getLogger("httpx").info("HTTP Request: GET https://km/api/v1/keys/sae/dec_keys"
                                    "?key_ID=1234")
    _emit_session(EventStream(VirtualClock(), [NotableEvents()]))
    text = out.getvalue()
    assert "dropping stale frame 3" in text and "Started server process" in text
    assert "library debug stays out" not in text
    assert "key_ID" not in text  # request URLs never reach the log
    assert "key_delivered from km at km2" in text  # every event at DEBUG


def test_json_format_is_one_object_per_line(restore_logging: None) -> None:
    out = io.StringIO()
    setup_logging(fmt="json", stream=out)
    _emit_session(EventStream(VirtualClock(start=5.0), [NotableEvents()]))
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("keyplane.x").exception("failed")
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [d["level"] for d in docs] == ["INFO", "WARNING", "INFO", "ERROR"]
    assert docs[0]["logger"] == "keyplane.events"
    assert docs[0]["event"]["type"] == "session_operative"
    assert docs[0]["event"]["data"]["path"] == ["km2", "km0", "km3"]
    assert docs[1]["event"]["data"]["kind"] == "qber_high"
    assert "ValueError: boom" in docs[3]["exc"] and docs[3]["ts"].endswith("+00:00")


def test_setup_replaces_its_own_handler_and_refuses_unknown_formats(restore_logging: None
                                                                   ) -> None:
    setup_logging(stream=io.StringIO())
    setup_logging(stream=io.StringIO())
    assert sum(h.get_name() == "keyplane" for h in logging.getLogger().handlers) == 1
    with pytest.raises(ValueError, match="text, json"):
        setup_logging(fmt="xml")  # type: ignore[arg-type]
