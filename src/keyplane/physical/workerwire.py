"""Frames between a KM process and its link worker processes (over the worker's stdin/stdout).

Each frame is ``>II`` (header length, payload length), a JSON header, then the payload::

    +----------+-----------+----------------+------------------+
    | hlen (4) | plen (4)  | header (JSON)  | payload (bytes)  |
    +----------+-----------+----------------+------------------+

The header is one of the pydantic models below, told apart by ``op``. A ``block`` carries
its key material as the payload, never in the header so it is not parsed, logged or copied
as text; a ``telemetry`` frame carries a batch of bus envelopes as its payload. Link
commands and their replies travel as their bus envelopes (:func:`keyplane.bus.encode`) in
the ``message`` field. The pipe is private to a parent and the child it spawned; nothing
here is a network protocol.

Encoding and decoding are free functions, apart from the streams, so they are tested alone.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

__all__ = [
    "MAX_FRAME_BYTES",
    "Ack",
    "BlockOut",
    "Command",
    "CommandReply",
    "EventOut",
    "Frame",
    "Ready",
    "Room",
    "StartWorker",
    "Stop",
    "Stopped",
    "TelemetryOut",
    "decode_frame",
    "encode_frame",
    "read_frame",
    "split_telemetry",
    "telemetry_frame",
]

_HEAD = struct.Struct(">II")
MAX_FRAME_BYTES = 64 * 1024 * 1024
"""A frame longer than this is refused (a corrupted length would otherwise allocate it)."""


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StartWorker(_Frame):
    """Parent -> worker, first frame: the links to run and how."""

    op: Literal["start"] = "start"
    links: list[dict[str, Any]]  # QuantumLink.model_dump(mode="json")
    seed: int
    time_scale: float
    telemetry_interval_s: float
    nice: int
    nice_after_first_blocks_s: float = 0.0
    """> 0: run at the parent's priority until every local link end delivered a block, or
    for at most this many seconds, and only then lower it by ``nice`` (0: at once)."""
    frame_duration_s: float | None = None
    ends: dict[str, list[Literal["alice", "bob"]]] = Field(default_factory=dict)
    """Link id -> the ends run here (absent: both, in-process channels)."""
    bus_url: str | None = None
    """Distributed mode: the bus the worker joins itself (its ends' channels, telemetry and
    link commands go there directly); None: a private in-memory bus, relayed by the parent."""
    command_timeout_s: float = 10.0
    bus_credentials: dict[str, Any] | None = None
    """With ``bus_url``: the node's bus credentials (file paths, keyplane.bus.BusCredentials),
    so the worker joins the secured bus as its node."""
    bus_insecure: bool = False
    """With ``bus_url`` and no credentials: the operator chose the insecure bus explicitly."""
    link_nodes: dict[str, str] = Field(default_factory=dict)
    """A process of several nodes (``keyplane node --id a,b``): link id -> the node whose
    bus identity that link's runner joins with (the owner of its local Alice end, else of
    its Bob end); empty: every runner uses the one identity of ``bus_credentials``."""
    node_credentials: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """With ``link_nodes``: node id -> its bus credentials (absent: the insecure bus, which
    ``bus_insecure`` says the operator chose)."""


class Ready(_Frame):
    """Worker -> parent: every link of the worker runs."""

    op: Literal["ready"] = "ready"
    pid: int


class BlockOut(_Frame):
    """Worker -> parent: a block for ``node``'s store of ``link_id`` (material in payload)."""

    op: Literal["block"] = "block"
    seq: int
    link_id: str
    end: Literal["alice", "bob"]
    block_id: int


class Ack(_Frame):
    """Parent -> worker: block ``seq`` is stored (``error``: it was refused, and why)."""

    op: Literal["ack"] = "ack"
    seq: int
    error: str | None = None


class Room(_Frame):
    """Parent -> worker: whether one end's store takes more key (the link pauses if not)."""

    op: Literal["room"] = "room"
    link_id: str
    end: Literal["alice", "bob"]
    room: bool


class EventOut(_Frame):
    """Worker -> parent: an event the link emitted (re-emitted on the parent's stream)."""

    op: Literal["event"] = "event"
    type: str
    element: str
    node: str | None = None
    session: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class TelemetryOut(_Frame):
    """Worker -> parent: LinkTelemetry bus envelopes to publish on the parent's bus, one
    per ``topics`` entry, ``sizes[i]`` bytes each, concatenated in the payload.

    Why a batch with the envelopes as payload: 1,000 analytic links send about 2,000 of
    them a second; one frame per event-loop turn, with envelopes the parent hands to the
    bus as bytes (:meth:`~keyplane.bus.Bus.publish_encoded`), not JSON inside a JSON
    string parsed once per message, took most of the parent's pipe decoding away.
    """

    op: Literal["telemetry"] = "telemetry"
    topics: list[str]
    sizes: list[Annotated[int, Field(ge=0)]]


def telemetry_frame(items: list[tuple[str, bytes]]) -> bytes:
    """One :class:`TelemetryOut` frame carrying ``(topic, envelope)`` ``items``."""
    return encode_frame(TelemetryOut(topics=[t for t, _ in items],
                                     sizes=[len(m) for _, m in items]),
                        b"".join(m for _, m in items))


def split_telemetry(frame: TelemetryOut, payload: bytes) -> list[tuple[str, bytes]]:
    """The ``(topic, envelope)`` pairs of a :class:`TelemetryOut` frame.

    Raises:
        ValueError: the sizes do not match the topics or the payload.
    """
    if len(frame.topics) != len(frame.sizes) or sum(frame.sizes) != len(payload):
        raise ValueError(f"telemetry frame of {len(frame.topics)} topics, sizes "
                         f"{sum(frame.sizes)} bytes, payload {len(payload)} bytes")
    out: list[tuple[str, bytes]] = []
    at = 0
    for topic, size in zip(frame.topics, frame.sizes, strict=True):
        out.append((topic, payload[at:at + size]))
        at += size
    return out


class Command(_Frame):
    """Parent -> worker: a LinkCommand envelope for ``link_id``'s runner; answered by
    :class:`CommandReply` with the same ``req``."""

    op: Literal["command"] = "command"
    req: int
    link_id: str
    message: str


class CommandReply(_Frame):
    """Worker -> parent: the runner's reply envelope (or ``error``)."""

    op: Literal["command_reply"] = "command_reply"
    req: int
    message: str | None = None
    error: str | None = None


class Stop(_Frame):
    """Parent -> worker: close every link and exit."""

    op: Literal["stop"] = "stop"


class Stopped(_Frame):
    """Worker -> parent: every link is closed; the worker exits next."""

    op: Literal["stopped"] = "stopped"


Frame = Annotated[StartWorker | Ready | BlockOut | Ack | Room | EventOut | TelemetryOut
                  | Command | CommandReply | Stop | Stopped, Field(discriminator="op")]
_FRAME: TypeAdapter[Frame] = TypeAdapter(Frame)


def encode_frame(header: _Frame, payload: bytes = b"") -> bytes:
    """One frame's bytes."""
    head = header.model_dump_json().encode()
    return _HEAD.pack(len(head), len(payload)) + head + payload


def decode_frame(head: bytes, payload: bytes = b"") -> tuple[Frame, bytes]:
    """Parse a frame's header (its payload passes through).

    Raises:
        pydantic.ValidationError: the header is not one of the frames above.
    """
    return _FRAME.validate_json(head), payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[Frame, bytes] | None:
    """The next frame from ``reader``; None at a clean end of stream.

    Raises:
        asyncio.IncompleteReadError: the stream ended inside a frame.
        ValueError: a length beyond :data:`MAX_FRAME_BYTES`.
        pydantic.ValidationError: a malformed header.
    """
    try:
        raw = await reader.readexactly(_HEAD.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    hlen, plen = _HEAD.unpack(raw)
    if hlen + plen > MAX_FRAME_BYTES:
        raise ValueError(f"worker frame of {hlen + plen} bytes refused")
    body = await reader.readexactly(hlen + plen)  # one await: 10,000s of frames a second
    return decode_frame(body[:hlen], body[hlen:])
