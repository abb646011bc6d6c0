"""The structured event stream: what renders the paper's Fig. 4.

Every element reports what it does as an :class:`Event` (request arrived, authenticated,
configured, key material ready, key relayed, key delivered, session closed, alarm, ...).
An :class:`EventStream` stamps each event with the clock's time, a stream-wide increasing
``event_id`` and a per-node sequence number (the envelope, as faucet's ``notify()``), then
hands it to its sinks: memory (tests, the live demo view), a JSON-lines file, the bus.

Events must never carry key material: :meth:`EventStream.emit` refuses data fields whose
names say they hold keys (``key``, ``key_material``, ``secret``, ...); ids and sizes are fine.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
from collections.abc import Callable, Iterable
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from keyplane.bus.base import Bus
from keyplane.bus.codec import Message
from keyplane.clock import Clock
from keyplane.fileperms import open_private

__all__ = [
    "BusSink",
    "Event",
    "EventMessage",
    "EventSink",
    "EventStream",
    "EventType",
    "JsonlSink",
    "MemorySink",
    "read_jsonl",
]

logger = logging.getLogger(__name__)


class EventType(StrEnum):
    """What happened (paper Fig. 4 markers plus operational events)."""

    request_arrived = "request_arrived"
    authenticated = "authenticated"
    auth_refused = "auth_refused"
    admission_requested = "admission_requested"
    admission_refused = "admission_refused"
    peer_waiting = "peer_waiting"
    route_computed = "route_computed"
    configured = "configured"
    config_refused = "config_refused"
    session_operative = "session_operative"
    key_requested = "key_requested"
    key_material_ready = "key_material_ready"
    key_relayed = "key_relayed"
    key_delivered = "key_delivered"
    key_request_refused = "key_request_refused"
    session_closed = "session_closed"
    session_held = "session_held"  # idle here, the other end unreachable: not closed
    session_deleted = "session_deleted"
    session_rerouted = "session_rerouted"
    session_restored = "session_restored"
    link_block = "link_block"
    link_block_aborted = "link_block_aborted"
    link_state = "link_state"
    keystore_low = "keystore_low"
    keystore_full = "keystore_full"
    alarm = "alarm"
    topology_changed = "topology_changed"
    node_discovered = "node_discovered"
    virtual_link_provisioned = "virtual_link_provisioned"
    virtual_link_released = "virtual_link_released"
    sdn_agent_failed = "sdn_agent_failed"
    entanglement_admitted = "entanglement_admitted"
    entanglement_refused = "entanglement_refused"
    entanglement_delivered = "entanglement_delivered"
    entanglement_ended = "entanglement_ended"
    element_started = "element_started"
    element_stopped = "element_stopped"


FORBIDDEN_DATA_FIELDS = frozenset(
    {"key", "keys", "key_material", "material", "secret", "shared_secret", "pad", "token"}
)


class Event(BaseModel):
    """One event with its envelope (version, ids, time) and a free-form ``data`` map."""

    model_config = ConfigDict(frozen=True)

    v: int = 1
    event_id: int
    seq: int
    t: float
    wall: float
    type: EventType
    element: str
    node: str | None = None
    session: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


_EVENT_FIELDS_SET = frozenset(Event.model_fields) - {"v"}


def _construct_event(values: dict[str, Any]) -> Event:
    """``Event.model_construct(**values)`` (every field but ``v`` given, none validated),
    without its per-field default and alias loop: events are made several times per key
    on the key managers' hot path, and model_construct cost about 4x this (profiled on
    bench/api.py). :func:`_event_constructor` checks it against model_construct once."""
    event = Event.__new__(Event)
    object.__setattr__(event, "__dict__", {"v": 1, **values})
    object.__setattr__(event, "__pydantic_fields_set__", set(_EVENT_FIELDS_SET))
    object.__setattr__(event, "__pydantic_extra__", None)
    object.__setattr__(event, "__pydantic_private__", None)
    return event


def _construct_event_slow(values: dict[str, Any]) -> Event:
    return Event.model_construct(**values)


def _event_constructor() -> Callable[[dict[str, Any]], Event]:
    """:func:`_construct_event` if it makes what ``model_construct`` makes with the
    installed pydantic (same fields, fields set, dump and equality), else model_construct."""
    sample: dict[str, Any] = {"event_id": 1, "seq": 1, "t": 0.5, "wall": 1.5,
                              "type": EventType.key_delivered, "element": "km", "node": "n",
                              "session": "s", "data": {"key_count": 1}}
    try:
        fast, ref = _construct_event(dict(sample)), Event.model_construct(**sample)
        if (fast == ref and fast.model_fields_set == ref.model_fields_set
                and fast.model_dump_json() == ref.model_dump_json()):
            return _construct_event
    except Exception:  # another pydantic's internals: the public constructor then
        logger.debug("fast event constructor unavailable", exc_info=True)
    return _construct_event_slow


class EventMessage(Message):
    """An :class:`Event` on the bus (topic ``keyplane.events.<element>``)."""

    KIND = "event"

    event: Event


class EventSink(Protocol):
    """Where events go. ``write`` must not block the event loop for long."""

    def write(self, event: Event) -> None: ...

    def close(self) -> None: ...


class MemorySink:
    """Keeps the last ``maxlen`` events (drops the oldest) and wakes waiters."""

    def __init__(self, maxlen: int = 100_000) -> None:
        self.events: collections.deque[Event] = collections.deque(maxlen=maxlen)
        self._waiters: list[tuple[Callable[[Event], bool], asyncio.Future[Event]]] = []

    def write(self, event: Event) -> None:
        self.events.append(event)
        for item in list(self._waiters):
            pred, fut = item
            if not fut.done() and pred(event):
                fut.set_result(event)
                self._waiters.remove(item)

    def close(self) -> None:
        for _, fut in self._waiters:
            if not fut.done():
                fut.cancel()
        self._waiters.clear()

    def of_type(self, *types: EventType) -> list[Event]:
        """Events of the given types, oldest first."""
        return [e for e in self.events if e.type in types]

    async def wait_for(self, pred: Callable[[Event], bool]) -> Event:
        """The first past or future event satisfying ``pred`` (bound it with a timeout)."""
        for e in self.events:
            if pred(e):
                return e
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        return await fut


class JsonlSink:
    """Appends one JSON object per line to a file (the demo's events.jsonl).

    Line-buffered: each event is in the file once emitted, so the file can be followed
    (``tail -f``, or a test reading it while the process runs) instead of lagging by up to a
    buffer's worth of events.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # session ids, SAE names and key ids: owner-only (0600), like the database
        self._fh: IO[str] | None = open_private(self.path, "a", encoding="utf-8",
                                                buffering=1)

    def write(self, event: Event) -> None:
        if self._fh is not None:
            self._fh.write(event.model_dump_json() + "\n")

    def flush(self) -> None:
        """Flush buffered lines to disk."""
        if self._fh is not None:
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class BusSink:
    """Publishes each event on ``keyplane.events.<element>`` (fire and forget)."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._tasks: set[asyncio.Task[None]] = set()

    def write(self, event: Event) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self._send(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, event: Event) -> None:
        try:
            await self._bus.publish(f"keyplane.events.{event.element}", EventMessage(event=event))
        except Exception:
            logger.debug("event publish failed", exc_info=True)

    def close(self) -> None:
        for t in self._tasks:
            t.cancel()


class EventStream:
    """Stamps events and fans them out to sinks."""

    def __init__(self, clock: Clock, sinks: Iterable[EventSink] = ()) -> None:
        self.clock = clock
        self.sinks: list[EventSink] = list(sinks)
        self._ids = itertools.count(1)
        self._node_seq: dict[str | None, itertools.count[int]] = {}

    def add_sink(self, sink: EventSink) -> None:
        """Attach one more sink."""
        self.sinks.append(sink)

    def emit(self, type: EventType | str, element: str, *, node: str | None = None,
             session: str | None = None, **data: Any) -> Event:
        """Record an event and pass it to every sink.

        Raises:
            ValueError: ``data`` has a field that would carry key material.
        """
        bad = FORBIDDEN_DATA_FIELDS.intersection(data)
        if bad:
            raise ValueError(f"events must not carry key material (fields {sorted(bad)})")
        seq = self._node_seq.setdefault(node, itertools.count(1))
        # every field is made here with its type: no validation pass (events are emitted
        # several times per key, on the key managers' hot path)
        event = _make_event({"event_id": next(self._ids), "seq": next(seq),
                             "t": self.clock.now(), "wall": self.clock.wall(),
                             "type": EventType(type), "element": element, "node": node,
                             "session": session, "data": data})
        for sink in self.sinks:
            try:
                sink.write(event)
            except Exception:
                logger.exception("event sink %r failed", sink)
        return event

    def close(self) -> None:
        """Close every sink."""
        for sink in self.sinks:
            sink.close()


_make_event = _event_constructor()


def read_jsonl(path: str | Path) -> list[Event]:
    """Load events written by :class:`JsonlSink`."""
    out = []
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                out.append(Event.model_validate(json.loads(line)))
    return out
