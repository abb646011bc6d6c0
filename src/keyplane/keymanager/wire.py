"""KM-to-KM relay frames (the paper's key relay over trusted nodes), versioned bus messages.

Frames travel on ``keyplane.km.<next node>.relay``. Each hop's frame is authenticated with
HMAC-SHA256 under a 32-byte key taken from that hop's link key (used once), and a key frame
one-time-pads the end-to-end keys with the link key bytes that follow the MAC key::

    taken = link key segments named in the frame   (32 + n * key_size bytes)
    mac_key, pad = taken[:32], taken[32:]
    ciphertext = keys XOR pad                        (empty when ``direct``)
    tag = HMAC-SHA256(mac_key, canonical JSON of every other field)

``direct`` (adjacent source and destination KMs): the keys *are* the pad bytes; nothing
else is sent. Encoding and MAC are free functions here, apart from the connection, so they
can be tested and benchmarked alone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Annotated, Any, TypeVar

from pydantic import Field

from keyplane.bus.codec import Message

__all__ = [
    "MAC_KEY_BYTES",
    "ConfirmFrame",
    "DemandFrame",
    "KeyFrame",
    "RelayFrame",
    "b64d",
    "b64e",
    "seal",
    "verify",
    "xor",
]

MAC_KEY_BYTES = 32

SegmentList = list[tuple[int, int, Annotated[int, Field(ge=1)]]]


class KeyFrame(Message):
    """One hop of a batch of end-to-end keys, source -> destination."""

    KIND = "km.relay.key"
    VERSION = 1

    session_id: str
    epoch: int
    sender: str
    link_id: str
    segments: SegmentList
    batch_id: str
    key_ids: list[str]
    indexes: list[int]
    key_size_bytes: Annotated[int, Field(ge=1)]
    direct: bool = False
    ciphertext: str = Field(default="", repr=False)
    attempt: int = 0
    tag: str = ""


class ConfirmFrame(Message):
    """The destination's answer for a batch, hop by hop back to the source."""

    KIND = "km.relay.confirm"
    VERSION = 1

    session_id: str
    epoch: int
    sender: str
    link_id: str
    segments: SegmentList
    batch_id: str
    key_ids: list[str]
    ok: bool
    reason: str = ""
    tag: str = ""


class DemandFrame(Message):
    """The destination asks the source to produce stream indexes (ETSI 004 GET_KEY)."""

    KIND = "km.relay.demand"
    VERSION = 1

    session_id: str
    epoch: int
    sender: str
    link_id: str
    segments: SegmentList
    indexes: list[int]
    tag: str = ""


RelayFrame = KeyFrame | ConfirmFrame | DemandFrame
F = TypeVar("F", KeyFrame, ConfirmFrame, DemandFrame)


def _canonical(body: dict[str, Any]) -> bytes:
    body = dict(body)
    body.pop("tag", None)
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def seal(frame: F, mac_key: bytes) -> F:
    """``frame`` with its HMAC-SHA256 tag under ``mac_key``."""
    body = frame.model_dump(mode="json")
    tag = hmac.new(mac_key, _canonical(body), hashlib.sha256).hexdigest()
    return frame.model_copy(update={"tag": tag})


def verify(frame: RelayFrame, mac_key: bytes) -> bool:
    """Whether ``frame``'s tag is right (constant-time compare)."""
    body = frame.model_dump(mode="json")
    want = hmac.new(mac_key, _canonical(body), hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, frame.tag)


def xor(a: bytes, b: bytes) -> bytes:
    """Bytewise XOR of two equal-length strings (the one-time pad)."""
    if len(a) != len(b):
        raise ValueError("one-time pad length mismatch")
    n = len(a)
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(n, "little")


def b64e(data: bytes) -> str:
    """Standard Base64 text."""
    return base64.b64encode(data).decode("ascii")


def b64d(text: str) -> bytes:
    """Inverse of :func:`b64e` (strict)."""
    return base64.b64decode(text.encode("ascii"), validate=True)
