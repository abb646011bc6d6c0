"""Who is calling: the transport identity of a request, and the SAE it acts as.

The identity is what the transport authenticated, never a claim in the body:

1. ``Authorization: Bearer <token>`` when present (a :class:`Caller` with
   ``method="token"``; the token is never logged);
2. otherwise the mutual-TLS client certificate. Uvicorn does not put the peer certificate
   in the ASGI scope, so :mod:`keyplane.api.server` stores its DER form in the per-connection
   ASGI ``state`` under :data:`PEER_CERT_STATE_KEY`; servers implementing the ASGI TLS
   extension (``scope["extensions"]["tls"]["client_cert_chain"]``) work too.

The SAE the caller acts as is the :data:`~keyplane.api.settings.SAE_ID_HEADER` header when
given, else the only SAE of this KM its identity owns. Whether it may act as that SAE is
the key manager's decision (Access Control), not the server's.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Mapping
from typing import Any

from keyplane.api.errors import ApiRequestError
from keyplane.api.settings import SAE_ID_HEADER, ApiSettings
from keyplane.certs import peer_subject
from keyplane.keymanager.interface import Caller

__all__ = ["PEER_CERT_STATE_KEY", "caller_from_scope", "resolve_sae"]

PEER_CERT_STATE_KEY = "keyplane.peer_cert_der"


def _header(scope: Mapping[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


@functools.lru_cache(maxsize=4096)
def _subject(der: bytes) -> str:
    # Parsing X.509 costs more than the rest of a request; a connection (and an SAE)
    # presents the same certificate on every request, so parse each one once.
    return peer_subject(der)


def _peer_cert_der(scope: Mapping[str, Any]) -> bytes | None:
    der = (scope.get("state") or {}).get(PEER_CERT_STATE_KEY)
    if der:
        return bytes(der)
    chain = ((scope.get("extensions") or {}).get("tls") or {}).get("client_cert_chain")
    if chain:
        return ssl.PEM_cert_to_DER_cert(chain[0])
    return None


def caller_from_scope(scope: Mapping[str, Any]) -> Caller:
    """The authenticated :class:`Caller` of an ASGI request.

    Raises:
        ApiRequestError: (401) no bearer token and no client certificate, or a malformed
            Authorization header.
    """
    auth = _header(scope, b"authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiRequestError("unsupported Authorization header (use Bearer)",
                                  http_status=401)
        return Caller(identity=token, method="token")
    der = _peer_cert_der(scope)
    if der is None:
        raise ApiRequestError("SAE is not authenticated (no client certificate or token)",
                              http_status=401)
    return Caller(identity=_subject(der))


def resolve_sae(scope: Mapping[str, Any], caller: Caller, settings: ApiSettings) -> str:
    """The SAE id the caller acts as (see the module docstring).

    Raises:
        ApiRequestError: (401) the identity owns no SAE on this KM, or several and the
            request does not say which.
    """
    claimed = _header(scope, SAE_ID_HEADER.lower().encode())
    if claimed:
        return claimed
    owned = settings.saes_of(caller.identity, caller.method)
    if len(owned) == 1:
        return owned[0]
    if not owned:
        raise ApiRequestError("SAE is not authenticated: no SAE of this KME for this identity",
                              http_status=401)
    raise ApiRequestError(f"identity owns several SAEs here; name one in {SAE_ID_HEADER}",
                          [{"sae_ids": sorted(owned)}], http_status=401)
