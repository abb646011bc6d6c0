"""ETSI GS QKD 014 V1.1.1 data formats (clause 6), one pydantic model per body.

Field names are the standard's, verbatim (``key_ID``, ``max_SAE_ID_count``…), so this
module does not follow snake_case. Sizes are bits, keys are standard Base64 (RFC 4648),
key_IDs are canonical UUID strings. Optional members that are None are left out of
responses. These models are shared by the server and the client SDK.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from keyplane.api.jsontypes import JsonInt

__all__ = [
    "KEY_ID_PATTERN",
    "Error",
    "Key",
    "KeyContainer",
    "KeyIDs",
    "KeyIDsItem",
    "KeyId",
    "KeyRequest",
    "Status",
]

Extension = dict[str, Any]
"""A vendor extension object: member names are parameter names (clause 6.2)."""
SaeId = Annotated[str, Field(min_length=1, max_length=256)]
KEY_ID_PATTERN = (
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
KeyId = Annotated[str, Field(pattern=KEY_ID_PATTERN, json_schema_extra={"format": "uuid"})]
"""A key_ID: a UUID in its canonical text form (RFC 4122). Checked by pattern, in
pydantic-core, rather than parsed into ``uuid.UUID``: bulk requests carry thousands."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Liberal(BaseModel):
    """A request body whose unknown members are ignored, not refused.

    Clause 6.4 leaves room in Key IDs: clients put their own members there (QURSA's
    QuKayDee backend sends ``master_SAE_ID`` inside every ``key_IDs`` entry), and nothing in
    them changes which keys are asked for. The Key request (6.2) stays strict: there an
    unknown member is most likely a misspelt ``number`` or ``size``, and ignoring it would
    deliver keys other than the ones meant; the standard's room for additions there is
    ``extension_mandatory``/``extension_optional``.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)


class Status(_Body):
    """Status data format (clause 6.1): returned by GET ``/{slave_SAE_ID}/status``."""

    source_KME_ID: str = Field(description="KME ID of the KME (the master's).")
    target_KME_ID: str = Field(description="KME ID of the target KME (the slave's).")
    master_SAE_ID: str = Field(description="SAE ID of the calling master SAE.")
    slave_SAE_ID: str = Field(description="SAE ID of the specified slave SAE.")
    key_size: int = Field(description="Default size of key the KME can deliver to the SAE (bit).")
    stored_key_count: int = Field(description="Number of stored keys KME can deliver to the SAE.")
    max_key_count: int = Field(description="Maximum number of stored_key_count.")
    max_key_per_request: int = Field(description="Maximum number of keys per request.")
    max_key_size: int = Field(description="Maximum size of key the KME can deliver (bit).")
    min_key_size: int = Field(description="Minimum size of key the KME can deliver (bit).")
    max_SAE_ID_count: int = Field(
        description="Maximum number of additional_slave_SAE_IDs the KME allows; "
                    "0 when the KME does not support key multicast.")
    status_extension: Extension | None = Field(
        default=None, description="(Option) for future use.")


class KeyRequest(_Body):
    """Key request data format (clause 6.2): body of POST ``/{slave_SAE_ID}/enc_keys``."""

    number: JsonInt | None = Field(default=None,
                                     description="Number of keys requested; default 1.")
    size: JsonInt | None = Field(
        default=None, description="Size of each key in bits; default is Status key_size.")
    additional_slave_SAE_IDs: list[SaeId] | None = Field(
        default=None, description="IDs of further slave SAEs that shall share the keys "
                                  "(at most max_SAE_ID_count).")
    extension_mandatory: list[Extension] | None = Field(
        default=None, description="Extension parameters the KME shall handle or return an error.")
    extension_optional: list[Extension] | None = Field(
        default=None, description="Extension parameters the KME may ignore.")


class Key(_Body):
    """One key of a Key container (clause 6.3)."""

    key_ID: KeyId = Field(description="ID of the key: UUID format.")
    key_ID_extension: Extension | None = Field(default=None, description="(Option) future use.")
    key: str = Field(description="Key data encoded by base64 (RFC 4648).")
    key_extension: Extension | None = Field(default=None, description="(Option) future use.")


class KeyContainer(_Body):
    """Key container data format (clause 6.3): every key-returning response."""

    keys: list[Key] = Field(description="Array of keys; the number equals the request's.")
    key_container_extension: Extension | None = Field(
        default=None, description="(Option) future use.")


class KeyIDsItem(_Liberal):
    """One entry of ``key_IDs`` (clause 6.4)."""

    key_ID: KeyId = Field(description="ID of the key: UUID format.")
    key_ID_extension: Extension | None = Field(default=None, description="(Option) future use.")


class KeyIDs(_Liberal):
    """Key IDs data format (clause 6.4): body of POST ``/{master_SAE_ID}/dec_keys``."""

    key_IDs: list[KeyIDsItem] = Field(min_length=1, description="Array of key IDs.")
    key_IDs_extension: Extension | None = Field(default=None, description="(Option) future use.")


class Error(_Body):
    """Error data format (clause 6.5): body of every non-200 response."""

    message: str = Field(description="Error message.")
    details: list[dict[str, Any]] | None = Field(
        default=None, description="(Option) array of objects with further details.")
