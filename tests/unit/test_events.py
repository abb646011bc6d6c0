import asyncio
from pathlib import Path

import pytest

from keyplane.bus import MemoryBus, Message
from keyplane.clock import VirtualClock
from keyplane.events import (
    BusSink,
    EventMessage,
    EventStream,
    EventType,
    JsonlSink,
    MemorySink,
    read_jsonl,
)
from tests.support.deadlines import DEADLINE_S


async def test_event_stream_stamps_ids_time_and_per_node_sequence(clock: VirtualClock,
                                                                  tmp_path: Path) -> None:
    mem = MemorySink()
    jsonl = JsonlSink(tmp_path / "events.jsonl")
    stream = EventStream(clock, [mem, jsonl])
    stream.emit(EventType.request_arrived, "km", node="km1", session="s1", sae="sae1")
    await clock.advance(1.5)
    stream.emit(EventType.authenticated, "access", node="km1", session="s1")
    stream.emit(EventType.request_arrived, "km", node="km2")
    stream.close()
    events = list(mem.events)
    assert [e.event_id for e in events] == [1, 2, 3]
    assert [e.seq for e in events] == [1, 2, 1]
    assert events[1].t == 1.5 and events[0].data == {"sae": "sae1"}
    assert read_jsonl(tmp_path / "events.jsonl") == events


def test_event_stream_refuses_key_material_fields(clock: VirtualClock) -> None:
    stream = EventStream(clock, [MemorySink()])
    with pytest.raises(ValueError, match="key material"):
        stream.emit(EventType.key_delivered, "km", key="c2VjcmV0")


async def test_event_bus_sink_publishes_on_element_topic(clock: VirtualClock) -> None:
    bus = MemoryBus()
    got: list[Message] = []

    async def h(topic: str, msg: Message) -> None:
        got.append(msg)

    await bus.subscribe("keyplane.events.>", h)
    stream = EventStream(clock, [BusSink(bus)])
    stream.emit(EventType.alarm, "monitoring", link="km0-km1")
    async with asyncio.timeout(DEADLINE_S):
        while not got:
            await asyncio.sleep(0.01)  # poll interval; the timeout above bounds it
    assert isinstance(got[0], EventMessage) and got[0].event.type is EventType.alarm
    await bus.close()


async def test_memory_sink_wait_for_sees_future_events(clock: VirtualClock) -> None:
    mem = MemorySink()
    stream = EventStream(clock, [mem])
    waiter = asyncio.create_task(mem.wait_for(lambda e: e.type is EventType.session_closed))
    await asyncio.sleep(0)  # the waiter's task starts (one loop turn, no real time)
    stream.emit(EventType.session_closed, "km", session="s")
    assert (await asyncio.wait_for(waiter, DEADLINE_S)).session == "s"


def test_event_stream_makes_events_as_pydantic_model_construct_does(
        clock: VirtualClock) -> None:
    # the stream builds events without model_construct's per-field loop (hot path); what it
    # makes must be the same model: equal, same fields set, same JSON, frozen, copyable
    from keyplane.events import Event

    event = EventStream(clock).emit(EventType.key_delivered, "km", node="km1", session="s1",
                                    key_count=3)
    ref = Event.model_construct(event_id=event.event_id, seq=event.seq, t=event.t,
                                wall=event.wall, type=EventType.key_delivered, element="km",
                                node="km1", session="s1", data={"key_count": 3})
    assert event == ref
    assert event.model_fields_set == ref.model_fields_set
    assert event.model_dump_json() == ref.model_dump_json()
    assert Event.model_validate_json(event.model_dump_json()) == event
    assert event.model_copy(update={"seq": 9}).seq == 9
    with pytest.raises(ValueError):
        event.seq = 2  # type: ignore[misc]


def test_event_constructor_falls_back_to_model_construct_when_the_fast_one_differs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import keyplane.events as ev

    monkeypatch.setattr(ev, "_construct_event",
                        lambda values: ev.Event.model_construct(**{**values, "seq": 0}))
    assert ev._event_constructor() is ev._construct_event_slow
