"""Exceptions of the client SDK.

```
ClientError
├── TransportError          no HTTP answer: connection refused, TLS refused, timeout
└── ApiError                an HTTP error answer {message, details} (ETSI 014, or 004 HTTP)
│   ├── BadRequestError     400
│   ├── UnauthorizedError   401
│   └── ServiceUnavailableError  503
└── Etsi004StatusError      an ETSI 004 call answered with a non-success status
```
"""

from __future__ import annotations

from typing import Any

from keyplane.api.etsi004.status import Etsi004Status

__all__ = [
    "ApiError",
    "BadRequestError",
    "ClientError",
    "Etsi004StatusError",
    "ServiceUnavailableError",
    "TransportError",
    "UnauthorizedError",
]


class ClientError(Exception):
    """Base of every error the keyplane client SDK raises."""


class TransportError(ClientError):
    """The KM could not be reached or refused the TLS handshake; no answer was received."""


class ApiError(ClientError):
    """The KM answered with an HTTP error and the standard's ``{message, details}`` body.

    Attributes:
        status_code: the HTTP status.
        message: the body's ``message``.
        details: the body's ``details`` (empty when absent).
    """

    def __init__(self, status_code: int, message: str,
                 details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.message = message
        self.details = details or []

    @classmethod
    def from_response(cls, status_code: int, body: Any) -> ApiError:
        """The most specific subclass for ``status_code``, from a decoded error body."""
        message = body.get("message", "") if isinstance(body, dict) else str(body)
        details = body.get("details") if isinstance(body, dict) else None
        sub = {400: BadRequestError, 401: UnauthorizedError,
               503: ServiceUnavailableError}.get(status_code, ApiError)
        return sub(status_code, message, details)


class BadRequestError(ApiError):
    """400: malformed request, parameters out of limits, unknown key_ID, unsupported
    mandatory extension."""


class UnauthorizedError(ApiError):
    """401: the SAE is not authenticated or not entitled to the keys."""


class ServiceUnavailableError(ApiError):
    """503: the KM cannot provide keys now (no key material, no path, timeout...)."""


class Etsi004StatusError(ClientError):
    """An ETSI 004 call returned a status other than success.

    Attributes:
        status: the :class:`Etsi004Status`.
        body: the decoded response (e.g. ``QoS`` holds the KM's counter-proposal for 7,
            ``Metadata.Metadata_size`` the size needed for 8).
    """

    def __init__(self, status: Etsi004Status, body: dict[str, Any]) -> None:
        super().__init__(f"ETSI 004 status {int(status)} ({status.name})")
        self.status = status
        self.body = body
