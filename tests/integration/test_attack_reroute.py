"""A 25 % intercept-resend eavesdropper on a live session's link, end to end in one process:
real key managers, real emulated links, the whole control plane and the ETSI 015 agents.

The attack is flagged (``eavesdropper_suspected``, below the 11 % abort threshold), shown in
the ETSI 015 view as an ``alarm`` notification, the session moves to a path around the
link, and the applications get every key they asked for, identical at both ends, none
lost. (How fast it is flagged is measured in clock time on the virtual clock, in
tests/unit/control/test_monitoring_attacks.py; here the clock is real, so nothing is timed.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from keyplane.bus import MemoryBus, Message, topics
from keyplane.clock import RealClock
from keyplane.config import load_topology
from keyplane.demo.scenario import PairResult, SaePair, ServiceEndpoint, run_pair
from keyplane.events import Event, EventStream, EventType, MemorySink
from keyplane.keymanager.interface import Caller
from keyplane.messages import SdnNotification
from keyplane.physical.wire import LinkCommand, LinkCommandReply, control_topic
from keyplane.runtime import Embedded, RuntimeContext
from keyplane.store import Database, sqlite_url
from tests.support.deadlines import DEADLINE_S

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = DEADLINE_S  # real-time bound on each stage (KEYPLANE_TEST_DEADLINE_S)
KEYS = 120


def _is(kind: str):  # type: ignore[no-untyped-def]
    return lambda e: (e.type is EventType.alarm and e.element == "monitoring"
                      and e.data.get("kind") == kind)


async def test_eavesdropper_on_a_live_session_link_is_flagged_and_routed_around(
        tmp_path: Path) -> None:
    topo = load_topology(ROOT / "examples" / "paper_poc.yaml")
    clock = RealClock()
    sink = MemorySink()
    events = EventStream(clock, [sink])
    db = await Database.open(sqlite_url(tmp_path / "keyplane.db"))
    bus = MemoryBus()
    notes: list[SdnNotification] = []

    async def on_note(_topic: str, msg: Message) -> None:
        if isinstance(msg, SdnNotification):
            notes.append(msg)

    ctx = RuntimeContext(topology=topo, bus=bus, db=db, clock=clock, events=events,
                         state_dir=tmp_path / "state", seed=3)
    pair = SaePair("sae4", "sae5")  # adjacent: km4-km5, the detour is km4-km0-km5
    result = PairResult(pair)
    try:
        async with Embedded(ctx) as emb:
            await bus.subscribe(topics.sdn_notifications("*"), on_note)
            a = ServiceEndpoint("sae4", emb.km("km4"), Caller("CN=erin,O=keyplane-demo"))
            b = ServiceEndpoint("sae5", emb.km("km5"), Caller("CN=frank,O=keyplane-demo"))
            run = asyncio.create_task(run_pair(pair, a, b, keys=KEYS, interval_s=0.05,
                                               timeout_s=WAIT_S, result=result))

            def delivered(n: int):  # type: ignore[no-untyped-def]
                return lambda e: (e.type is EventType.key_delivered and e.node == "km4"
                                  and result.keys_delivered >= n)

            async with asyncio.timeout(WAIT_S):
                await sink.wait_for(delivered(5))
            # the same command as `keyplane link eve`: the link's worker carries it out
            reply = await bus.request(control_topic("km4-km5"), LinkCommand(
                link_id="km4-km5", action="eve", position_km=5.0, fraction=0.25),
                timeout_s=WAIT_S)
            assert isinstance(reply, LinkCommandReply) and reply.ok, reply
            async with asyncio.timeout(WAIT_S):
                alarm: Event = await sink.wait_for(_is("eavesdropper_suspected"))
                rerouted: Event = await sink.wait_for(
                    lambda e: e.type is EventType.session_rerouted and bool(e.data.get("ok")))
                await run
    finally:
        await bus.close()
        await db.close()

    assert alarm.data["link"] == "km4-km5"
    assert alarm.data["qber"] < 0.11  # flagged below the abort threshold
    assert rerouted.data["path"] in (["km4", "km0", "km5"], ["km5", "km0", "km4"])
    # no key lost: every index delivered at both ends, the same key under the same key_ID
    assert result.status == "closed", result.error
    assert result.keys_delivered == KEYS and result.keys_matched == KEYS
    assert result.lost_indexes == []
    assert len(set(result.key_ids)) == KEYS
    # the ETSI 015 view: both nodes of the link published an alarm notification for it
    alarms = [n for n in notes if n.name == "alarm"
              and "eavesdropper_suspected" in str(n.content)]
    assert {n.node for n in alarms} >= {"km4", "km5"}
