"""Bus contract: every test runs on the in-memory bus and on a real nats-server."""

from __future__ import annotations

import asyncio
import json

import pytest

from keyplane.bus import (
    Bus,
    Message,
    Subscription,
    decode,
    encode,
    topic_matches,
    unsubscribe_all,
)
from keyplane.errors import BusClosed, BusTimeout, MessageDecodeError, NoResponders
from keyplane.messages import (
    ConfigAck,
    KeepAlive,
    LinkTelemetry,
    Qos,
    SessionConfig,
    SessionOpenRequest,
)
from tests.support.deadlines import DEADLINE_S


def _config(node: str = "km1") -> SessionConfig:
    return SessionConfig(session_id="s1", node=node, role="source", source_sae="a",
                         destination_sae="b", bucket_size_bits=1024, token_rate_bps=100.0,
                         idle_timeout_s=30.0, next_km="km0")


async def _until(pred, timeout: float = DEADLINE_S) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.005)  # poll interval of a bounded wait


async def _delivered(bus: Bus) -> None:
    """Return once everything published on ``bus`` before the call has been handled.

    A marker published now comes back after them (both buses deliver one publisher's
    messages in order, and run their handlers in arrival order), so "nothing more arrived"
    is checked on an event, not by waiting a fixed time that a busy machine can outlast.
    """
    seen = asyncio.Event()

    async def mark(_topic: str, _msg: Message) -> None:
        seen.set()

    sub = await bus.subscribe("t.marker", mark)
    try:
        await bus.publish("t.marker", KeepAlive(session_id="marker", node="n"))
        async with asyncio.timeout(DEADLINE_S):
            await seen.wait()
    finally:
        await sub.unsubscribe()


async def test_bus_publish_reaches_exact_and_wildcard_subscribers(bus: Bus) -> None:
    got: dict[str, list[tuple[str, Message]]] = {"exact": [], "star": [], "tail": []}

    def rec(name: str):  # type: ignore[no-untyped-def]
        async def h(topic: str, msg: Message) -> None:
            got[name].append((topic, msg))
        return h

    await bus.subscribe("keyplane.km.km1.config", rec("exact"))
    await bus.subscribe("keyplane.km.*.config", rec("star"))
    await bus.subscribe("keyplane.>", rec("tail"))
    await bus.publish("keyplane.km.km1.config", _config())
    await bus.publish("keyplane.km.km2.config", _config("km2"))
    await bus.publish("keyplane.telemetry.km.km1", KeepAlive(session_id="s", node="km1"))
    await _until(lambda: len(got["tail"]) == 3 and len(got["star"]) == 2)
    await _delivered(bus)
    assert [t for t, _ in got["exact"]] == ["keyplane.km.km1.config"]
    assert sorted(t for t, _ in got["star"]) == ["keyplane.km.km1.config", "keyplane.km.km2.config"]
    assert len(got["tail"]) == 3
    topic, msg = got["exact"][0]
    assert isinstance(msg, SessionConfig) and msg == _config()


async def test_bus_request_gets_handler_reply(bus: Bus) -> None:
    async def handler(topic: str, msg: Message) -> Message:
        assert isinstance(msg, SessionConfig)
        return ConfigAck(session_id=msg.session_id, node=msg.node, ok=True)

    await bus.subscribe("keyplane.km.km1.config", handler)
    reply = await bus.request("keyplane.km.km1.config", _config(), timeout_s=2.0)
    assert reply == ConfigAck(session_id="s1", node="km1", ok=True)


async def test_bus_request_without_subscriber_raises_no_responders(bus: Bus) -> None:
    with pytest.raises(NoResponders):
        await bus.request("keyplane.km.nobody.config", _config(), timeout_s=1.0)


async def test_bus_request_with_silent_handler_times_out(bus: Bus) -> None:
    async def silent(topic: str, msg: Message) -> None:
        return None

    await bus.subscribe("keyplane.km.km1.config", silent)
    with pytest.raises(BusTimeout):
        await bus.request("keyplane.km.km1.config", _config(), timeout_s=0.05)


async def test_bus_unsubscribe_stops_delivery(bus: Bus) -> None:
    got: list[Message] = []

    async def h(topic: str, msg: Message) -> None:
        got.append(msg)

    sub = await bus.subscribe("keyplane.a", h)
    await bus.publish("keyplane.a", KeepAlive(session_id="1", node="n"))
    await _until(lambda: len(got) == 1)
    await sub.unsubscribe()
    await sub.unsubscribe()  # idempotent
    await bus.publish("keyplane.a", KeepAlive(session_id="2", node="n"))
    await _delivered(bus)
    assert len(got) == 1


async def test_bus_queue_group_delivers_each_message_once(bus: Bus) -> None:
    got: list[str] = []

    def member(name: str):  # type: ignore[no-untyped-def]
        async def h(topic: str, msg: Message) -> None:
            got.append(name)
        return h

    await bus.subscribe("keyplane.work", member("a"), queue="workers")
    await bus.subscribe("keyplane.work", member("b"), queue="workers")
    for i in range(20):
        await bus.publish("keyplane.work", KeepAlive(session_id=str(i), node="n"))
    await _until(lambda: len(got) == 20)
    await _delivered(bus)
    assert len(got) == 20


async def test_bus_handler_exception_does_not_break_bus(bus: Bus) -> None:
    async def broken(topic: str, msg: Message) -> Message:
        raise RuntimeError("boom")

    async def ok(topic: str, msg: Message) -> Message:
        return ConfigAck(session_id="s1", node="km1", ok=True)

    await bus.subscribe("keyplane.x", broken)
    with pytest.raises(BusTimeout):
        await bus.request("keyplane.x", _config(), timeout_s=0.1)
    await bus.subscribe("keyplane.y", ok)
    assert isinstance(await bus.request("keyplane.y", _config()), ConfigAck)


async def test_bus_refuses_wildcard_publish_and_bad_topics(bus: Bus) -> None:
    for bad in ["keyplane.*", "keyplane..x", "", "a b", "keyplane.>"]:
        with pytest.raises(ValueError):
            await bus.publish(bad, KeepAlive(session_id="1", node="n"))
    with pytest.raises(ValueError):
        await bus.subscribe("keyplane.>.x", lambda t, m: None)  # type: ignore[arg-type,return-value]


def test_codec_roundtrip_and_refusals() -> None:
    msg = SessionOpenRequest(session_id="s", node="km1", user_id="u", source_sae="a",
                             destination_sae="b", qos=Qos(key_chunk_size=64, max_bps=10))
    assert decode(encode(msg)) == msg
    with pytest.raises(MessageDecodeError):
        decode(b"not json")
    with pytest.raises(MessageDecodeError):
        decode(b'{"kind": "nope", "v": 1, "body": {}}')
    with pytest.raises(MessageDecodeError):
        decode(b'{"kind": "admission.keepalive", "v": 99, "body": {"session_id": "s", "node": "n"}}')
    with pytest.raises(MessageDecodeError):
        decode(b'{"kind": "admission.keepalive", "v": 1, "body": {"session_id": 3}}')
    with pytest.raises(MessageDecodeError):
        decode(b'{"kind": "admission.keepalive", "v": 1, "body": {"session_id": "s", "node": "n", "extra": 1}}')


def test_codec_fast_and_general_paths_read_the_same_envelope() -> None:
    """The compact envelope encode writes (fast path) and the same envelope in any other
    JSON layout (general parser) decode to the same message; non-finite floats survive."""
    msgs: list[Message] = [
        _config(),
        SessionOpenRequest(session_id="s", node="km1", user_id="u", source_sae="a",
                           destination_sae="b", qos=Qos(key_chunk_size=64, max_bps=10)),
        LinkTelemetry(link_id="l", node="n", qber=float("inf"), skr_bps=float("-inf")),
    ]
    for msg in msgs:
        data = encode(msg)
        env = json.loads(data)
        assert env == {"kind": msg.KIND, "v": msg.VERSION, "body": env["body"]}
        assert decode(data) == msg
        spaced = json.dumps({"v": msg.VERSION, "body": env["body"], "kind": msg.KIND},
                            indent=1).encode()
        assert decode(spaced) == msg
    # a fast-path-shaped envelope whose body does not validate is refused like any other
    with pytest.raises(MessageDecodeError, match=r"invalid admission\.keepalive body"):
        decode(b'{"kind":"admission.keepalive","v":1,"body":{"session_id":3,"node":"n"}}')
    with pytest.raises(MessageDecodeError, match="not JSON"):
        decode(b'{"kind":"admission.keepalive","v":1,"body":{"session_id":"s",}')


@pytest.mark.parametrize(("pattern", "topic", "ok"), [
    ("a.b.c", "a.b.c", True), ("a.*.c", "a.x.c", True), ("a.*", "a.x.y", False),
    ("a.>", "a.x.y", True), ("a.>", "a", False), ("*", "a", True), ("a.b", "a.b.c", False),
])
def test_topic_matches_follows_nats_semantics(pattern: str, topic: str, ok: bool) -> None:
    assert topic_matches(pattern, topic) is ok


async def test_unsubscribe_all_goes_on_past_a_failing_subscription(bus: Bus) -> None:
    got: list[str] = []

    async def handler(topic: str, _msg: Message) -> None:
        got.append(topic)

    class Broken(Subscription):
        async def unsubscribe(self) -> None:
            raise BusClosed("connection gone")

    first = await bus.subscribe("t.a", handler)
    second = await bus.subscribe("t.b", handler)
    await unsubscribe_all([first, Broken(), second])
    await bus.publish("t.a", KeepAlive(session_id="s", node="n"))
    await bus.publish("t.b", KeepAlive(session_id="s", node="n"))
    await _delivered(bus)
    assert got == []
