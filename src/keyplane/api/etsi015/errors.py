"""RESTCONF errors (RFC 8040 §7): one exception type, one body shape, one HTTP code each.

The agent's handlers raise :class:`RestconfError`; one FastAPI exception handler turns it into
``{"ietf-restconf:errors": {"error": [{error-type, error-tag, error-message, error-path}]}}``.
The controller-side client raises :class:`Etsi015ClientError` (the agent answered with an error)
or :class:`Etsi015Unreachable` (no answer in time, TLS or connection failure).

Error-tag → status (RFC 8040 §7, the subset the agent uses):

| error-tag              | HTTP | when                                                        |
|------------------------|------|-------------------------------------------------------------|
| malformed-message      | 400  | body is not JSON / not an object / wrong top-level shape      |
| invalid-value          | 400  | a value the model forbids, a bad key in the URI, query params |
| unknown-element        | 400  | a member the model does not define (or not allowed there)     |
| missing-element        | 400  | a mandatory leaf or list key is missing                       |
| invalid-value          | 404  | the target resource does not exist                            |
| access-denied          | 401  | no valid credentials on a listener that asks for them         |
| access-denied          | 403  | the client certificate may not write                          |
| operation-not-supported| 405  | method not allowed on this resource (read-only data)          |
| data-exists            | 409  | POST of something that already exists                         |
| invalid-value          | 415  | a media type other than JSON                                  |
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from keyplane.errors import KeyplaneError

__all__ = [
    "ERROR_MEDIA_TYPE",
    "Etsi015ClientError",
    "Etsi015Error",
    "Etsi015Unreachable",
    "RestconfError",
]

ERROR_MEDIA_TYPE = "application/yang-data+json"

ErrorType = Literal["transport", "rpc", "protocol", "application"]


class Etsi015Error(KeyplaneError):
    """Base of the ETSI GS QKD 015 errors."""


class RestconfError(Etsi015Error):
    """A RESTCONF request failed; nothing in the datastore changed.

    Attributes:
        status: the HTTP status code.
        error_type: RFC 8040 ``error-type`` (``protocol`` or ``application`` here).
        error_tag: RFC 8040 ``error-tag`` (see the module table).
        path: the RFC 8040 ``error-path`` (instance path), if known.
        headers: HTTP headers the answer needs (``WWW-Authenticate`` on a 401).
    """

    def __init__(self, status: int, error_tag: str, message: str, *,
                 error_type: ErrorType = "protocol", path: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_tag = error_tag
        self.error_type: ErrorType = error_type
        self.message = message
        self.path = path
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The ``ietf-restconf:errors`` document (RFC 8040 §7.1)."""
        error: dict[str, Any] = {"error-type": self.error_type, "error-tag": self.error_tag,
                                 "error-message": self.message}
        if self.path:
            error["error-path"] = self.path
        return {"ietf-restconf:errors": {"error": [error]}}


class Etsi015ClientError(Etsi015Error):
    """An SDN agent answered a controller request with a RESTCONF error.

    Attributes:
        status: HTTP status code.
        errors: the ``error`` entries of the ``ietf-restconf:errors`` body (may be empty
            when the body was not a RESTCONF error document).
    """

    def __init__(self, method: str, url: str, status: int, errors: list[dict[str, Any]]
                 ) -> None:
        detail = "; ".join(f"{e.get('error-tag')}: {e.get('error-message')}" for e in errors)
        super().__init__(f"{method} {url} -> {status}" + (f" ({detail})" if detail else ""))
        self.status = status
        self.errors = errors

    @property
    def error_tag(self) -> str | None:
        """The first error's ``error-tag``."""
        return self.errors[0].get("error-tag") if self.errors else None


class Etsi015Unreachable(Etsi015Error):
    """An SDN agent did not answer: connection refused, TLS failure or timeout."""
