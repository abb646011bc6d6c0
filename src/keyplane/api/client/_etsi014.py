"""ETSI GS QKD 014 clients (sync and async) for an SAE.

The master asks its KME for keys shared with a slave (``enc_keys``) and sends the key_IDs
to the slave out of band; the slave gets the same keys from *its* KME (``dec_keys``).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import httpx

from keyplane.api.client._config import load_sae_endpoint
from keyplane.api.client._http import (
    AsyncPool,
    SyncPool,
    client_options,
    decode,
    ok_body,
    translate_transport_errors,
)
from keyplane.api.etsi014.models import KeyContainer, Status

__all__ = ["AsyncEtsi014Client", "Etsi014Client", "Key", "Status"]

_PREFIX = "/api/v1/keys"


@dataclass(frozen=True)
class Key:
    """One ETSI 014 key: its UUID ``key_id`` and the raw bytes (never in repr)."""

    key_id: str
    key: bytes = field(repr=False)
    extension: dict[str, Any] | None = None


def _keys(body: bytes) -> list[Key]:
    container = KeyContainer.model_validate_json(body)
    return [Key(k.key_ID, base64.b64decode(k.key, validate=True), k.key_extension)
            for k in container.keys]


def _enc_request(slave: str, number: int | None, size: int | None,
                 additional: Sequence[str] | None, mandatory: Sequence[dict[str, Any]] | None,
                 optional: Sequence[dict[str, Any]] | None) -> tuple[str, str, dict[str, Any]]:
    """(method, url, httpx kwargs): GET when only number/size are set, POST otherwise."""
    url = f"{_PREFIX}/{quote(slave, safe='')}/enc_keys"
    if additional is None and mandatory is None and optional is None:
        params = {k: v for k, v in (("number", number), ("size", size)) if v is not None}
        return "GET", url, {"params": params}
    body: dict[str, Any] = {"number": number, "size": size,
                            "additional_slave_SAE_IDs": list(additional) if additional else None,
                            "extension_mandatory": list(mandatory) if mandatory else None,
                            "extension_optional": list(optional) if optional else None}
    return "POST", url, {"json": {k: v for k, v in body.items() if v is not None}}


def _dec_request(master: str, key_ids: Sequence[str], ack: bool = False,
                 confirm: Sequence[str] = ()) -> tuple[str, str, dict[str, Any]]:
    url = f"{_PREFIX}/{quote(master, safe='')}/dec_keys"
    if len(key_ids) == 1 and not ack and not confirm:
        return "GET", url, {"params": {"key_ID": key_ids[0]}}
    body: dict[str, Any] = {"key_IDs": [{"key_ID": k} for k in key_ids]}
    if ack or confirm:  # keyplane extension (docs/api/etsi014.md)
        body["key_IDs_extension"] = {"keyplane_ack": ack, "keyplane_confirm": list(confirm)}
    return "POST", url, {"json": body}


class _Common:
    def __init__(self, base_url: str, *, cert: str | Path | None = None,
                 key: str | Path | None = None, ca: str | Path | None = None,
                 sae_id: str | None = None, timeout_s: float = 30.0,
                 transport: Any = None) -> None:
        self._options = client_options(base_url, cert=cert, key=key, ca=ca, sae_id=sae_id,
                                       timeout_s=timeout_s, transport=transport)
        self.sae_id = sae_id

    @classmethod
    def from_state(cls, state_dir: str | Path, sae_id: str, **kwargs: Any) -> Self:
        """A client for ``sae_id`` from ``STATE_DIR/endpoints.json`` (``keyplane run``)."""
        ep = load_sae_endpoint(state_dir, sae_id)
        return cls(ep.etsi014_url, cert=ep.cert, key=ep.key, ca=ep.ca, sae_id=sae_id, **kwargs)


class Etsi014Client(_Common, SyncPool):
    """Blocking ETSI 014 client over mutual TLS.

    Args:
        base_url: the KME's base URL (``https://host:port``).
        cert, key: the SAE's client certificate and private key (PEM files).
        ca: the network CA that signed the KME's certificate.
        sae_id: sent as ``X-SAE-ID`` when the identity owns several SAEs on the KME (it
            must be one of them: the certificate is the identity).
        timeout_s: per-request timeout. Longer than a KM's default wait for key
            (``etsi014_qos_timeout_ms``, 10 s), so that the KM's own answer (the keys, or
            503 once its wait is over) reaches the caller before the client gives up; a
            read timeout at exactly the KM's wait lost that race on a loaded machine.
        transport: an httpx transport replacing the network (tests).

    Every method raises :class:`~keyplane.api.client.ApiError` (400/401/503 subclasses) on
    an error answer and :class:`~keyplane.api.client.TransportError` when there is none.
    """

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(base_url, **kwargs)
        self._http = httpx.Client(**self._options)

    def _call(self, method: str, url: str, kwargs: dict[str, Any]) -> Any:
        with translate_transport_errors():
            response = self._http.request(method, url, **kwargs)
        return decode(response)

    def _call_raw(self, method: str, url: str, kwargs: dict[str, Any]) -> bytes:
        with translate_transport_errors():
            response = self._http.request(method, url, **kwargs)
        return ok_body(response)

    def status(self, slave_sae_id: str) -> Status:
        """ETSI 014 Status of the keys between this (master) SAE and ``slave_sae_id``."""
        return Status.model_validate(
            self._call("GET", f"{_PREFIX}/{quote(slave_sae_id, safe='')}/status", {}))

    def enc_keys(self, slave_sae_id: str, number: int | None = None, size: int | None = None,
                 *, additional_slave_sae_ids: Sequence[str] | None = None,
                 extension_mandatory: Sequence[dict[str, Any]] | None = None,
                 extension_optional: Sequence[dict[str, Any]] | None = None) -> list[Key]:
        """Get ``number`` new keys of ``size`` bits to share with ``slave_sae_id``."""
        return _keys(self._call_raw(*_enc_request(slave_sae_id, number, size,
                                              additional_slave_sae_ids, extension_mandatory,
                                              extension_optional)))

    def dec_keys(self, master_sae_id: str, key_ids: Sequence[str], *, ack: bool = False,
                 confirm: Sequence[str] = ()) -> list[Key]:
        """Get the keys ``key_ids`` that ``master_sae_id`` obtained for this (slave) SAE;
        ``ack``/``confirm``: keyplane's acknowledgement (docs/api/etsi014.md)."""
        return _keys(self._call_raw(*_dec_request(master_sae_id, key_ids, ack, confirm)))


class AsyncEtsi014Client(_Common, AsyncPool):
    """The asyncio twin of :class:`Etsi014Client` (same arguments and methods, awaited)."""

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(base_url, **kwargs)
        self._http = httpx.AsyncClient(**self._options)

    async def _call(self, method: str, url: str, kwargs: dict[str, Any]) -> Any:
        with translate_transport_errors():
            response = await self._http.request(method, url, **kwargs)
        return decode(response)

    async def _call_raw(self, method: str, url: str, kwargs: dict[str, Any]) -> bytes:
        with translate_transport_errors():
            response = await self._http.request(method, url, **kwargs)
        return ok_body(response)

    async def status(self, slave_sae_id: str) -> Status:
        """ETSI 014 Status of the keys between this (master) SAE and ``slave_sae_id``."""
        return Status.model_validate(
            await self._call("GET", f"{_PREFIX}/{quote(slave_sae_id, safe='')}/status", {}))

    async def enc_keys(self, slave_sae_id: str, number: int | None = None,
                       size: int | None = None, *,
                       additional_slave_sae_ids: Sequence[str] | None = None,
                       extension_mandatory: Sequence[dict[str, Any]] | None = None,
                       extension_optional: Sequence[dict[str, Any]] | None = None
                       ) -> list[Key]:
        """Get ``number`` new keys of ``size`` bits to share with ``slave_sae_id``."""
        return _keys(await self._call_raw(*_enc_request(slave_sae_id, number, size,
                                                    additional_slave_sae_ids,
                                                    extension_mandatory, extension_optional)))

    async def dec_keys(self, master_sae_id: str, key_ids: Sequence[str], *, ack: bool = False,
                       confirm: Sequence[str] = ()) -> list[Key]:
        """Get the keys ``key_ids`` that ``master_sae_id`` obtained for this (slave) SAE;
        ``ack``/``confirm``: keyplane's acknowledgement (docs/api/etsi014.md)."""
        return _keys(await self._call_raw(*_dec_request(master_sae_id, key_ids, ack,
                                                        confirm)))
