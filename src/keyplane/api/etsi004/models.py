"""ETSI GS QKD 004 V2.1.1 calls as JSON bodies (keyplane's transport for the abstract API).

The standard defines OPEN_CONNECT, GET_KEY and CLOSE as abstract functions (clause 6)
without a transport; keyplane carries each call as one JSON POST over HTTPS with mutual
TLS. Member names are the standard's parameter names (``Key_stream_ID``, ``QoS``,
``key_buffer``, ``Key_chunk_size``…), so this module does not follow snake_case.
``key_buffer`` is standard Base64. Metadata is ``application/json``: ``Metadata_buffer`` is
the JSON object itself and ``Metadata_size`` its length in bytes as compact UTF-8 JSON
(sorted keys, no spaces), which is what a C binding's buffer would hold. The call's ``status``
is an :class:`~keyplane.api.etsi004.status.Etsi004Status` value in the response body;
HTTP errors are reserved for requests that never reach the call (unauthenticated,
malformed).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from keyplane.api.jsontypes import JSON_INTEGER

if TYPE_CHECKING:  # the client SDK imports these models: it stays free of the bus modules
    from keyplane.messages import Qos

__all__ = [
    "CloseRequest",
    "CloseResponse",
    "GetKeyRequest",
    "GetKeyResponse",
    "MetadataIn",
    "MetadataOut",
    "OpenConnectRequest",
    "OpenConnectResponse",
    "QosParameters",
]

UInt32 = Annotated[int, Field(ge=0, le=2**32 - 1), JSON_INTEGER]
AppUri = Annotated[str, Field(min_length=1, max_length=256)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QosParameters(_Body):
    """QoS parameters (clause 6.1.1, Table 2); in OPEN_CONNECT and in its answer."""

    Key_chunk_size: Annotated[int, Field(ge=1, le=1 << 20), JSON_INTEGER] = Field(
        default=32, description="Length of the key buffer GET_KEY returns, in bytes.")
    Max_bps: UInt32 = Field(default=0, description="Maximum key rate requested, bit/s.")
    Min_bps: UInt32 = Field(default=0, description="Minimum key rate requested, bit/s.")
    Jitter: UInt32 = Field(default=0, description="Maximum deviation in key delivery.")
    Priority: UInt32 = Field(default=0, description="Priority of the request.")
    Timeout: UInt32 = Field(default=5000,
                            description="Milliseconds a call may block before status 6.")
    TTL: UInt32 = Field(default=0, description="Key time to live, seconds (0: none).")
    Metadata_mimetype: Annotated[str, Field(max_length=256)] = Field(
        default="application/json", description="MIME type of the metadata.")

    def to_domain(self) -> Qos:
        """The bus-level :class:`keyplane.messages.Qos` the key manager takes."""
        from keyplane.messages import Qos

        return Qos(key_chunk_size=self.Key_chunk_size, max_bps=self.Max_bps,
                   min_bps=self.Min_bps, jitter=self.Jitter, priority=self.Priority,
                   timeout_ms=self.Timeout, ttl_s=self.TTL,
                   metadata_mimetype=self.Metadata_mimetype)

    @classmethod
    def from_domain(cls, qos: Qos) -> QosParameters:
        """The wire form of a key manager's :class:`keyplane.messages.Qos`."""
        return cls(Key_chunk_size=qos.key_chunk_size, Max_bps=qos.max_bps, Min_bps=qos.min_bps,
                   Jitter=qos.jitter, Priority=qos.priority, Timeout=qos.timeout_ms,
                   TTL=qos.ttl_s, Metadata_mimetype=qos.metadata_mimetype)


class OpenConnectRequest(_Body):
    """OPEN_CONNECT(source, destination, QoS, Key_stream_ID) (clause 6.3)."""

    source: AppUri = Field(description="Identifier of the calling application (its SAE ID).")
    destination: AppUri = Field(description="Identifier of the peer application (SAE ID).")
    QoS: QosParameters = Field(default_factory=lambda: QosParameters(),
                              description="Requested QoS.")
    Key_stream_ID: uuid.UUID | None = Field(
        default=None, description="Null to open a new stream; the peer passes the opener's.")


class OpenConnectResponse(_Body):
    """OPEN_CONNECT result: the stream id, the QoS served (or counter-proposed), status."""

    status: int = Field(description="ETSI 004 status code (0 success, 1 peer not connected...).")
    Key_stream_ID: uuid.UUID | None = Field(default=None, description="The stream's UUID.")
    QoS: QosParameters | None = Field(
        default=None, description="QoS served, or the KM's counter-proposal (status 7).")


class MetadataIn(_Body):
    """The caller's metadata buffer (clause 6.4): its capacity and optional content."""

    Metadata_size: UInt32 = Field(description="Capacity of the caller's metadata buffer, bytes.")
    Metadata_buffer: dict[str, Any] | None = Field(
        default=None, description="Metadata sent to the KM (application/json object).")


class MetadataOut(_Body):
    """Metadata returned by GET_KEY; with status 8 only ``Metadata_size`` (size needed)."""

    Metadata_size: UInt32 = Field(description="Length of the metadata as compact JSON, bytes.")
    Metadata_mimetype: str = Field(description="Format of Metadata_buffer.")
    Metadata_buffer: dict[str, Any] | None = Field(
        default=None, description="The metadata (application/json object).")


class GetKeyRequest(_Body):
    """GET_KEY(Key_stream_ID, index, Metadata) (clause 6.4)."""

    Key_stream_ID: uuid.UUID = Field(description="Stream returned by OPEN_CONNECT.")
    index: UInt32 | None = Field(
        default=None, description="Position of the key chunk in the stream; null: the next.")
    Metadata: MetadataIn | None = Field(default=None, description="Caller's metadata buffer.")


class GetKeyResponse(_Body):
    """GET_KEY result: ``key_buffer`` of ``Key_chunk_size`` bytes at ``index``, status."""

    status: int = Field(description="ETSI 004 status code.")
    index: UInt32 | None = Field(default=None, description="Index of the returned chunk.")
    key_buffer: str | None = Field(default=None, description="Base64 of the key chunk.")
    Metadata: MetadataOut | None = Field(default=None, description="Metadata of the chunk.")


class CloseRequest(_Body):
    """CLOSE(Key_stream_ID) (clause 6.5)."""

    Key_stream_ID: uuid.UUID = Field(description="Stream to close.")


class CloseResponse(_Body):
    """CLOSE result."""

    status: int = Field(description="ETSI 004 status code.")
