"""The one table from domain exceptions to ETSI 014 HTTP codes and ETSI 004 status codes.

Both servers route every failure through :func:`map_exception`, so a key manager error reads
the same on every interface (STYLE.md §4). Rows are tried in order, most specific first;
the first ``isinstance`` match wins:

| exception                         | ETSI 014 | ETSI 004 status                              |
|-----------------------------------|----------|----------------------------------------------|
| AuthenticationFailed              | 401      | none: HTTP 401                                |
| KeyNotFound                       | 400      | 9 KSID_NOT_FOUND (non-standard; index gone)   |
| SessionNotFound                   | 400      | 9 KSID_NOT_FOUND (non-standard)               |
| SessionIdInUse                    | 400      | 5 OC_KSID_ALREADY_IN_USE                      |
| ExtensionNotMet                   | 400      | 7 OC_QOS_NOT_SATISFIABLE                      |
| QosNotMet                         | 503      | 7 OC_QOS_NOT_SATISFIABLE                      |
| PeerNotConnected                  | 503      | 1 PEER_NOT_CONNECTED (open), 3 (get_key)      |
| InsufficientKeyMaterial, KmBusy   | 503      | 2 GK_INSUFFICIENT_KEY_AVAILABLE               |
| ControlPlaneUnreachable           | 503      | 6 TIMEOUT_ERROR (Access/Admission Control)    |
| PeerUnreachable                   | 503      | 4 NO_QKD_CONNECTION_AVAILABLE                 |
| RelayTimeout, BusTimeout, Timeout | 503      | 6 TIMEOUT_ERROR                               |
| ExceedsTokenBucket (never fits)   | 400      | 6 TIMEOUT_ERROR                               |
| RateLimited (token bucket)        | 503      | 6 TIMEOUT_ERROR                               |
| any other KeyplaneError           | 503      | none: HTTP 503                                |

Anything else is a bug and is left to the framework (HTTP 500), never disguised.
:class:`ApiRequestError` is the servers' own "bad request" (limits, malformed input), raised
before the key manager is called so that bad input changes nothing.

Messages are fixed per row (the ETSI 014 texts where the standard or common practice has
one) so clients can rely on them; an exception's own text goes in ``details`` as
``{"reason": ...}``. No exception in keyplane carries key material (errors.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from keyplane.api.etsi004.status import Etsi004Status
from keyplane.errors import (
    AuthenticationFailed,
    BusTimeout,
    ControlPlaneUnreachable,
    ExceedsTokenBucket,
    ExtensionNotMet,
    InsufficientKeyMaterial,
    KeyNotFound,
    KeyplaneError,
    KmBusy,
    PeerNotConnected,
    PeerUnreachable,
    QosNotMet,
    RateLimited,
    RelayTimeout,
    SessionIdInUse,
    SessionNotFound,
)

__all__ = [
    "ApiRequestError",
    "ErrorMapping",
    "Operation",
    "error_details",
    "etsi004_status",
    "map_exception",
]

Operation = Literal["status", "enc_keys", "dec_keys", "open_connect", "get_key", "close"]


class ApiRequestError(Exception):
    """A request the server rejects itself, before calling the key manager.

    Args:
        message: the ETSI 014 ``message``.
        details: the ETSI 014 ``details`` (a list of objects), if any.
        http_status: 400 (bad request) or 401 (no usable identity).
    """

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None, *,
                 http_status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.http_status = http_status


@dataclass(frozen=True)
class ErrorMapping:
    """How one exception reads on the wire.

    ``etsi004`` is None when ETSI 004 has no status for the failure; the 004 server then
    answers with ``http_status`` and an error body instead of a status code.
    """

    http_status: int
    message: str
    etsi004: Etsi004Status | None
    etsi004_on_get_key: Etsi004Status | None = field(default=None)


_NOT_AUTHORIZED = ErrorMapping(
    401, "SAE is not authenticated or not entitled to the requested keys", None)
_TABLE: tuple[tuple[tuple[type[BaseException], ...], ErrorMapping], ...] = (
    ((AuthenticationFailed,), _NOT_AUTHORIZED),
    ((KeyNotFound,), ErrorMapping(400, "one or more keys specified are not found on KME",
                                  Etsi004Status.KSID_NOT_FOUND)),
    ((SessionNotFound,), ErrorMapping(400, "Key_stream_ID or session not found",
                                      Etsi004Status.KSID_NOT_FOUND)),
    ((SessionIdInUse,), ErrorMapping(400, "Key_stream_ID already in use",
                                     Etsi004Status.OC_KSID_ALREADY_IN_USE)),
    ((ExtensionNotMet,), ErrorMapping(400, "not all extension_mandatory request options could "
                                           "be met", Etsi004Status.OC_QOS_NOT_SATISFIABLE)),
    ((QosNotMet,), ErrorMapping(503, "requested QoS cannot be met",
                                Etsi004Status.OC_QOS_NOT_SATISFIABLE)),
    ((PeerNotConnected,), ErrorMapping(503, "peer application is not connected",
                                       Etsi004Status.PEER_NOT_CONNECTED,
                                       Etsi004Status.GK_PEER_NOT_CONNECTED)),
    ((InsufficientKeyMaterial,), ErrorMapping(503, "not enough key material available",
                                              Etsi004Status.GK_INSUFFICIENT_KEY_AVAILABLE)),
    ((KmBusy,), ErrorMapping(503, "key manager is busy, retry later",
                             Etsi004Status.GK_INSUFFICIENT_KEY_AVAILABLE)),
    ((ExceedsTokenBucket,), ErrorMapping(400, "request exceeds the session's key rate burst",
                                         Etsi004Status.TIMEOUT_ERROR)),
    ((RateLimited,), ErrorMapping(503, "key rate of the session exceeded within the timeout",
                                  Etsi004Status.TIMEOUT_ERROR)),
    ((ControlPlaneUnreachable,), ErrorMapping(503, "the control plane did not answer in time",
                                              Etsi004Status.TIMEOUT_ERROR)),
    ((PeerUnreachable,), ErrorMapping(503, "no QKD connection to the peer is available",
                                      Etsi004Status.NO_QKD_CONNECTION_AVAILABLE)),
    ((RelayTimeout, BusTimeout, TimeoutError),
     ErrorMapping(503, "the key manager did not answer in time", Etsi004Status.TIMEOUT_ERROR)),
    ((KeyplaneError,), ErrorMapping(503, "key manager error", None)),
)


def map_exception(exc: BaseException) -> ErrorMapping | None:
    """The table row for ``exc``, or None when it is not a domain failure (a bug)."""
    for types, mapping in _TABLE:
        if isinstance(exc, types):
            return mapping
    return None


def etsi004_status(mapping: ErrorMapping, operation: Operation) -> Etsi004Status | None:
    """The 004 status of ``mapping`` for ``operation`` (PeerNotConnected differs by call)."""
    if operation == "get_key" and mapping.etsi004_on_get_key is not None:
        return mapping.etsi004_on_get_key
    return mapping.etsi004


def error_details(exc: BaseException) -> list[dict[str, Any]] | None:
    """``details`` for an error body: the exception's own text, when it has one."""
    if isinstance(exc, ApiRequestError):
        return exc.details
    reason = str(exc)
    return [{"reason": reason}] if reason else None
