"""What a node's key manager offers the application interfaces (ETSI 004 and 014).

``keyplane.api`` serves HTTP and maps results and exceptions to each standard's wire form;
it holds no key state. A key manager implements :class:`ApplicationService`. Errors are the
domain exceptions of :mod:`keyplane.errors`; the API maps them (one table) to ETSI 014 HTTP
codes and ETSI 004 status codes:

| exception                | ETSI 014 | ETSI 004 status |
|--------------------------|----------|-----------------|
| AuthenticationFailed     | 401      | (HTTP 401)      |
| QosNotMet                | 400/503  | 7               |
| SessionNotFound          | 400      | 9 (non-standard: stream not found) |
| SessionIdInUse           | 400      | 5               |
| PeerNotConnected         | 503      | 1 (open) / 3 (get_key) |
| InsufficientKeyMaterial  | 503      | 2               |
| PeerUnreachable          | 503      | 4               |
| TimeoutError/RelayTimeout| 503      | 6               |
| RateLimited              | 503      | 6 (token bucket cannot serve within the QoS timeout) |
| KmBusy                   | 503      | 2 (the KM's request queues are full) |
| KeyNotFound              | 400      | 9 (unknown/already delivered key_ID or index) |

``KeyNotFound``, ``KmBusy`` and ``RateLimited`` were added by the key manager
(``keyplane.keymanager.KeyManager`` implements this protocol; ETSI 004 CLOSE is
``close_stream``, and ``close()`` is the KM's lifecycle close, see docs/keymanager.md).

``identity`` is what the transport authenticated: the mTLS client certificate subject
(RFC 4514 string); the HTTP servers accept no bearer tokens (``method == "token"`` remains
for callers inside the process). Session ownership compares ``Caller.principal``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, overload

from keyplane.messages import Qos

__all__ = [
    "ApplicationService",
    "Caller",
    "DeliveredKey",
    "DeliveredKeys",
    "GetKeyResult",
    "OpenResult",
    "PairStatus",
]


@dataclass(frozen=True)
class Caller:
    """An authenticated transport identity (never the SAE id it claims).

    ``identity`` alone is not who the caller is: a token whose text is a certificate
    subject is not that certificate's holder. Ownership checks compare
    :attr:`principal` (how and who).
    """

    identity: str = field(repr=False)
    method: Literal["certificate", "token"] = "certificate"

    @property
    def principal(self) -> str:
        """How the caller authenticated and as whom, as one string.

        A certificate's principal is its subject (RFC 4514 strings contain ``=`` before any
        ``:``, so they never collide with the prefixed form); any other method is prefixed
        with its name. Session owners persisted as a subject's digest stay valid.
        """
        if self.method == "certificate":
            return self.identity
        return f"{self.method}:{self.identity}"


@dataclass(frozen=True)
class OpenResult:
    """Result of OPEN_CONNECT: the stream id and the QoS the KM will serve.

    ``peer_connected`` is False when the session is registered but the peer application
    has not opened its side yet (ETSI 004 status 1).
    """

    key_stream_id: str
    qos: Qos
    peer_connected: bool


@dataclass(frozen=True)
class GetKeyResult:
    """One key chunk of a stream (identical at both ends for the same index)."""

    key_stream_id: str
    index: int
    key: bytes = field(repr=False)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeliveredKey:
    """An ETSI 014 key: UUID key_ID, the bytes, and optional extension (e.g. provenance)."""

    key_id: str
    key: bytes = field(repr=False)
    extension: dict[str, Any] | None = None


class DeliveredKeys(Sequence[DeliveredKey]):
    """The keys of one ETSI 014 answer as parallel lists (ids, bytes, each key's extension:
    the keys of one relay batch share one dict), so a bulk answer makes no object per key
    on its way to the wire (:func:`keyplane.api.etsi014.app` writes the lists); a
    :class:`DeliveredKey` is made only for a key read by index or iteration. Equal to any
    sequence of the same keys."""

    __slots__ = ("extensions", "key_ids", "keys")

    def __init__(self, key_ids: list[str], keys: list[bytes],
                 extensions: list[dict[str, Any] | None]) -> None:
        if not len(key_ids) == len(keys) == len(extensions):
            raise ValueError("key_ids, keys and extensions differ in length")
        self.key_ids = key_ids
        self.keys = keys
        self.extensions = extensions

    def __len__(self) -> int:
        return len(self.key_ids)

    @overload
    def __getitem__(self, i: int) -> DeliveredKey: ...
    @overload
    def __getitem__(self, i: slice) -> list[DeliveredKey]: ...
    def __getitem__(self, i: int | slice) -> DeliveredKey | list[DeliveredKey]:
        if isinstance(i, slice):
            return [DeliveredKey(*t) for t in zip(self.key_ids[i], self.keys[i],
                                                  self.extensions[i], strict=True)]
        return DeliveredKey(self.key_ids[i], self.keys[i], self.extensions[i])

    def __iter__(self) -> Iterator[DeliveredKey]:
        for t in zip(self.key_ids, self.keys, self.extensions, strict=True):
            yield DeliveredKey(*t)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # equal to lists: unhashable as they are

    def __add__(self, other: Sequence[DeliveredKey]) -> list[DeliveredKey]:
        """Concatenation, as a list's (``enc_keys(...) + enc_keys(...)``)."""
        return [*self, *other]

    def __radd__(self, other: Sequence[DeliveredKey]) -> list[DeliveredKey]:
        return [*other, *self]

    def __repr__(self) -> str:  # never the bytes
        return f"DeliveredKeys({self.key_ids!r})"


@dataclass(frozen=True)
class PairStatus:
    """ETSI 014 Status figures for a (master, slave) SAE pair, from real state."""

    source_kme_id: str
    target_kme_id: str
    master_sae_id: str
    slave_sae_id: str
    key_size: int
    stored_key_count: int
    max_key_count: int
    max_key_per_request: int
    max_key_size: int
    min_key_size: int
    max_sae_id_count: int


class ApplicationService(Protocol):
    """A key manager as seen by the ETSI 004 / 014 servers of its node."""

    node_id: str

    # ---- ETSI GS QKD 004 -------------------------------------------------------------
    async def open_connect(self, caller: Caller, source: str, destination: str, qos: Qos,
                           key_stream_id: str | None) -> OpenResult:
        """OPEN_CONNECT: authenticate, ask Admission Control, return once configured
        (or with ``peer_connected=False`` while the peer has not opened yet)."""
        ...

    async def get_key(self, caller: Caller, key_stream_id: str, index: int | None,
                      metadata: dict[str, Any] | None = None, *, acknowledge: bool = False,
                      confirm: Sequence[int] = ()) -> GetKeyResult:
        """GET_KEY: the chunk at ``index`` (next one when None), same at both ends.

        ``acknowledge``: hand it out held until confirmed (fetchable again by the owner);
        ``confirm``: indexes received that way, spent now (ETSI 004 extension, #14.4)."""
        ...

    async def close_stream(self, caller: Caller, key_stream_id: str) -> None:
        """ETSI 004 CLOSE: end the caller's side of the stream and free its resources.

        Named apart from a key manager's lifecycle ``close()`` (which stops the KM)."""
        ...

    # ---- ETSI GS QKD 014 -------------------------------------------------------------
    async def status(self, caller: Caller, master_sae: str, slave_sae: str) -> PairStatus:
        """Status for keys from ``master_sae`` (the caller) to ``slave_sae``."""
        ...

    async def enc_keys(self, caller: Caller, master_sae: str, slave_sae: str, number: int,
                       size_bits: int, additional_slaves: list[str] | None = None,
                       extensions: dict[str, Any] | None = None
                       ) -> Sequence[DeliveredKey]:
        """Fresh keys for the master; the slave(s) can fetch them once with dec_keys."""
        ...

    async def dec_keys(self, caller: Caller, slave_sae: str, master_sae: str,
                       key_ids: list[str], *, acknowledge: bool = False,
                       confirm: Sequence[str] = ()) -> Sequence[DeliveredKey]:
        """The keys ``key_ids`` that ``master_sae`` made for ``slave_sae`` (each once);
        ``acknowledge``/``confirm``: the keyplane extension (docs/api/etsi014.md)."""
        ...
