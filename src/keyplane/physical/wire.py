"""Messages of the physical layer: QKD module ↔ QKD module, and link control.

Classical channel of link ``L`` (one topic per receiving end when it runs over the bus):

* ``keyplane.qkd.<L>.quantum``  the emulated quantum frame, Alice's emulator → Bob
* ``keyplane.qkd.<L>.bob``      Alice → Bob
* ``keyplane.qkd.<L>.alice``    Bob → Alice

Per frame: :class:`QuantumFrame` (A→B), :class:`SiftRequest` (B→A: Bob's detections and
bases), :class:`SiftReply` (A→B: Alice's bases, intensity classes of the sifted events,
her test-basis bits). Per block: :class:`PeRequest` (A→B: the block opens),
:class:`PeResult` (B→A: the block's test counts and errors, abort or go), then Cascade
:class:`CascadeQuery` / :class:`CascadeAnswer` rounds, :class:`VerifyRequest` (A→B: hash
point, tag, privacy-amplification seed) and :class:`VerifyResult` (B→A). Analytic links
send :class:`AnalyticBlock` (A→B) only.

Rendezvous and resynchronization (request/reply on ``keyplane.qkd.<L>.<end>.peer``, the
peer end's topic; see docs/physical.md "Distributed links"): :class:`PeerPing` →
:class:`PeerPong` (the responder's boot nonce: a new one means the peer restarted);
:class:`Sync` (A→B: discard partial buffers and in-flight blocks, continue from these ids)
→ :class:`SyncAck`. :class:`ResyncRequest` (B→A, on the classical channel) asks Alice for
a :class:`Sync` after Bob lost an exchange.

Link control (request/reply on ``keyplane.control.link.<L>``): :class:`LinkCommand` →
:class:`LinkCommandReply`.

Bit arrays travel packed (big bit order, see :mod:`keyplane.physical.bits`) as base64 in
JSON; integer arrays as little-endian int32. Nothing here carries final key material: the
secret key is only ever derived at each end.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BeforeValidator, Field, PlainSerializer

from keyplane.bus.codec import Message

__all__ = [
    "AnalyticBlock",
    "CascadeAnswer",
    "CascadeQuery",
    "LinkCommand",
    "LinkCommandReply",
    "PeRequest",
    "PeResult",
    "PeerPing",
    "PeerPong",
    "QuantumFrame",
    "ResyncRequest",
    "SiftReply",
    "SiftRequest",
    "Sync",
    "SyncAck",
    "VerifyRequest",
    "VerifyResult",
    "control_topic",
    "decode_i32",
    "encode_i32",
    "peer_topic",
    "qkd_topic",
]


def _b64_in(value: Any) -> Any:
    if isinstance(value, str):
        return base64.b64decode(value, validate=True)
    return value


def _b64_out(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


Blob = Annotated[bytes, BeforeValidator(_b64_in), PlainSerializer(_b64_out, when_used="json")]
"""Raw bytes in Python, base64 in JSON."""

Count = Annotated[int, Field(ge=0)]


def qkd_topic(link_id: str, end: Literal["alice", "bob", "quantum"]) -> str:
    """Bus topic of one receiving end of a link's classical (or quantum) channel."""
    return f"keyplane.qkd.{link_id}.{end}"


def peer_topic(link_id: str, end: Literal["alice", "bob"]) -> str:
    """Bus topic on which one end answers its peer's rendezvous and sync requests."""
    return f"keyplane.qkd.{link_id}.{end}.peer"


def control_topic(link_id: str) -> str:
    """Bus topic of a link's fault-control commands."""
    return f"keyplane.control.link.{link_id}"


def encode_i32(values: NDArray[np.integer[Any]]) -> bytes:
    """Little-endian int32 bytes of an integer array."""
    return np.asarray(values, dtype="<i4").tobytes()


def decode_i32(data: bytes) -> NDArray[np.int64]:
    """Inverse of :func:`encode_i32`."""
    return np.frombuffer(data, dtype="<i4").astype(np.int64)


class QuantumFrame(Message):
    """What Bob's detectors saw in one frame (the emulated quantum channel)."""

    KIND = "qkd.quantum_frame"

    link_id: str
    frame_id: Count
    n_pulses: Count
    detections: Count
    bases: Blob
    bits: Blob = Field(repr=False)


class SiftRequest(Message):
    """Bob announces his detected slots and his measurement bases (0 = Z, 1 = X)."""

    KIND = "qkd.sift_request"

    link_id: str
    frame_id: Count
    detections: Count
    bases: Blob


class SiftReply(Message):
    """Alice announces her bases, the intensity class of each sifted event (two packed
    bit planes: ``class = 2*hi + lo``), pulses and detections per class, and her bits of
    the sifted test-basis events (these never enter a key)."""

    KIND = "qkd.sift_reply"

    link_id: str
    frame_id: Count
    bases: Blob
    class_hi: Blob
    class_lo: Blob
    pulses: tuple[Count, Count, Count]
    detections: tuple[Count, Count, Count]
    test_bits: Blob


class PeRequest(Message):
    """Alice opens block ``block_id`` of ``block_bits`` key bits."""

    KIND = "qkd.pe_request"

    link_id: str
    block_id: Count
    block_bits: Count


class PeResult(Message):
    """Bob's parameter-estimation outcome: the block's test-basis events and errors per
    intensity; both ends derive the secure length from these agreed counts."""

    KIND = "qkd.pe_result"

    link_id: str
    block_id: Count
    test_sifted: tuple[Count, Count, Count]
    test_errors: tuple[Count, Count, Count]
    abort: bool
    reason: str = ""


class CascadeQuery(Message):
    """One Cascade round (Bob → Alice), see :class:`keyplane.physical.cascade.ParityQuery`."""

    KIND = "qkd.cascade_query"

    link_id: str
    block_id: Count
    round: Count
    seed: Blob
    new_pass: tuple[Count, Count] | None = None
    passes: Blob = b""
    starts: Blob = b""
    ends: Blob = b""
    last: bool = False


class CascadeAnswer(Message):
    """Alice's parities for one round."""

    KIND = "qkd.cascade_answer"

    link_id: str
    block_id: Count
    round: Count
    n_top: Count
    top: Blob
    n_parities: Count
    parities: Blob


class VerifyRequest(Message):
    """Alice's verification tag of her key, with the hash point and the privacy-amplification
    seed (both fresh per block); her count of disclosed parities and her secure length."""

    KIND = "qkd.verify_request"

    link_id: str
    block_id: Count
    point: Blob
    tag: Blob
    pa_seed: Blob
    leaked_ec_bits: Count
    secret_bits: Count


class VerifyResult(Message):
    """Bob's verdict: ``ok`` when tags, disclosed-parity counts and secure lengths all
    agree; both ends then deliver, otherwise both discard."""

    KIND = "qkd.verify_result"

    link_id: str
    block_id: Count
    ok: bool
    secret_bits: Count
    corrected_bits: Count = 0


class AnalyticBlock(Message):
    """Analytic mode: block ``block_id`` of ``secret_bits`` bits is due at both ends."""

    KIND = "qkd.analytic_block"

    link_id: str
    block_id: Count
    secret_bits: Count


BlockId = Annotated[int, Field(ge=0, le=2**63 - 1)]
"""A block (or frame) id: fits the key store's signed 64-bit column."""

Nonce = Annotated[str, Field(min_length=1, max_length=64)]


class PeerPing(Message):
    """Rendezvous: is the peer end subscribed and answering? (one round trip)"""

    KIND = "qkd.peer_ping"

    link_id: str
    boot_nonce: Nonce


class PeerPong(Message):
    """The answering end's incarnation: ``boot_nonce`` is fresh at every (re)start of the
    end, so a different value than last time means the peer restarted and lost its state."""

    KIND = "qkd.peer_pong"

    link_id: str
    boot_nonce: Nonce


class Sync(Message):
    """Alice → Bob: both ends discard their partial sifted buffers and any in-flight block,
    and continue with frame ``next_frame_id`` and block ``next_block_id`` (Alice's ids only
    grow, across her restarts too: blocks ids are never reused). Sent when Alice (re)starts,
    when Bob's boot nonce changed, and after a lost exchange."""

    KIND = "qkd.sync"

    link_id: str
    boot_nonce: Nonce
    next_frame_id: BlockId
    next_block_id: BlockId
    reason: str = ""


class SyncAck(Message):
    """Bob has applied the :class:`Sync`; Alice may send the next frame."""

    KIND = "qkd.sync_ack"

    link_id: str
    boot_nonce: Nonce
    next_block_id: BlockId


class ResyncRequest(Message):
    """Bob → Alice on the classical channel: Bob abandoned an exchange (his buffer is
    reset), so Alice should stop waiting for it and send a :class:`Sync`."""

    KIND = "qkd.resync_request"

    link_id: str
    reason: str = ""


class LinkCommand(Message):
    """Fault control of a link (from the CLI, the Monitoring Element's tests, scripts).

    ``action``: ``cut`` (fibre broken), ``degrade`` (add ``extra_loss_db``), ``restore``
    (no cut, no extra loss), ``eve`` (intercept-resend at ``position_km`` on
    ``fraction`` of the pulses; ``fraction`` 0 removes her), ``status``.
    """

    KIND = "qkd.link_command"

    link_id: str
    action: Literal["cut", "degrade", "restore", "eve", "status"]
    extra_loss_db: Annotated[float, Field(ge=0.0)] = 0.0
    position_km: Annotated[float, Field(ge=0.0)] = 0.0
    fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0


class LinkCommandReply(Message):
    """The link's state after a :class:`LinkCommand`."""

    KIND = "qkd.link_command_reply"

    link_id: str
    ok: bool
    state: Literal["up", "degraded", "down"]
    message: str = ""
    extra_loss_db: float = 0.0
    eavesdropper_fraction: float = 0.0
    delivered_blocks: Count = 0
    aborted_blocks: Count = 0
