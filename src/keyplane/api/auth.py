"""Who is calling: the verified client certificate of a request, and the SAE it acts as.

The identity is the mutual-TLS client certificate the handshake verified against the
network CA, and nothing else. The server (:mod:`keyplane.api.httpserver`) hands it to the
app as the ASGI TLS extension, ``scope["extensions"]["tls"]`` (``client_cert_name``, the
RFC 4514 subject, or ``client_cert_chain``); a request cannot set or change it.

Every header is untrusted input (issue #13):

- ``Authorization`` is refused (401). keyplane issues no bearer tokens: a token that is
  not verified would let one certificate holder claim another user's identity, and a
  verified one bound to the certificate (RFC 8705) would name the certificate's owner
  again. A request that carries one is answered 401 rather than served as the
  certificate's owner, so a client that relies on a token learns it at once.
- :data:`~keyplane.api.settings.SAE_ID_HEADER` (``X-SAE-ID``) may only *choose among*
  the SAEs of this KM that the certificate's owner already owns; any other value is 401.
  Without it, the caller acts as the only SAE its certificate owns here.

Whether the identity may act as that SAE towards the peer is, in addition, the key
manager's decision (Access Control); session ownership compares
:attr:`~keyplane.keymanager.interface.Caller.principal`.
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

__all__ = ["caller_from_scope", "resolve_sae"]

_SAE_ID_HEADER = SAE_ID_HEADER.lower().encode()


def _header(scope: Mapping[str, Any], name: bytes) -> str | None:
    """The one value of header ``name``; several values are refused (401)."""
    found: str | None = None
    for key, value in scope.get("headers", ()):
        if key == name:
            if found is not None:
                raise ApiRequestError(f"header {name.decode()} given more than once",
                                      http_status=401)
            found = str(value.decode("latin-1"))
    return found


@functools.lru_cache(maxsize=4096)
def _subject_of_pem(pem: str) -> str:
    # Parsing X.509 costs more than the rest of a request; a connection (and an SAE)
    # presents the same certificate on every request, so parse each one once.
    return peer_subject(ssl.PEM_cert_to_DER_cert(pem))


def certificate_subject(scope: Mapping[str, Any]) -> str | None:
    """RFC 4514 subject of the request's verified client certificate (None: there is none).

    Read only from the ASGI TLS extension, which only the server sets.
    """
    tls = (scope.get("extensions") or {}).get("tls")
    if not tls or tls.get("client_cert_error"):
        return None
    name = tls.get("client_cert_name")
    if isinstance(name, str) and name:
        return name
    chain = tls.get("client_cert_chain")
    if chain:
        return _subject_of_pem(chain[0])
    return None


def caller_from_scope(scope: Mapping[str, Any]) -> Caller:
    """The authenticated :class:`Caller` of an ASGI request: its client certificate.

    Raises:
        ApiRequestError: (401) an ``Authorization`` header (no bearer tokens are accepted),
            or no verified client certificate.
    """
    if _header(scope, b"authorization") is not None:
        raise ApiRequestError(
            "Authorization headers are not accepted: the client certificate is the identity",
            http_status=401)
    subject = certificate_subject(scope)
    if subject is None:
        raise ApiRequestError("SAE is not authenticated (no verified client certificate)",
                              http_status=401)
    return Caller(identity=subject)


def resolve_sae(scope: Mapping[str, Any], caller: Caller, settings: ApiSettings) -> str:
    """The SAE id the caller acts as (see the module docstring).

    Raises:
        ApiRequestError: (401) the identity owns no SAE on this KM; the header names an SAE
            it does not own; or it owns several and the request does not say which.
    """
    owned = settings.saes_of(caller.identity)
    claimed = _header(scope, _SAE_ID_HEADER)
    if claimed:
        if claimed not in owned:
            raise ApiRequestError(
                f"SAE is not authenticated: the client certificate does not own the SAE "
                f"named in {SAE_ID_HEADER}", http_status=401)
        return claimed
    if len(owned) == 1:
        return owned[0]
    if not owned:
        raise ApiRequestError("SAE is not authenticated: no SAE of this KME for this identity",
                              http_status=401)
    raise ApiRequestError(f"identity owns several SAEs here; name one in {SAE_ID_HEADER}",
                          [{"sae_ids": sorted(owned)}], http_status=401)
