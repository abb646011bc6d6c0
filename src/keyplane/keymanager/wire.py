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

Hybrid hops (version 2 frames, :mod:`keyplane.keymanager.hybrid`): ``hop_source`` says where
the hop key bytes (``mac_key || pad`` above) came from:

* ``qkd`` — the link key ``segments`` (version 1 behaviour);
* ``pqc`` — ``HKDF-SHA-256`` of a fresh authenticated ML-KEM-768 shared secret
  (:mod:`keyplane.keymanager.pqc`); ``segments`` is empty and ``pqc`` carries the sender's
  half of the exchange (ciphertext, certificate, signature). The receiver made the offer
  (:class:`PqcOfferRequest` -> :class:`PqcOfferReply`, a bus request on the same relay
  topic) and holds its decapsulation key for exactly one frame;
* ``combined`` — ``link key XOR HKDF(ML-KEM secret)`` (both of the above, same length).

So the MAC key is always the first 32 bytes of the hop key: a PQC-only hop is authenticated
by the ML-KEM secret (only the two KMs hold it: the exchange is signed by both KM
certificates), a combined hop by a key that stays secret if either source is.
``provenance`` (key and confirm frames) lists the hops a batch crossed and their sources;
``policy`` (key frames) is the batch's hybrid policy when an application asked for a
stricter one than the session's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from typing import Annotated, Any, Literal, TypeVar, cast

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictStr,
)
from pydantic_core import to_json

from keyplane.bus.codec import Message

__all__ = [
    "MAC_KEY_BYTES",
    "ConfirmFrame",
    "DemandFrame",
    "KeyFrame",
    "LinkBlocksHeld",
    "PqcBlob",
    "PqcOfferReply",
    "PqcOfferRequest",
    "RelayFrame",
    "SessionProbe",
    "SessionProbeReply",
    "b64d",
    "b64e",
    "seal",
    "verify",
    "xor",
]

MAC_KEY_BYTES = 32

SegmentList = list[tuple[int, int, Annotated[int, Field(ge=1)]]]
HopSourceName = Literal["qkd", "pqc", "combined"]
Provenance = list[dict[str, str]]
MAX_FRAME_KEYS = 1 << 20
"""Most keys one key or confirm frame may name (bounds what a frame's index runs expand
to before its tag is checked)."""


# ---- packed lists (version 3 key and confirm frames, issue #15) ---------------------------
# A bulk frame names thousands of keys. As JSON lists of strings and numbers its ids and
# indexes were most of the cost of writing, reading and tagging it (seal, encode, decode
# and verify at every hop: about 0.35 ms of a 1,000-key frame's 0.5 ms). On the wire they
# are one string each; in Python they stay lists.

def _split_ids(value: Any) -> Any:
    """Wire form -> list: the ids joined by commas ("" for none). A list or tuple (made in
    Python) passes if the joined form keeps it apart: no id holds a comma, and it is not
    ``[""]``; any other kind of value is refused (so nothing reaches the list's own
    validation that could join differently). At most :data:`MAX_FRAME_KEYS` ids."""
    if type(value) is str:
        ids = value.split(",") if value else []
    elif isinstance(value, list | tuple):
        ids = list(value)
        try:
            text = ",".join(ids)
        except TypeError:
            raise ValueError("key ids must be strings") from None
        if ids and (text.count(",") != len(ids) - 1 or not text):
            raise ValueError("a key id holds a comma, or the only id is empty")
    else:
        raise ValueError("key ids must be a list of strings")
    if len(ids) > MAX_FRAME_KEYS:
        raise ValueError(f"more than {MAX_FRAME_KEYS} key ids in one frame")
    return ids


_RUNS_TEXT = re.compile(r"[0-9]{1,19}(?:\+[0-9]{1,7})?(?:,[0-9]{1,19}(?:\+[0-9]{1,7})?)*")


def _expand_runs(value: Any) -> Any:
    """Wire form -> list: comma-separated runs, ``i`` or ``i+n`` (the ``n`` indexes from
    ``i``; "" for none); a list passes as is. At most :data:`MAX_FRAME_KEYS` indexes."""
    if type(value) is not str:
        return value
    if not value:
        return []
    if not _RUNS_TEXT.fullmatch(value):
        raise ValueError("indexes are not runs of the form i or i+n, comma-separated")
    out: list[int] = []
    for run in value.split(","):
        start, _, n = run.partition("+")
        count = int(n) if n else 1
        if len(out) + count > MAX_FRAME_KEYS:  # checked before a run is expanded
            raise ValueError(f"more than {MAX_FRAME_KEYS} indexes in one frame")
        if n:
            out += range(int(start), int(start) + count)
        else:
            out.append(int(start))
    return out


def _runs(indexes: list[int]) -> str:
    """List -> wire form (one ``i+n`` when the indexes are consecutive, as a fresh batch's
    are: checked at C speed; else a run per stretch)."""
    if not indexes:
        return ""
    first, n = indexes[0], len(indexes)
    if indexes[-1] - first == n - 1 and indexes == list(range(first, first + n)):
        return f"{first}+{n}" if n > 1 else str(first)
    out: list[str] = []
    start = prev = first
    for i in indexes[1:]:
        if i != prev + 1:
            out.append(f"{start}+{prev - start + 1}" if prev > start else str(start))
            start = i
        prev = i
    out.append(f"{start}+{prev - start + 1}" if prev > start else str(start))
    return ",".join(out)


def _bounded(indexes: list[int]) -> list[int]:
    """At most :data:`MAX_FRAME_KEYS` indexes, each in ``[0, 10**19)`` (what the runs
    carry: a frame that seals is one its receivers read)."""
    if len(indexes) > MAX_FRAME_KEYS:
        raise ValueError(f"more than {MAX_FRAME_KEYS} indexes in one frame")
    if indexes and (min(indexes) < 0 or max(indexes) >= _INDEX_END):
        raise ValueError("a stream index is negative or has more than 19 digits")
    return indexes


_INDEX_END = 10**19


PackedIds = Annotated[list[StrictStr], BeforeValidator(_split_ids),
                      PlainSerializer(",".join, return_type=str, when_used="json")]
"""Key ids; on the wire one string, the ids joined by commas."""
IndexRuns = Annotated[list[int],
                      BeforeValidator(_expand_runs), AfterValidator(_bounded),
                      PlainSerializer(_runs, return_type=str, when_used="json")]
"""Stream indexes; on the wire one string of runs (``"5000+1000"``: 5000 to 5999)."""


class PqcBlob(BaseModel):
    """The sender's half of an ML-KEM hop exchange, carried in a frame (all Base64/PEM)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    exchange_id: str
    ciphertext: str
    cert_pem: str
    signature: str


class PqcOfferRequest(Message):
    """A hop's sender asks its receiver for a fresh signed ML-KEM-768 encapsulation key.

    A bus *request* on the receiver's relay topic; the receiver answers only for a session
    hop it has with ``sender`` (its forwarding entry of ``epoch``).
    """

    KIND = "km.relay.pqc_offer_request"
    VERSION = 1

    session_id: str
    epoch: int
    sender: str
    exchange_id: str


class PqcOfferReply(Message):
    """The receiver's signed offer (``ok``) or why it will not make one."""

    KIND = "km.relay.pqc_offer"
    VERSION = 1

    exchange_id: str
    ok: bool
    reason: str = ""
    encapsulation_key: str = ""
    nonce: str = ""
    cert_pem: str = ""
    signature: str = ""


class KeyFrame(Message):
    """One hop of a batch of end-to-end keys, source -> destination."""

    KIND = "km.relay.key"
    VERSION = 3  # 3: key_ids and indexes packed (PackedIds, IndexRuns)

    session_id: str
    epoch: int
    sender: str
    link_id: str
    segments: SegmentList
    batch_id: str
    key_ids: PackedIds
    indexes: IndexRuns
    key_size_bytes: Annotated[int, Field(ge=1)]
    direct: bool = False
    ciphertext: str = Field(default="", repr=False)
    attempt: int = 0
    hop_source: HopSourceName = "qkd"
    pqc: PqcBlob | None = None
    policy: str | None = None
    provenance: Provenance = Field(default_factory=list)
    tag: str = ""


class ConfirmFrame(Message):
    """The destination's answer for a batch, hop by hop back to the source."""

    KIND = "km.relay.confirm"
    VERSION = 3  # 3: key_ids packed (PackedIds)

    session_id: str
    epoch: int
    sender: str
    link_id: str
    segments: SegmentList
    batch_id: str
    key_ids: PackedIds
    ok: bool
    reason: str = ""
    cause: str = ""  # the refusing hop's error class (e.g. InsufficientKeyMaterial)
    hop_source: HopSourceName = "qkd"
    pqc: PqcBlob | None = None
    provenance: Provenance = Field(default_factory=list)
    tag: str = ""


class DemandFrame(Message):
    """The destination asks the source to produce stream indexes (ETSI 004 GET_KEY)."""

    KIND = "km.relay.demand"
    VERSION = 2

    session_id: str
    epoch: int
    sender: str
    link_id: str
    segments: SegmentList
    indexes: list[int]
    hop_source: HopSourceName = "qkd"
    pqc: PqcBlob | None = None
    tag: str = ""


class LinkBlocksHeld(Message):
    """One end of a link tells the other which link key blocks it holds durably.

    A KM sends with a block only once its peer has said it holds that block, so a frame
    never names a block the receiver lacks: the two ends of a link store a verified block
    moments apart, and a KM that crashes in between never stores it at all. Sent after each
    block is stored, and as a full ``inventory`` when a KM starts (``reply``: answer with
    yours), so a restarted KM and its peers agree again on what both hold. Block ids only,
    never key bytes. Not MAC-ed: a forged message can only make a KM try a block the peer
    lacks (the frame is then refused and retried), never reveal or reuse key.
    """

    KIND = "km.link.held"
    VERSION = 1

    sender: str
    link_id: str
    block_ids: list[int]
    inventory: bool = False
    reply: bool = False


class SessionProbe(Message):
    """An endpoint KM whose stream went idle asks the other endpoint KM (``target``) how
    long its end has been idle (keymanager/liveness.py). A bus *request*, hop by hop on
    each hop's relay topic along the path of ``epoch``; every hop forwards it within
    ``timeout_s`` (what the hop before it waits). Carries no key, so it spends no link
    key; signed by each sender like the relay frames."""

    KIND = "km.session.probe"
    VERSION = 1

    session_id: str
    epoch: int
    sender: str
    target: str
    timeout_s: Annotated[float, Field(gt=0.0)]


class SessionProbeReply(Message):
    """The answer: the target's end is ``active`` (an exchange in flight), ``idle`` for
    ``idle_for_s``, ``ended``, or ``unknown`` (a hop could not reach it: the path is in a
    fault). ``node`` is the KM that answered."""

    KIND = "km.session.probe_reply"
    VERSION = 1

    session_id: str
    node: str
    state: Literal["active", "idle", "ended", "unknown"]
    idle_for_s: Annotated[float, Field(ge=0.0)] = 0.0


RelayFrame = KeyFrame | ConfirmFrame | DemandFrame
F = TypeVar("F", bound=KeyFrame | ConfirmFrame | DemandFrame)


def _canonical(body: dict[str, Any]) -> bytes:
    """The bytes a frame's tag is over: ``json.dumps(body without "tag", sort_keys=True,
    separators=(",", ":"))`` (ASCII, escaped as ``ensure_ascii`` does).

    Written by pydantic's serializer from key-sorted dicts when that gives the same bytes
    (printable ASCII throughout: the two differ only in non-ASCII text and DEL, which
    json.dumps escapes), else by json.dumps: about 25 us less per 100-key frame, sealed
    and verified at every hop (issue #15).
    """
    ordered: dict[str, Any] = {}
    for k in sorted(body):
        v = body[k]
        if type(v) is dict or (type(v) is list and v and type(v[0]) in _NESTED):
            v = _sorted(v)  # only nested values pay a call (a frame has 15-18 fields)
        ordered[k] = v
    ordered.pop("tag", None)
    try:
        fast = to_json(ordered)
    except ValueError:  # e.g. a lone surrogate, which json.dumps escapes
        fast = b"\x7f"
    if fast.isascii() and b"\x7f" not in fast:
        return fast
    return json.dumps(ordered, sort_keys=True, separators=(",", ":")).encode()


_NESTED = (dict, list)


def _sorted(value: Any) -> Any:
    """``value`` with every dict in it key-sorted (a frame's lists are of one type, so a
    list whose first item is no dict or list holds none)."""
    if type(value) is dict:
        return {k: _sorted(value[k]) for k in sorted(value)}
    if type(value) is list and value and type(value[0]) in _NESTED:
        return [_sorted(v) for v in value]
    return value


def seal(frame: F, mac_key: bytes) -> F:
    """``frame`` with its HMAC-SHA256 tag under ``mac_key``."""
    body = frame.model_dump(mode="json")
    tag = hmac.new(mac_key, _canonical(body), hashlib.sha256).hexdigest()
    return cast(F, frame.model_copy(update={"tag": tag}))


def verify(frame: RelayFrame, mac_key: bytes) -> bool:
    """Whether ``frame``'s tag is right (constant-time compare)."""
    body = frame.model_dump(mode="json")
    want = hmac.new(mac_key, _canonical(body), hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, frame.tag)


def xor(a: bytes, b: bytes) -> bytes:
    """Bytewise XOR of two equal-length strings (the one-time pad)."""
    if len(a) != len(b):
        raise ValueError("one-time pad length mismatch")
    # numpy's elementwise XOR: a 32 KiB pad (a 1,000-key frame) in about 2.5 us, against
    # 60 us as Python ints; this runs twice at every hop a bulk frame crosses (issue #15)
    return np.bitwise_xor(np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8)).tobytes()


def b64e(data: bytes) -> str:
    """Standard Base64 text."""
    return base64.b64encode(data).decode("ascii")


def b64d(text: str) -> bytes:
    """Inverse of :func:`b64e` (strict)."""
    return base64.b64decode(text.encode("ascii"), validate=True)
