"""Settings of a KM's application interfaces (ETSI 014 limits, local SAEs, timeouts).

The ETSI 014 limits are checked by the server *before* the key manager is called
(STYLE.md §4, "check limits locally"), and the key manager reports the same figures in
``PairStatus``: build both from one :class:`Etsi014Limits`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the client SDK imports this module: it stays free of the config models
    from keyplane.config import Topology

__all__ = ["SAE_ID_HEADER", "ApiSettings", "Etsi014Limits", "LocalSae"]

SAE_ID_HEADER = "X-SAE-ID"
"""Optional request header naming the calling SAE when one identity owns several SAEs on
this KM (a keyplane extension; ETSI 014 identifies the master by its authentication only).
It may only name an SAE the client certificate's owner owns (:mod:`keyplane.api.auth`)."""


class KmLimitSettings(Protocol):
    """The key manager settings the ETSI 014 limits come from (``KmSettings``)."""

    default_key_size_bits: int
    min_key_size_bits: int
    max_key_size_bits: int
    max_keys_per_request: int


@dataclass(frozen=True)
class Etsi014Limits:
    """ETSI 014 Status limits (clause 6.1); sizes in bits."""

    key_size_bits: int = 256
    min_key_size_bits: int = 64
    max_key_size_bits: int = 8192
    max_key_per_request: int = 1024
    max_sae_id_count: int = 0

    def __post_init__(self) -> None:
        if not (8 <= self.min_key_size_bits <= self.key_size_bits <= self.max_key_size_bits):
            raise ValueError("need 8 <= min_key_size_bits <= key_size_bits <= max_key_size_bits")
        if any(v % 8 for v in (self.key_size_bits, self.min_key_size_bits,
                               self.max_key_size_bits)):
            raise ValueError("key sizes must be multiples of 8 bits")
        if self.max_key_per_request < 1 or self.max_sae_id_count < 0:
            raise ValueError("max_key_per_request >= 1 and max_sae_id_count >= 0 required")

    @classmethod
    def from_km_settings(cls, km: KmLimitSettings, *, max_sae_id_count: int = 0
                         ) -> Etsi014Limits:
        """The limits a key manager enforces and reports in Status, checked here first."""
        return cls(key_size_bits=km.default_key_size_bits,
                   min_key_size_bits=km.min_key_size_bits,
                   max_key_size_bits=km.max_key_size_bits,
                   max_key_per_request=km.max_keys_per_request,
                   max_sae_id_count=max_sae_id_count)


@dataclass(frozen=True)
class LocalSae:
    """An SAE attached to this KM and the certificate subject of its owner.

    The server lets a certificate act only as the SAEs its subject owns here (and names
    the caller's SAE when the request does not); the key manager (Access Control) checks
    the same again.
    """

    sae_id: str
    certificate_subject: str | None = None


@dataclass(frozen=True)
class ApiSettings:
    """Everything an ETSI 004/014 server needs besides its key manager.

    Args:
        limits: ETSI 014 limits enforced before the key manager is called.
        saes: SAEs attached to this KM (see :class:`LocalSae`).
        supported_extensions: ETSI 014 ``extension_mandatory`` names this KM honours
            (passed to the key manager); any other mandatory extension is a 400.
        km_timeout_s: upper bound on one key manager call; beyond it, ETSI 014 503 /
            ETSI 004 status 6.
        network_saes: every SAE id of the network; an ETSI 014 request naming another
            peer SAE is a 400 before the key manager is called (empty: not checked here).
    """

    limits: Etsi014Limits = Etsi014Limits()
    saes: tuple[LocalSae, ...] = ()
    supported_extensions: frozenset[str] = frozenset()
    km_timeout_s: float = 30.0
    network_saes: frozenset[str] = frozenset()

    @classmethod
    def from_topology(cls, topology: Topology, node_id: str, **overrides: object
                      ) -> ApiSettings:
        """Settings for ``node_id``: its SAEs with their owners' certificate subjects."""
        saes = tuple(
            LocalSae(app.sae_id, (owner := topology.user(app.owner)).certificate_subject
                     or f"CN={owner.id},O=keyplane")
            for app in topology.applications if app.node == node_id)
        overrides.setdefault("network_saes",
                             frozenset(app.sae_id for app in topology.applications))
        return cls(saes=saes, **overrides)  # type: ignore[arg-type]

    def knows_sae(self, sae_id: str) -> bool:
        """Whether ``sae_id`` may be a peer (always True when the network is not known)."""
        return not self.network_saes or sae_id in self.network_saes

    def saes_of(self, subject: str) -> list[str]:
        """SAE ids on this KM whose owner's certificate subject is ``subject``."""
        return [s.sae_id for s in self.saes if s.certificate_subject == subject]
