"""Honest failures: the demo's verdict, and errors that name their real cause."""

from __future__ import annotations

from typing import Any

import pytest

from keyplane.api.errors import map_exception
from keyplane.bus import MemoryBus
from keyplane.clock import RealClock
from keyplane.demo.run import demo_problems
from keyplane.errors import ControlPlaneUnreachable
from keyplane.events import EventStream
from keyplane.keymanager import KeyManager, KmSettings
from keyplane.messages import Qos
from keyplane.store import Database
from tests.support.km_net import CALLER_A, line_topology


def _session(pair: str, path: list[str], *, status: str = "closed", keys: int = 8,
             matched: int | None = None, error: str = "", rerouted_to: list[str] | None = None
             ) -> dict[str, Any]:
    matched = keys if matched is None else matched
    return {"pair": pair, "path": rerouted_to or path,
            "paths": [path] + ([rerouted_to] if rerouted_to else []), "status": status,
            "error": error, "keys_delivered": keys, "keys_matched": matched,
            "all_keys_matched": keys > 0 and matched == keys}


def _summary(*sessions: dict[str, Any], alarms: list[dict[str, Any]] | None = None
             ) -> dict[str, Any]:
    return {"sessions": list(sessions), "alarms": alarms or []}


OK = [_session("sae0-sae1", ["km0", "km1"]), _session("sae2-sae3", ["km2", "km0", "km3"])]


def test_a_demo_whose_sessions_all_succeed_has_no_problem() -> None:
    assert demo_problems(_summary(*OK), keys=8) == []


def test_a_failed_or_short_or_mismatched_session_is_a_problem() -> None:
    failed = _session("sae4-sae5", ["km4", "km5"], status="failed", keys=0,
                      error="ControlPlaneUnreachable: Access Control did not answer")
    short = _session("sae4-sae5", ["km4", "km5"], keys=3)
    wrong = _session("sae4-sae5", ["km4", "km5"], matched=7)
    for bad in (failed, short, wrong):
        (problem,) = demo_problems(_summary(*OK, bad), keys=8)
        assert problem.startswith("sae4-sae5")
    assert "Access Control did not answer" in demo_problems(_summary(failed), keys=8)[0]


def test_eve_demo_fails_when_every_session_failed_even_with_the_alarm() -> None:
    alarm = [{"link": "km4-km5", "kind": "qber_high"}]
    sessions = [_session(p, path, status="failed", keys=0, error="QosNotMet")
                for p, path in (("sae0-sae1", ["km0", "km1"]),
                                ("sae2-sae3", ["km2", "km0", "km3"]),
                                ("sae4-sae5", ["km4", "km5"]))]
    problems = demo_problems(_summary(*sessions, alarms=alarm), keys=8, eve_link="km4-km5")
    assert [p.split(":")[0] for p in problems] == ["sae0-sae1", "sae2-sae3"]


def test_eve_demo_needs_the_alarm_and_accepts_a_reroute_or_a_refusal_on_that_link() -> None:
    rerouted = _session("sae4-sae5", ["km4", "km5"], rerouted_to=["km4", "km0", "km5"])
    refused = _session("sae4-sae5", ["km5", "km4"], status="failed", keys=2, matched=2,
                       error="QosNotMet")
    alarm = [{"link": "km4-km5", "kind": "qber_high"}]
    assert demo_problems(_summary(*OK, rerouted, alarms=alarm), 8, "km4-km5") == []
    assert demo_problems(_summary(*OK, refused, alarms=alarm), 8, "km4-km5") == []
    undetected = demo_problems(_summary(*OK, rerouted), 8, "km4-km5")
    assert undetected == ["the eavesdropper on km4-km5 was not detected (no qber_high alarm)"]


async def test_no_control_plane_is_reported_as_such_not_as_a_missing_qkd_link(
        tmp_path: Any) -> None:
    from keyplane.store import sqlite_url

    bus = MemoryBus()  # nobody answers on the control topics
    db = await Database.open(sqlite_url(tmp_path / "km.db"))
    clock = RealClock()
    km = KeyManager("km0", line_topology(2), bus, db, clock, EventStream(clock),
                    KmSettings(auth_request_timeout_s=0.5))
    try:
        async with km:
            with pytest.raises(ControlPlaneUnreachable,
                               match=r"Access Control did not answer within 0\.5 s"):
                await km.open_connect(CALLER_A, "sa", "sb", Qos(), None)
    finally:
        await bus.close()
        await db.close()
    row = map_exception(ControlPlaneUnreachable("x"))
    assert row is not None and "QKD" not in row.message and "control plane" in row.message
