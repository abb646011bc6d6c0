"""The values an SD-QKD node's datastore is made of: what callers pass in (a VIRT link, a
``qkd_app``), what writes return (notifications), and the node's own operational records
(per PHYS link, per application, per session's key provenance).

RFC 7951 encodings come from :mod:`keyplane.api.etsi015.model` (``identity``, ``uint32``,
``date_and_time``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

from keyplane.api.etsi015.model import date_and_time, identity, uint32
from keyplane.messages import SdnNotificationName

__all__ = [
    "HOP_SOURCES",
    "AppOps",
    "AppProvenance",
    "HopProvenance",
    "LinkStatus",
    "Notification",
    "PerfThresholds",
    "PhysOps",
    "QkdApplication",
    "VirtualLink",
    "copy_tree",
]

LinkStatus = Literal["ACTIVE", "PASSIVE", "PENDING", "OFF"]

_SCALARS = (str, int, float, bool, type(None))


def copy_tree(value: Any) -> Any:
    """A deep copy of a JSON-shaped datastore tree (dicts, lists, scalars): what
    ``copy.deepcopy`` gives, several times faster (no memo; a GET of every node's tree was
    4 % of a 1,000-node start). Anything else is copied by ``copy.deepcopy``."""
    if isinstance(value, dict):
        return {k: copy_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_tree(v) for v in value]
    if isinstance(value, _SCALARS):
        return value
    return copy.deepcopy(value)


@dataclass(frozen=True)
class Notification:
    """An ETSI 015 notification produced by a write (name and RFC 7951 content)."""

    name: SdnNotificationName
    content: dict[str, Any]
    wall_s: float


@dataclass(frozen=True)
class PerfThresholds:
    """When a telemetry sample is a "major modification" worth ``sdqkdn_link_perf_update``.

    Attributes:
        skr_ratio: relative change of skr since the last report (0.1 = 10 %).
        qber_abs: absolute change of QBER since the last report.
    """

    skr_ratio: float = 0.1
    qber_abs: float = 0.005


@dataclass(frozen=True)
class VirtualLink:
    """A VIRT key association link at this node (one hop of a relayed session's path).

    ``prev_hop``/``next_hops`` are node UUIDs (``qkdn_id``); at the path's source the previous
    hop is the node itself, at the destination ``next_hops`` holds the node itself (the
    convention of the GS QKD 015 example).
    """

    qkdl_id: str
    remote_qkdn_id: str
    prev_hop: str
    next_hops: tuple[str, ...]
    bandwidth_bps: int
    applications: tuple[str, ...] = ()
    status: LinkStatus | None = None
    local_qkdi_id: int | None = None
    remote_qkdi_id: int | None = None

    def to_raw(self, local_qkdn_id: str) -> dict[str, Any]:
        """The ``qkd_link`` entry (RFC 7951)."""
        local: dict[str, Any] = {"qkdn_id": local_qkdn_id}
        remote: dict[str, Any] = {"qkdn_id": self.remote_qkdn_id}
        if self.local_qkdi_id is not None:
            local["qkdi_id"] = self.local_qkdi_id
        if self.remote_qkdi_id is not None:
            remote["qkdi_id"] = self.remote_qkdi_id
        raw: dict[str, Any] = {"qkdl_id": self.qkdl_id, "qkdl_enable": True,
                               "qkdl_local": local, "qkdl_remote": remote,
                               "qkdl_type": identity("VIRT"),
                               "virt_prev_hop": self.prev_hop,
                               "virt_next_hop": list(self.next_hops),
                               "virt_bandwidth": uint32(self.bandwidth_bps)}
        if self.status is not None:
            raw["qkdl_status"] = identity(self.status)
        if self.applications:
            raw["qkdl_applications"] = list(self.applications)
        return raw


@dataclass(frozen=True)
class QkdApplication:
    """A ``qkd_app``: one key-consuming session at this node (ETSI 015 clause 5.2)."""

    app_id: str
    server_app_id: str
    client_app_ids: tuple[str, ...] = ()
    app_type: Literal["CLIENT", "INTERNAL"] = "CLIENT"
    priority: int = 0
    max_bandwidth_bps: int | None = None
    min_bandwidth_bps: int | None = None
    jitter_ms: int | None = None
    ttl_s: int | None = None
    backing_qkdl_ids: tuple[str, ...] = ()
    local_qkdn_id: str | None = None
    remote_qkdn_id: str | None = None
    expiration_wall_s: float | None = None

    def to_raw(self) -> dict[str, Any]:
        """The ``qkd_app`` entry (RFC 7951)."""
        qos: dict[str, Any] = {}
        for name, value in (("max_bandwidth", self.max_bandwidth_bps),
                            ("min_bandwidth", self.min_bandwidth_bps),
                            ("jitter", self.jitter_ms), ("ttl", self.ttl_s)):
            if value is not None:
                qos[name] = uint32(value)
        raw: dict[str, Any] = {"app_id": self.app_id, "app_type": identity(self.app_type),
                               "server_app_id": self.server_app_id,
                               "app_priority": uint32(self.priority), "app_qos": qos}
        if self.client_app_ids:
            raw["client_app_id"] = list(self.client_app_ids)
        if self.expiration_wall_s is not None:
            raw["expiration_time"] = date_and_time(self.expiration_wall_s)
        if self.backing_qkdl_ids:
            raw["backing_qkdl_id"] = list(self.backing_qkdl_ids)
        if self.local_qkdn_id is not None:
            raw["local_qkdn_id"] = self.local_qkdn_id
        if self.remote_qkdn_id is not None:
            raw["remote_qkdn_id"] = self.remote_qkdn_id
        return raw


@dataclass
class PhysOps:
    """Operational state of one topology PHYS link at this node."""

    link_id: str
    qkdi_id: int
    enabled: bool
    status: LinkStatus
    skr_bps: float | None = None
    qber: float | None = None
    buffer_bits: int | None = None
    reported_skr_bps: float | None = None
    reported_qber: float | None = None
    overloaded: bool = False
    alarmed: bool = False


HOP_SOURCES = ("qkd", "pqc", "combined")
"""Hop key sources (``keyplane.keymanager.hybrid.HopSource``; the augment's ``hop-source``)."""


@dataclass
class HopProvenance:
    """Delivered keys per source on one hop, and the source of the last one."""

    key_count: dict[str, int] = field(default_factory=dict)
    last_source: str | None = None


@dataclass
class AppProvenance:
    """The ``keyplane-qkd-provenance`` state of one session's ``qkd_app``."""

    hybrid_policy: str | None = None
    hops: dict[str, HopProvenance] = field(default_factory=dict)
    exposed_to: dict[str, None] = field(default_factory=dict)  # ordered set of node ids

    def to_raw(self) -> dict[str, Any]:
        """The ``provenance`` container (RFC 7951: uint64 counters are JSON strings)."""
        raw: dict[str, Any] = {}
        if self.hybrid_policy is not None:
            raw["hybrid_policy"] = self.hybrid_policy
        if self.exposed_to:
            raw["exposed_to"] = list(self.exposed_to)
        if self.hops:
            raw["hop"] = [{"hop": hop,
                           **{f"{source}_keys": str(h.key_count.get(source, 0))
                              for source in HOP_SOURCES},
                           **({"last_source": h.last_source} if h.last_source else {})}
                          for hop, h in self.hops.items()]
        return raw


@dataclass
class AppOps:
    """Operational state of one ``qkd_app``."""

    creation_wall_s: float
    period_start_s: float
    period_bits: int = 0
    statistics: list[tuple[float, float, int]] = field(default_factory=list)
