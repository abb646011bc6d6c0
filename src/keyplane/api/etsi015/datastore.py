"""One SD-QKD node's ``etsi-qkd-sdn-node:qkd_node`` datastore: pure, validated on every write.

Layout (NMDA-like split; GET returns the merge):

* **configuration** (``config true`` nodes) in one RFC 7951 dict: ``qkdn_id``, version,
  location, capabilities, ``qkd_interfaces`` and the PHYS ``qkd_links`` derived from the
  topology, plus whatever the SDN Controller writes (``qkd_app`` entries, VIRT links).
* **operational state** kept by the node itself: ``qkdn_status``, per-link status and
  performance (skr, QBER from :class:`~keyplane.messages.LinkTelemetry`), ``qkdi_status``,
  ``app_status``, ``creation_time`` and per-period ``app_statistics``; and keyplane's
  ``keyplane-qkd-provenance:provenance`` augment (the hybrid policy and per-hop key
  provenance counters of each ``qkd_app``, the last hop source of each VIRT ``qkd_link``).
  Provenance is kept per session (by ``app_id`` / ``qkdl_id``), not per entry: it is counted
  from the session's first delivery even if the controller creates the ``qkd_app`` later,
  and it survives a reroute's re-created entries until :meth:`NodeDatastore.forget_provenance`.

Every write — a RESTCONF POST/PUT/PATCH/DELETE or a Python call such as
:meth:`NodeDatastore.add_virtual_link` — builds a candidate configuration, validates it
against the YANG model (``config`` content only: a client cannot write state), checks that
the topology-derived parts (``qkdn_id``, interfaces, the topology's PHYS links) are unchanged,
validates the merged view (``all`` content), and only then commits. A refused write raises
:class:`~keyplane.api.etsi015.errors.RestconfError` and leaves the datastore as it was.

Pure core (STYLE.md §1): no I/O, time passed in as ``wall_s``; writes return the ETSI 015
notifications they cause (:class:`Notification`) for the agent shell to publish.

Derived figures (documented in docs/api/etsi015.md):
``expected_consumption`` of a link = Σ ``max_bandwidth`` of the apps it backs (listed in its
``qkdl_applications`` or in their ``backing_qkdl_id``) + for a PHYS link, Σ ``virt_bandwidth``
of the VIRT links whose previous or next hop is that link's remote node;
``eskr`` = max(0, ``skr`` − the VIRT part of that sum) (key left after relaying);
``phys_perf`` QBER is the ratio (0…1) with three decimals.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from yangson.exceptions import YangsonException
from yangson.instance import EntryKeys, EntryValue, MemberName
from yangson.schemanode import (
    InternalNode,
    LeafListNode,
    ListNode,
    SchemaNode,
)

from keyplane.api.etsi015.errors import RestconfError
from keyplane.api.etsi015.model import (
    MODULE,
    PROVENANCE_MEMBER,
    ROOT_MEMBER,
    YangInvalid,
    data_model,
    date_and_time,
    decimal64,
    identity,
    identity_name,
    qkdl_id,
    qkdn_id,
    uint32,
    validate_node,
)
from keyplane.config import HybridPolicy, QuantumLink, Topology
from keyplane.messages import LinkState, SdnNotificationName
from keyplane.trust import exposed_nodes

__all__ = [
    "Content",
    "LinkStatus",
    "NodeDatastore",
    "Notification",
    "PerfThresholds",
    "QkdApplication",
    "VirtualLink",
    "read_resource",
]

Content = Literal["all", "config", "nonconfig"]
LinkStatus = Literal["ACTIVE", "PASSIVE", "PENDING", "OFF"]
_DOWN_STATES = ("PASSIVE", "OFF")
_MAX_DEPTH = 65535


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
class _PhysOps:
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


_HOP_SOURCES = ("qkd", "pqc", "combined")
"""Hop key sources (``keyplane.keymanager.hybrid.HopSource``; the augment's ``hop-source``)."""


@dataclass
class _HopProvenance:
    """Delivered keys per source on one hop, and the source of the last one."""

    key_count: dict[str, int] = field(default_factory=dict)
    last_source: str | None = None


@dataclass
class _AppProvenance:
    """The ``keyplane-qkd-provenance`` state of one session's ``qkd_app``."""

    hybrid_policy: str | None = None
    hops: dict[str, _HopProvenance] = field(default_factory=dict)
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
                              for source in _HOP_SOURCES},
                           **({"last_source": h.last_source} if h.last_source else {})}
                          for hop, h in self.hops.items()]
        return raw


@dataclass
class _AppOps:
    """Operational state of one ``qkd_app``."""

    creation_wall_s: float
    period_start_s: float
    period_bits: int = 0
    statistics: list[tuple[float, float, int]] = field(default_factory=list)


class NodeDatastore:
    """The ``qkd_node`` of one keyplane node (see the module docstring).

    Args:
        node_id: the topology node this datastore describes.
        topology: the network (PHYS links and interfaces come from its links at ``node_id``).
        version: ``qkdn_version``.
        location_id: ``qkdn_location_id``.
        perf_thresholds: when telemetry triggers ``sdqkdn_link_perf_update``.
        statistics_periods_kept: how many closed ``app_statistics`` periods each app keeps.

    Raises:
        KeyError: ``node_id`` is not in ``topology``.
    """

    def __init__(self, node_id: str, topology: Topology, *, version: str = "keyplane",
                 location_id: str = "", perf_thresholds: PerfThresholds | None = None,
                 statistics_periods_kept: int = 10) -> None:
        topology.node(node_id)
        self.node_id = node_id
        self.qkdn_id = qkdn_id(node_id)
        self.thresholds = perf_thresholds or PerfThresholds()
        self.statistics_periods_kept = statistics_periods_kept
        self.status: Literal["NEW", "OPERATING", "DOWN", "FAILURE", "OUT"] = "NEW"
        self._phys: dict[str, _PhysOps] = {}
        self._by_link_id: dict[str, str] = {}
        self._apps: dict[str, _AppOps] = {}
        self._provenance: dict[str, _AppProvenance] = {}
        self._virt_sources: dict[str, dict[str, str]] = {}
        self._config = self._initial_config(topology, version, location_id)
        validate_node({ROOT_MEMBER: self._config}, config_only=True)
        self._protected = self._protected_part(self._config)

    # ------------------------------------------------------------------ topology → config

    @staticmethod
    def interface_ids(topology: Topology, node_id: str) -> dict[str, int]:
        """``qkdi_id`` of each of ``node_id``'s link ends: 1, 2, … by sorted link id."""
        links = sorted(topology.links_of(node_id), key=lambda link: link.link_id)
        return {link.link_id: i for i, link in enumerate(links, start=1)}

    def _initial_config(self, topology: Topology, version: str, location_id: str
                        ) -> dict[str, Any]:
        mine = self.interface_ids(topology, self.node_id)
        interfaces: list[dict[str, Any]] = []
        links: list[dict[str, Any]] = []
        for link in sorted(topology.links_of(self.node_id), key=lambda x: x.link_id):
            qkdi = mine[link.link_id]
            peer = link.endpoints[1] if link.endpoints[0] == self.node_id else link.endpoints[0]
            role = "TRANSMITTER" if link.endpoints[0] == self.node_id else "RECEIVER"
            interfaces.append(self._interface_raw(link, qkdi, role))
            uid = qkdl_id(link.link_id)
            links.append({
                "qkdl_id": uid, "qkdl_enable": link.enabled,
                "qkdl_local": {"qkdn_id": self.qkdn_id, "qkdi_id": qkdi},
                "qkdl_remote": {"qkdn_id": qkdn_id(peer),
                                "qkdi_id": self.interface_ids(topology, peer)[link.link_id]},
                "qkdl_type": identity("PHYS"),
                "phys_channel_att": decimal64(link.length_km * link.attenuation_db_per_km
                                              + link.insertion_loss_db),
                "phys_qkd_role": identity(role),
            })
            self._phys[uid] = _PhysOps(link_id=link.link_id, qkdi_id=qkdi,
                                       enabled=link.enabled,
                                       status="PENDING" if link.enabled else "OFF")
            self._by_link_id[link.link_id] = uid
        config: dict[str, Any] = {
            "qkdn_id": self.qkdn_id, "qkdn_version": version, "qkdn_location_id": location_id,
            "qkdn_capabilities": {"link_stats_support": True, "application_stats_support": True,
                                  "key_relay_mode_enable": True},
            "qkd_applications": {}, "qkd_interfaces": {}, "qkd_links": {},
        }
        if interfaces:
            config["qkd_interfaces"]["qkd_interface"] = interfaces
            config["qkd_links"]["qkd_link"] = links
        return config

    def _interface_raw(self, link: QuantumLink, qkdi: int, role: str) -> dict[str, Any]:
        technology = "DV-QKD"  # BB84 with decoy states (and its analytic model) is DV-QKD
        return {"qkdi_id": qkdi, "qkdi_model": f"keyplane-emulated-{link.protocol}",
                "qkdi_type": identity(technology),
                "qkdi_att_point": {"device": self.node_id, "port": qkdi},
                "qkdi_capabilities": {"role_support": identity(role)}}

    def _protected_part(self, config: dict[str, Any]) -> tuple[Any, ...]:
        """What RESTCONF writes may not change: id, interfaces, the topology's PHYS links."""
        phys = {e["qkdl_id"]: e for e in config.get("qkd_links", {}).get("qkd_link", [])
                if e.get("qkdl_id") in self._phys}
        return (config.get("qkdn_id"), config.get("qkd_interfaces"), phys)

    # ------------------------------------------------------------------ lookups

    def link_uuid(self, link_id: str) -> str | None:
        """``qkdl_id`` of a topology link at this node, or None."""
        return self._by_link_id.get(link_id)

    @property
    def topology_link_ids(self) -> list[str]:
        """Topology ids of this node's PHYS links."""
        return list(self._by_link_id)

    def link_status(self, uid: str) -> str | None:
        """Current ``qkdl_status`` identity name of a link (None if unknown)."""
        if uid in self._phys:
            return self._phys[uid].status
        entry = self._find_link(self._config, uid)
        return identity_name(entry["qkdl_status"]) if entry and "qkdl_status" in entry else None

    def application_ids(self) -> list[str]:
        """The ``app_id`` of every registered application."""
        return [a["app_id"] for a in self._config["qkd_applications"].get("qkd_app", [])]

    @staticmethod
    def _find_link(config: dict[str, Any], uid: str) -> dict[str, Any] | None:
        for entry in config.get("qkd_links", {}).get("qkd_link", []):
            if entry.get("qkdl_id") == uid:
                return cast(dict[str, Any], entry)
        return None

    # ------------------------------------------------------------------ the merged view

    def document(self, wall_s: float, *, content: Content = "all") -> dict[str, Any]:
        """The whole datastore: ``{"etsi-qkd-sdn-node:qkd_node": {...}}``."""
        return self.get("", wall_s, content=content)

    def _view(self, config: dict[str, Any], wall_s: float) -> dict[str, Any]:
        """Configuration plus operational state (the ``content=all`` tree)."""
        view = copy.deepcopy(config)
        view["qkdn_status"] = identity(self.status)
        for iface in view["qkd_interfaces"].get("qkd_interface", []):
            ops = next((p for p in self._phys.values() if p.qkdi_id == iface["qkdi_id"]), None)
            status = "ENABLED"
            if ops is None or not ops.enabled:
                status = "DISABLED"
            elif ops.status in _DOWN_STATES and ops.alarmed:
                status = "FAILED"
            iface["qkdi_status"] = identity(status)
        apps = view["qkd_applications"].get("qkd_app", [])
        for app in apps:
            self._app_state(app, wall_s)
        links = view["qkd_links"].get("qkd_link", [])
        demand, virt_demand = self._demand(links, apps)
        for link in links:
            uid = link["qkdl_id"]
            perf: dict[str, Any] = link.setdefault("qkdl_performance", {})
            perf["expected_consumption"] = uint32(demand.get(uid, 0))
            ops = self._phys.get(uid)
            if ops is None:
                sent = self._virt_sources.get(uid)
                if sent and identity_name(link.get("qkdl_type", "")) == "VIRT":
                    link[PROVENANCE_MEMBER] = {"hop": [{"hop": hop, "last_source": source}
                                                       for hop, source in sent.items()]}
                continue
            link["qkdl_status"] = identity(ops.status)
            if ops.skr_bps is not None:
                perf["skr"] = uint32(ops.skr_bps)
                perf["eskr"] = uint32(max(0.0, ops.skr_bps - virt_demand.get(uid, 0)))
            if ops.qber is not None:
                perf["phys_perf"] = [{"perf_type": identity("QBER"),
                                      "value": decimal64(ops.qber)}]
        return view

    def _demand(self, links: list[dict[str, Any]], apps: list[dict[str, Any]]
                ) -> tuple[dict[str, float], dict[str, float]]:
        """(total, VIRT-only) expected consumption per link, bits/s."""
        total: dict[str, float] = {}
        virt: dict[str, float] = {}
        bandwidth = {a["app_id"]: a.get("app_qos", {}).get("max_bandwidth", 0) for a in apps}
        backed: dict[str, set[str]] = {}
        for app in apps:
            for uid in app.get("backing_qkdl_id", []):
                backed.setdefault(uid, set()).add(app["app_id"])
        for link in links:
            ids = backed.get(link["qkdl_id"], set()) | set(link.get("qkdl_applications", []))
            total[link["qkdl_id"]] = float(sum(bandwidth.get(a, 0) for a in ids))
        phys_by_peer = {link["qkdl_remote"].get("qkdn_id"): link["qkdl_id"] for link in links
                        if identity_name(link.get("qkdl_type", "")) == "PHYS"}
        for link in links:
            if identity_name(link.get("qkdl_type", "")) != "VIRT":
                continue
            hops = {link.get("virt_prev_hop"), *link.get("virt_next_hop", [])}
            for hop in hops - {self.qkdn_id, None}:
                uid = phys_by_peer.get(hop)
                if uid is not None:
                    bw = float(link.get("virt_bandwidth", 0))
                    total[uid] = total.get(uid, 0.0) + bw
                    virt[uid] = virt.get(uid, 0.0) + bw
        return total, virt

    def _app_state(self, app: dict[str, Any], wall_s: float) -> None:
        ops = self._apps.get(app["app_id"])
        status = "ON"
        expiry = app.get("expiration_time")
        if expiry is not None and _parse_date_and_time(expiry) <= wall_s:
            status = "OUT-OF-TIME"
        app["app_status"] = identity(status)
        provenance = self._provenance.get(app["app_id"])
        if provenance is not None and (raw := provenance.to_raw()):
            app[PROVENANCE_MEMBER] = raw
        if ops is None:
            return
        app["creation_time"] = date_and_time(ops.creation_wall_s)
        if ops.statistics:
            app.setdefault("app_statistics", {})["statistics"] = [
                {"end_time": date_and_time(end), "start_time": date_and_time(start),
                 "consumed_bits": uint32(bits)} for start, end, bits in ops.statistics]

    # ------------------------------------------------------------------ RESTCONF reads

    def get(self, path: str, wall_s: float, *, content: Content = "all",
            depth: int | None = None, fields: str | None = None) -> dict[str, Any]:
        """RFC 8040 GET of a data resource (``path`` is what follows ``/restconf/data/``).

        Returns:
            The response body: ``{"<module>:<name>": value}`` (a one-entry array for a list
            entry or leaf-list entry).

        Raises:
            RestconfError: 400 for a malformed path or key, 404 for an unknown resource.
        """
        return read_resource({ROOT_MEMBER: self._view(self._config, wall_s)}, path,
                             content=content, depth=depth, fields=fields)

    # ------------------------------------------------------------------ RESTCONF writes

    def create(self, path: str, body: Any, wall_s: float) -> tuple[str, list[Notification]]:
        """RFC 8040 POST: create the child resource(s) in ``body`` under ``path``.

        Accepts the strict form (the child, e.g. ``{"etsi-qkd-sdn-node:qkd_link": [...]}``
        posted to ``…/qkd_links``) and TeraFlowSDN's form (the target itself, e.g.
        ``{"qkd_links": {"qkd_link": [...]}}`` posted to ``…/qkd_links``).

        Returns:
            (path of the created resource, notifications caused).

        Raises:
            RestconfError: 400 malformed/invalid body, 404 unknown target, 405 read-only target,
                409 data-exists.
        """
        steps = self._route(path)
        if not steps:
            raise RestconfError(409, "data-exists", "the qkd_node container always exists",
                                error_type="application", path=_error_path(ROOT_MEMBER))
        config = copy.deepcopy(self._config)
        holder, slot, schema = self._locate({ROOT_MEMBER: config}, steps, path, config=True)
        target = holder[slot]
        whole_list = isinstance(schema, ListNode) and not isinstance(holder, list)
        if not isinstance(schema, InternalNode) or whole_list:
            raise RestconfError(405, "operation-not-supported",
                                "POST needs a container or list entry as target",
                                path=_error_path(path))
        name, value = _single_member(body)
        created: list[str] = []
        child = _member_child(schema, name)
        if child is not None and name != schema.name:
            created.append(self._create_child(target, schema, child, value, path))
        elif name == schema.name and isinstance(value, dict) and not isinstance(holder, list):
            for member, member_value in value.items():
                sub = _member_child(schema, _unqualify(member))
                if sub is None:
                    raise RestconfError(400, "unknown-element",
                                        f"{member!r} is not a child of {schema.name}",
                                        path=_error_path(path))
                created.append(self._create_child(target, schema, sub, member_value, path))
        else:
            raise RestconfError(400, "unknown-element",
                                f"{name!r} is not a child of {schema.name}",
                                path=_error_path(path))
        notes = self._commit(config, wall_s)
        return (created[0] if len(created) == 1 else path), notes

    def replace(self, path: str, body: Any, wall_s: float) -> tuple[bool, list[Notification]]:
        """RFC 8040 PUT: create or replace the target resource.

        Returns:
            (True if the resource was created, notifications caused).

        Raises:
            RestconfError: 400 malformed/invalid body or key mismatch, 404 missing parent,
                405 read-only target or the datastore root.
        """
        steps = self._route(path)
        if not steps:
            raise RestconfError(405, "operation-not-supported",
                                "PUT on the datastore root is not supported; PUT the qkd_node")
        config = copy.deepcopy(self._config)
        root = {ROOT_MEMBER: config}
        schema = self._schema_of(steps)
        value = self._body_for(schema, steps, body, path)
        try:
            holder, slot, _ = self._locate(root, steps, path, config=True)
            holder[slot] = value
            created = False
        except RestconfError as exc:
            if exc.status != 404:
                raise
            self._insert(root, steps, value, path)
            created = True
        return created, self._commit(config, wall_s)

    def merge(self, path: str, body: Any, wall_s: float) -> list[Notification]:
        """RFC 8040 plain PATCH: merge ``body`` into the existing target resource.

        Raises:
            RestconfError: 400 malformed/invalid body, 404 target missing, 405 read-only.
        """
        steps = self._route(path)
        config = copy.deepcopy(self._config)
        root = {ROOT_MEMBER: config}
        if not steps:
            name, value = _single_member(body)
            if name != "qkd_node" or not isinstance(value, dict):
                raise RestconfError(400, "unknown-element", f"{name!r} is not a top-level node")
            _merge(config, value, self._root_schema())
            return self._commit(config, wall_s)
        schema = self._schema_of(steps)
        value = self._body_for(schema, steps, body, path)
        holder, slot, _ = self._locate(root, steps, path, config=True)
        if isinstance(holder[slot], dict) and isinstance(value, dict):
            _merge(holder[slot], value, schema)
        elif isinstance(schema, LeafListNode) and not isinstance(holder, list):
            merged = list(holder[slot])
            merged += [v for v in value if v not in merged]
            holder[slot] = merged
        else:
            holder[slot] = value
        return self._commit(config, wall_s)

    def delete(self, path: str, wall_s: float) -> list[Notification]:
        """RFC 8040 DELETE of the target resource.

        Raises:
            RestconfError: 404 target missing, 405 read-only target or the datastore root.
        """
        steps = self._route(path)
        if not steps:
            raise RestconfError(405, "operation-not-supported", "cannot delete the datastore")
        config = copy.deepcopy(self._config)
        root = {ROOT_MEMBER: config}
        holder, slot, _ = self._locate(root, steps, path, config=True)
        del holder[slot]
        if isinstance(holder, list) and not holder:
            parent, pslot, _ = self._locate(root, steps[:-1], path, config=True)
            del parent[pslot]
        return self._commit(config, wall_s)

    # ------------------------------------------------------------------ Python API (embedded)

    def add_virtual_link(self, link: VirtualLink, wall_s: float) -> list[Notification]:
        """Register a VIRT link (what the controller's POST does), validated the same way.

        Raises:
            RestconfError: 409 the qkdl_id exists, 400 a value the model forbids.
        """
        body = {f"{MODULE}:qkd_link": [link.to_raw(self.qkdn_id)]}
        return self.create(f"{ROOT_MEMBER}/qkd_links", body, wall_s)[1]

    def remove_virtual_link(self, qkdl_uuid: str, wall_s: float) -> list[Notification]:
        """Remove a VIRT link.

        Raises:
            RestconfError: 404 no such link, 405 it is a topology PHYS link.
        """
        return self.delete(f"{ROOT_MEMBER}/qkd_links/qkd_link={qkdl_uuid}", wall_s)

    def add_application(self, app: QkdApplication, wall_s: float) -> list[Notification]:
        """Register a ``qkd_app`` (one per session at this node).

        Raises:
            RestconfError: 409 the app_id exists, 400 a value the model forbids.
        """
        raw = app.to_raw()
        raw.setdefault("local_qkdn_id", self.qkdn_id)
        body = {f"{MODULE}:qkd_app": [raw]}
        return self.create(f"{ROOT_MEMBER}/qkd_applications", body, wall_s)[1]

    def remove_application(self, app_uuid: str, wall_s: float) -> list[Notification]:
        """Remove a ``qkd_app`` (``sdqkdn_application_disconnected`` follows).

        Raises:
            RestconfError: 404 no such application.
        """
        return self.delete(f"{ROOT_MEMBER}/qkd_applications/qkd_app={app_uuid}", wall_s)

    # ------------------------------------------------------------------ live figures

    def set_status(self, status: Literal["NEW", "OPERATING", "DOWN", "FAILURE", "OUT"]) -> None:
        """Set ``qkdn_status`` (the agent: OPERATING when started, OUT when closed)."""
        self.status = status

    def apply_telemetry(self, link_id: str, *, state: LinkState, skr_bps: float,
                        qber: float | None, wall_s: float) -> list[Notification]:
        """Take one :class:`~keyplane.messages.LinkTelemetry` sample of a topology link.

        Returns:
            ``sdqkdn_link_down`` / ``event`` on a status change, ``sdqkdn_link_perf_update``
            on a major change (see :class:`PerfThresholds`), ``sdqkdn_link_overloaded`` when the
            expected consumption starts to exceed the skr. Empty for links of other nodes.
        """
        uid = self._by_link_id.get(link_id)
        if uid is None:
            return []
        ops = self._phys[uid]
        if math.isfinite(skr_bps):
            ops.skr_bps = max(0.0, skr_bps)
        if qber is not None and math.isfinite(qber):
            ops.qber = min(1.0, max(0.0, qber))
        notes: list[Notification] = []
        target: LinkStatus = "ACTIVE"
        if not ops.enabled:
            target = "OFF"
        elif state is LinkState.down:
            target = "PASSIVE" if (ops.buffer_bits or 0) > 0 else "OFF"
        if target != ops.status:
            notes += self._status_change(uid, ops, target, f"telemetry: link {state.value}",
                                         wall_s)
        if self._perf_changed(ops) or notes:
            notes.append(self._perf_update(uid, ops, wall_s))
            ops.reported_skr_bps, ops.reported_qber = ops.skr_bps, ops.qber
        notes += self._overload_check(uid, ops, wall_s)
        return notes

    def apply_buffer(self, link_id: str, buffer_bits: int) -> None:
        """Record the KM's stored key for a link (PASSIVE vs OFF when it stops generating)."""
        uid = self._by_link_id.get(link_id)
        if uid is not None:
            self._phys[uid].buffer_bits = buffer_bits

    def apply_alarm(self, link_id: str, *, kind: str, severity: Literal["MAJOR", "MINOR"],
                    message: str, wall_s: float) -> list[Notification]:
        """Take a :class:`~keyplane.messages.LinkAlarm` for a topology link.

        ``link_down`` marks the link down (``sdqkdn_link_down``), ``cleared`` marks it ACTIVE
        again; every alarm also yields an ETSI 015 ``alarm`` (``event`` for ``cleared``).
        """
        uid = self._by_link_id.get(link_id)
        if uid is None:
            return []
        ops = self._phys[uid]
        notes: list[Notification] = []
        if kind == "link_down":
            ops.alarmed = True
            down: LinkStatus = "PASSIVE" if (ops.buffer_bits or 0) > 0 else "OFF"
            if ops.status != down:
                notes += self._status_change(uid, ops, down, message or "link down", wall_s)
        elif kind == "cleared":
            ops.alarmed = False
            if ops.status != "ACTIVE" and ops.enabled:
                notes += self._status_change(uid, ops, "ACTIVE", message or "cleared", wall_s)
        name: SdnNotificationName = "event" if kind == "cleared" else "alarm"
        text = f"{kind}: {message}" if message else kind
        notes.append(Notification(name, {"link": {
            "qkdl_id": uid, "qkdl_status": identity(ops.status), "message": text,
            "severity": identity(severity)}}, wall_s))
        return notes

    def record_consumption(self, app_uuid: str, bits: int) -> None:
        """Add key bits delivered to an application in the current statistics period."""
        ops = self._apps.get(app_uuid)
        if ops is not None:
            ops.period_bits += max(0, bits)

    def set_hybrid_policy(self, app_uuid: str, policy: str | HybridPolicy) -> None:
        """Record the hybrid policy the node's KM enforces for a session's ``qkd_app``.

        Raises:
            ValueError: not a policy name (``qkd-only``, ``qkd-and-pqc``, ``at-least-qkd``,
                ``either``).
        """
        value = HybridPolicy(policy).value
        self._provenance.setdefault(app_uuid, _AppProvenance()).hybrid_policy = value

    def record_provenance(self, app_uuid: str, hops: Iterable[Mapping[str, Any]]) -> None:
        """Count a delivered batch's provenance for a session's ``qkd_app``.

        Args:
            app_uuid: the session's ``app_id``.
            hops: ``{"hop", "key_count": {source: n}, "last_source"}`` per hop, in path
                order (the ``provenance_counts`` of a ``key_delivered`` event,
                :func:`keyplane.keymanager.hybrid.count_provenance`). Malformed entries
                and unknown sources are skipped.
        """
        for entry in hops:
            if not isinstance(entry, Mapping):
                continue
            hop = entry.get("hop")
            counts = entry.get("key_count")
            last = entry.get("last_source")
            if not (isinstance(hop, str) and "->" in hop and isinstance(counts, Mapping)
                    and last in _HOP_SOURCES):
                continue
            valid = {source: n for source, n in counts.items()
                     if source in _HOP_SOURCES and isinstance(n, int) and n > 0}
            if not valid:
                continue
            provenance = self._provenance.setdefault(app_uuid, _AppProvenance())
            record = provenance.hops.setdefault(hop, _HopProvenance())
            for source, n in valid.items():
                record.key_count[source] = record.key_count.get(source, 0) + n
            record.last_source = last
            for node in exposed_nodes([{"hop": hop}]):
                provenance.exposed_to.setdefault(node)

    def record_hop_source(self, qkdl_uuid: str, hop: str, source: str) -> None:
        """Record the source of the last key batch this node sent over ``hop`` for the
        session whose VIRT link is ``qkdl_uuid`` (shown once that link exists here)."""
        if source in _HOP_SOURCES and "->" in hop:
            self._virt_sources.setdefault(qkdl_uuid, {})[hop] = source

    def forget_provenance(self, app_uuid: str, qkdl_uuid: str) -> None:
        """Drop a session's provenance state (its KM ended the session)."""
        self._provenance.pop(app_uuid, None)
        self._virt_sources.pop(qkdl_uuid, None)

    def close_statistics_period(self, wall_s: float) -> None:
        """End the current ``app_statistics`` period of every application at ``wall_s``."""
        for ops in self._apps.values():
            if wall_s <= ops.period_start_s:
                continue
            ops.statistics.append((ops.period_start_s, wall_s, ops.period_bits))
            del ops.statistics[:-self.statistics_periods_kept]
            ops.period_start_s = wall_s
            ops.period_bits = 0

    def _status_change(self, uid: str, ops: _PhysOps, target: LinkStatus, reason: str,
                       wall_s: float) -> list[Notification]:
        before = ops.status
        ops.status = target
        self._update_node_status()
        if target in _DOWN_STATES and before not in _DOWN_STATES:
            return [Notification("sdqkdn_link_down",
                                 {"qkd_link": {"qkdl_id": uid, "reason": reason}}, wall_s)]
        if target == "ACTIVE" and before != "ACTIVE":
            return [Notification("event", {"link": {
                "qkdl_id": uid, "qkdl_status": identity("ACTIVE"),
                "message": f"link active ({reason})", "severity": identity("MINOR")}}, wall_s)]
        return []

    def _update_node_status(self) -> None:
        if self.status not in ("OPERATING", "DOWN") or not self._phys:
            return
        enabled = [o for o in self._phys.values() if o.enabled]
        all_down = bool(enabled) and all(o.status in _DOWN_STATES for o in enabled)
        self.status = "DOWN" if all_down else "OPERATING"

    def _perf_changed(self, ops: _PhysOps) -> bool:
        if ops.skr_bps is None:
            return False
        if ops.reported_skr_bps is None:
            return True
        base = max(ops.reported_skr_bps, 1.0)
        if abs(ops.skr_bps - ops.reported_skr_bps) / base >= self.thresholds.skr_ratio:
            return True
        if ops.qber is None or ops.reported_qber is None:
            return ops.qber is not None
        return abs(ops.qber - ops.reported_qber) >= self.thresholds.qber_abs

    def _perf_update(self, uid: str, ops: _PhysOps, wall_s: float) -> Notification:
        link = self._view_link(uid, wall_s)
        perf = dict(link.get("qkdl_performance", {}))
        return Notification("sdqkdn_link_perf_update",
                            {"qkd_link": {"qkdl_id": uid, "performance": perf}}, wall_s)

    def _overload_check(self, uid: str, ops: _PhysOps, wall_s: float) -> list[Notification]:
        perf = self._view_link(uid, wall_s).get("qkdl_performance", {})
        over = ops.skr_bps is not None and perf.get("expected_consumption", 0) > ops.skr_bps
        was, ops.overloaded = ops.overloaded, over
        if over and not was:
            common = {k: v for k, v in perf.items() if k != "phys_perf"}
            return [Notification("sdqkdn_link_overloaded",
                                 {"qkd_link": {"qkdl_id": uid, "performance": common}}, wall_s)]
        return []

    def _view_link(self, uid: str, wall_s: float) -> dict[str, Any]:
        view = self._view(self._config, wall_s)
        return self._find_link(view, uid) or {}

    # ------------------------------------------------------------------ commit

    def _commit(self, config: dict[str, Any], wall_s: float) -> list[Notification]:
        """Validate a candidate configuration, commit it, and return the notifications."""
        try:
            validate_node({ROOT_MEMBER: config}, config_only=True)
        except YangInvalid as exc:
            raise RestconfError(400, exc.tag, str(exc), error_type="application",
                                path=exc.path) from exc
        if self._protected_part(config) != self._protected:
            raise RestconfError(405, "operation-not-supported",
                                "qkdn_id, qkd_interfaces and the topology's PHYS links mirror "
                                "the physical network and are read-only")
        try:
            validate_node({ROOT_MEMBER: self._view(config, wall_s)})
        except YangInvalid as exc:
            raise RestconfError(400, exc.tag, str(exc), error_type="application",
                                path=exc.path) from exc
        before = {a["app_id"]: a for a in self._config["qkd_applications"].get("qkd_app", [])}
        after = {a["app_id"]: a for a in config["qkd_applications"].get("qkd_app", [])}
        self._config = config
        notes: list[Notification] = []
        for aid, app in after.items():
            if aid not in before:
                self._apps[aid] = _AppOps(creation_wall_s=wall_s, period_start_s=wall_s)
                notes.append(Notification("sdqkdn_application_new",
                                          {"qkd_application": _app_new_content(app)}, wall_s))
            elif (app.get("app_qos"), app.get("app_priority")) != \
                    (before[aid].get("app_qos"), before[aid].get("app_priority")):
                content: dict[str, Any] = {"app_id": aid, "app_qos": app.get("app_qos", {})}
                if "app_priority" in app:
                    content["app_priority"] = app["app_priority"]
                notes.append(Notification("sdqkdn_application_qos_update",
                                          {"qkd_application": content}, wall_s))
        for aid in before.keys() - after.keys():
            self._apps.pop(aid, None)
            notes.append(Notification("sdqkdn_application_disconnected",
                                      {"qkd_application": {"app_id": aid}}, wall_s))
        for ops in self._phys.values():
            notes += self._overload_check(self._by_link_id[ops.link_id], ops, wall_s)
        return notes

    # ------------------------------------------------------------------ path handling

    def _root_schema(self) -> SchemaNode:
        return _root_schema()

    def _route(self, path: str) -> list[Any]:
        return _route(path)

    def _schema_of(self, steps: Sequence[Any]) -> SchemaNode:
        return _schema_of(steps)

    def _locate(self, root: dict[str, Any], steps: Sequence[Any], path: str, *,
                config: bool = False) -> tuple[Any, Any, SchemaNode]:
        return _locate(root, steps, path, config=config)

    def _insert(self, root: dict[str, Any], steps: Sequence[Any], value: Any, path: str
                ) -> None:
        """Create a missing resource under its existing parent (PUT that creates)."""
        last = steps[-1]
        if isinstance(last, EntryKeys | EntryValue):
            parent, pslot, _ = self._locate(root, steps[:-2], path, config=True)
            container = parent[pslot]
            container.setdefault(_member_of(steps[:-1]), []).append(value)
        else:
            parent, pslot, _ = self._locate(root, steps[:-1], path, config=True)
            parent[pslot][_member_of(steps)] = value

    def _body_for(self, schema: SchemaNode, steps: Sequence[Any], body: Any, path: str
                  ) -> Any:
        """The value a PUT/PATCH body carries for the target (checks name and keys).

        Raises:
            RestconfError: 405 the target is state data; 400 a body that does not match.
        """
        if _is_state(schema):
            raise RestconfError(405, "operation-not-supported",
                                f"{schema.name} is state data (config false)",
                                path=_error_path(path))
        name, value = _single_member(body)
        if name != _target_member(schema):
            raise RestconfError(400, "unknown-element",
                                f"body member {name!r} does not match the target {schema.name!r}",
                                path=_error_path(path))
        last = steps[-1]
        if isinstance(last, EntryKeys | EntryValue):
            if not isinstance(value, list) or len(value) != 1:
                raise RestconfError(400, "invalid-value",
                                    "a list entry body must be an array of exactly one entry",
                                    path=_error_path(path))
            value = value[0]
            if isinstance(last, EntryKeys):
                if not isinstance(value, dict):
                    raise RestconfError(400, "invalid-value", "a list entry must be an object",
                                        path=_error_path(path))
                for (key, _ns), uri_value in last.keys.items():
                    if key in value and value[key] != uri_value:
                        raise RestconfError(400, "invalid-value",
                                            f"key {key} in the body differs from the URI",
                                            path=_error_path(path))
                    value.setdefault(key, uri_value)
            elif value != last.value:
                raise RestconfError(400, "invalid-value",
                                    "leaf-list value in the body differs from the URI",
                                    path=_error_path(path))
        return value

    def _create_child(self, target: dict[str, Any], parent: SchemaNode, child: SchemaNode,
                      value: Any, path: str) -> str:
        """Add one POSTed child to ``target``; returns the created resource's path."""
        member = _member_name(child, parent)
        if _is_state(child):
            raise RestconfError(405, "operation-not-supported",
                                f"{child.name} is state data (config false)",
                                path=_error_path(path))
        base = path.strip("/")
        if isinstance(child, ListNode | LeafListNode):
            entries = value if isinstance(value, list) else [value]
            if not entries:
                raise RestconfError(400, "invalid-value", f"no {child.name} entry to create",
                                    path=_error_path(path))
            existing = target.setdefault(member, [])
            location = f"{base}/{member}"
            for entry in entries:
                if isinstance(child, ListNode):
                    if not isinstance(entry, dict):
                        raise RestconfError(400, "invalid-value",
                                            f"a {child.name} entry must be an object",
                                            path=_error_path(path))
                    keys = [k for k, _ in child.keys]
                    missing = [k for k in keys if k not in entry]
                    if missing:
                        raise RestconfError(400, "missing-element",
                                            f"{child.name} entry lacks key {missing[0]}",
                                            path=_error_path(path))
                    same = [e for e in existing if all(e.get(k) == entry[k] for k in keys)]
                    key_text = ",".join(str(entry[k]) for k in keys)
                else:
                    same = [e for e in existing if e == entry]
                    key_text = str(entry)
                if same:
                    raise RestconfError(409, "data-exists",
                                        f"{child.name}={key_text} already exists",
                                        error_type="application",
                                        path=_error_path(f"{location}={key_text}"))
                existing.append(entry)
                location = f"{base}/{member}={key_text}"
            return location
        if member in target:
            raise RestconfError(409, "data-exists", f"{child.name} already exists",
                                error_type="application",
                                path=_error_path(f"{base}/{member}"))
        target[member] = value
        return f"{base}/{member}"


# ---------------------------------------------------------------------- helpers


def _root_schema() -> SchemaNode:
    node = data_model().schema.get_child("qkd_node", MODULE)
    assert node is not None
    return node


def _route(path: str) -> list[Any]:
    """Parse a RESTCONF data resource path into yangson selectors.

    Raises:
        RestconfError: 404 an unknown schema node, 400 a malformed path or key.
    """
    path = path.strip("/")
    if not path:
        return []
    try:
        route = data_model().parse_resource_id("/" + path)
    except YangsonException as exc:
        kind = type(exc).__name__
        if kind == "NonexistentSchemaNode":
            raise RestconfError(404, "invalid-value", f"unknown resource: {exc}",
                                path=_error_path(path)) from exc
        raise RestconfError(400, "invalid-value", f"malformed resource path: {exc}",
                            path=_error_path(path)) from exc
    except ValueError as exc:
        raise RestconfError(400, "invalid-value", f"malformed resource path: {exc}",
                            path=_error_path(path)) from exc
    return _cook_keys(list(route), path)


def _cook_keys(steps: list[Any], path: str) -> list[Any]:
    """Parse key and leaf-list values of the URI with their YANG types (``"2"`` → ``2``).

    Raises:
        RestconfError: 400 a value that is not of the key's type.
    """
    schema: SchemaNode | None = data_model().schema
    out: list[Any] = []
    for step in steps:
        if isinstance(step, MemberName):
            assert isinstance(schema, InternalNode)
            schema = _child(schema, step.name, step.namespace)
            out.append(step)
        elif isinstance(step, EntryKeys) and isinstance(schema, ListNode):
            keys: dict[Any, Any] = {}
            for (name, ns), text in step.keys.items():
                leaf = schema.get_child(name, ns)
                value = leaf.type.parse_value(text) if leaf is not None else None
                if value is None:
                    raise RestconfError(400, "invalid-value",
                                        f"{text!r} is not a valid {name}",
                                        path=_error_path(path))
                keys[(name, ns)] = value
            out.append(EntryKeys(keys))
        elif isinstance(step, EntryValue) and isinstance(schema, LeafListNode):
            value = schema.type.parse_value(step.value)
            if value is None:
                raise RestconfError(400, "invalid-value",
                                    f"{step.value!r} is not a valid {schema.name}",
                                    path=_error_path(path))
            out.append(EntryValue(value))
        else:
            out.append(step)
    return out

def _schema_of(steps: Sequence[Any]) -> SchemaNode:
    schema: SchemaNode | None = data_model().schema
    for step in steps:
        if isinstance(step, MemberName):
            assert isinstance(schema, InternalNode)
            schema = _child(schema, step.name, step.namespace)
    assert schema is not None
    return schema

def _locate(root: dict[str, Any], steps: Sequence[Any], path: str, *,
            config: bool = False) -> tuple[Any, Any, SchemaNode]:
    """(holder, slot, schema node) of the resource ``steps`` names in ``root``.

    Raises:
        RestconfError: 404 the instance does not exist; 405 when ``config`` and the
            resource is state data (``config false``).
    """
    holder: Any = None
    slot: Any = None
    current: Any = root
    schema: SchemaNode = data_model().schema
    for step in steps:
        if isinstance(step, MemberName):
            child = _child(schema, step.name, step.namespace)
            assert child is not None
            key = _member_name(child, schema)
            schema = child
            if not isinstance(current, dict) or key not in current:
                break
            holder, slot, current = current, key, current[key]
        elif isinstance(step, EntryKeys | EntryValue):
            index = _entry_index(current, step)
            if index is None:
                break
            holder, slot, current = current, index, current[index]
        else:
            raise RestconfError(400, "invalid-value", "unsupported path selector",
                                path=_error_path(path))
    else:
        if config and _is_state(schema):
            raise RestconfError(405, "operation-not-supported",
                                f"{schema.name} is state data (config false)",
                                path=_error_path(path))
        return holder, slot, schema
    if config and _is_state(_schema_of(steps)):
        raise RestconfError(405, "operation-not-supported",
                            f"{_schema_of(steps).name} is state data (config false)",
                            path=_error_path(path))
    raise RestconfError(404, "invalid-value", "the target resource does not exist",
                        path=_error_path(path))


def read_resource(document: dict[str, Any], path: str, *, content: Content = "all",
                  depth: int | None = None, fields: str | None = None) -> dict[str, Any]:
    """RFC 8040 GET of ``path`` in a ``{"etsi-qkd-sdn-node:qkd_node": …}`` document.

    Args:
        content, depth, fields: the RFC 8040 query parameters (§4.8.1, §4.8.2, §4.8.3);
            ``fields`` paths are relative to the target resource.

    Returns:
        ``{"<module>:<name>": value}`` (a one-entry array for a list or leaf-list entry).

    Raises:
        RestconfError: 400 a malformed path, key, depth or fields expression (or one naming
            no data node under the target); 404 an unknown resource.
    """
    if depth is not None and not 1 <= depth <= _MAX_DEPTH:
        raise RestconfError(400, "invalid-value", f"depth must be 1..{_MAX_DEPTH}")
    steps = _route(path)
    if not steps:
        schema: SchemaNode = _root_schema()
        selection = None if fields is None else _check_fields(parse_fields(fields), schema)
        shaped = _shape(document.get(ROOT_MEMBER, {}), schema, content, depth, fields=selection)
        return {ROOT_MEMBER: shaped if shaped is not _OMIT else {}}
    holder, slot, schema = _locate(document, steps, path)
    value = holder[slot]
    selection = None if fields is None else _check_fields(parse_fields(fields), schema)
    shaped = _shape(value, schema, content, depth, entry=isinstance(holder, list),
                    fields=selection)
    if shaped is _OMIT:
        raise RestconfError(404, "invalid-value",
                            f"no {content} data at this resource", path=_error_path(path))
    name = f"{schema.ns}:{schema.name}"
    return {name: [shaped] if isinstance(holder, list) else shaped}

_OMIT: Any = object()


def _is_state(schema: SchemaNode) -> bool:
    return bool(schema.content_type().name == "nonconfig")


def _child(schema: SchemaNode | None, name: str, ns: str | None = None) -> SchemaNode | None:
    """The schema child ``name`` of module ``ns``; ``None``: the parent's module (RFC 7951
    member names and RFC 8040 path segments inherit it), at the top level ``MODULE``."""
    if not isinstance(schema, InternalNode):
        return None
    return schema.get_child(name, ns or schema.ns or MODULE)


def _member_child(schema: SchemaNode, raw_name: str) -> SchemaNode | None:
    """The schema child an RFC 7951 member name (``name`` or ``module:name``) names."""
    prefix, sep, local = raw_name.partition(":")
    return _child(schema, local, prefix) if sep else _child(schema, raw_name)


def _member_name(child: SchemaNode, parent: SchemaNode) -> str:
    """RFC 7951 member name of ``child`` under ``parent``: qualified where the module
    changes (the top level, and augments such as ``keyplane-qkd-provenance:provenance``)."""
    return child.name if child.ns == parent.ns else f"{child.ns}:{child.name}"


def _member_of(steps: Sequence[Any]) -> str:
    """RFC 7951 member name of the node the last :class:`MemberName` of ``steps`` selects."""
    names = [i for i, step in enumerate(steps) if isinstance(step, MemberName)]
    return _member_name(_schema_of(steps[:names[-1] + 1]), _schema_of(steps[:names[-1]]))


def _target_member(schema: SchemaNode) -> str:
    """The member name a PUT/PATCH body must use for ``schema`` (this module's unqualified,
    as :func:`_unqualify` leaves it; any other module's qualified)."""
    return schema.name if schema.ns == MODULE else f"{schema.ns}:{schema.name}"


def _unqualify(name: str) -> str:
    """Strip this module's prefix (RFC 7951 qualified names); keep others for the error."""
    prefix, sep, local = name.partition(":")
    if sep and prefix == MODULE:
        return local
    return name


def _single_member(body: Any) -> tuple[str, Any]:
    """The one member of a RESTCONF request body (unqualified if of this module).

    Raises:
        RestconfError: 400 not one member, or a module the data model does not have.
    """
    if not isinstance(body, dict) or len(body) != 1:
        raise RestconfError(400, "malformed-message",
                            "the body must be a JSON object with exactly one member")
    (name, value), = body.items()
    local = _unqualify(name)
    prefix, sep, _ = local.partition(":")
    if sep and prefix not in _known_modules():
        raise RestconfError(400, "unknown-element", f"unknown module in member {name!r}")
    return local, value


@functools.cache
def _known_modules() -> frozenset[str]:
    """Names of the modules in the YANG library (the prefixes a member name may carry)."""
    return frozenset(name for name, _rev in data_model().schema_data.modules)


def _entry_index(current: Any, step: EntryKeys | EntryValue) -> int | None:
    if not isinstance(current, list):
        return None
    for i, entry in enumerate(current):
        if isinstance(step, EntryValue):
            if entry == step.value:
                return i
        elif isinstance(entry, dict) and all(entry.get(k) == v
                                             for (k, _ns), v in step.keys.items()):
            return i
    return None


def _merge(old: dict[str, Any], new: dict[str, Any], schema: SchemaNode) -> None:
    """RFC 8040 merge of ``new`` into ``old`` (lists merged by key, leaf-lists by value)."""
    for raw_name, value in new.items():
        name = _unqualify(raw_name)
        child = _member_child(schema, name)
        if child is None or name not in old:
            old[name] = value
        elif isinstance(child, ListNode) and isinstance(value, list):
            keys = [k for k, _ in child.keys]
            for entry in value:
                match = next((e for e in old[name] if isinstance(entry, dict)
                              and all(e.get(k) == entry.get(k) for k in keys)), None)
                if match is None:
                    old[name].append(entry)
                else:
                    _merge(match, entry, child)
        elif isinstance(child, LeafListNode) and isinstance(value, list):
            old[name] = old[name] + [v for v in value if v not in old[name]]
        elif isinstance(value, dict) and isinstance(old[name], dict):
            _merge(old[name], value, child)
        else:
            old[name] = value


def _shape(value: Any, schema: SchemaNode, content: Content, depth: int | None, *,
           entry: bool = False, fields: Fields | None = None) -> Any:
    """Apply the RFC 8040 ``content``, ``depth`` and ``fields`` query parameters to a raw
    value (``fields``: the checked selection of :func:`parse_fields`; None selects all).

    ``depth`` counts the target as level 1; list keys are always kept so entries stay
    identifiable. Returns ``_OMIT`` when nothing of ``value`` is selected.
    """
    if isinstance(schema, ListNode) and isinstance(value, list) and not entry:
        shaped = [_shape(v, schema, content, depth, entry=True, fields=fields) for v in value]
        shaped = [s for s in shaped if s is not _OMIT]
        return shaped if shaped else _OMIT
    if isinstance(value, dict) and isinstance(schema, InternalNode):
        keys = {k for k, _ in schema.keys} if isinstance(schema, ListNode) else set()
        out: dict[str, Any] = {}
        for name, sub in value.items():
            child = _member_child(schema, name)
            if child is None:
                continue
            if name in keys:
                if content != "config" or not _is_state(child):
                    out[name] = sub
                continue
            if depth is not None and depth <= 1:
                continue
            below: Fields | None = None
            if fields is not None:
                picked = _picked(fields, child)
                if picked is _UNSELECTED:
                    continue
                below = picked
            shaped = _shape(sub, child, content, None if depth is None else depth - 1,
                            fields=below)
            if shaped is not _OMIT:
                out[name] = shaped
        selected = set(out) - keys
        pruned = depth is not None and depth <= 1
        if not selected and (fields is not None or content != "all") and not pruned \
                and set(value) - keys:
            return _OMIT
        return out
    state = _is_state(schema)
    if (content == "config" and state) or (content == "nonconfig" and not state):
        return _OMIT
    return value


Fields = dict[str, "Fields | None"]
"""A parsed ``fields`` expression: node identifier (``name`` or ``module:name``) -> the
selection below it (None: the whole subtree)."""

_UNSELECTED: Any = object()
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*(?::[A-Za-z_][A-Za-z0-9_.-]*)?")


def parse_fields(text: str) -> Fields:
    """Parse an RFC 8040 §4.8.3 ``fields`` expression.

    ``a/b(c;d/e);f`` selects ``a/b/c``, ``a/b/d/e`` and ``f``. Paths that share a prefix
    are merged; a path that selects a node whole wins over one that selects part of it.

    Raises:
        RestconfError: 400 on a malformed expression.
    """
    def bad(why: str) -> RestconfError:
        return RestconfError(400, "invalid-value", f"fields: {why}")

    def merge(into: Fields, name: str, sub: Fields | None) -> None:
        if name in into and (into[name] is None or sub is None):
            into[name] = None
        elif name in into:
            target = into[name]
            assert target is not None and sub is not None
            for k, v in sub.items():
                merge(target, k, v)
        else:
            into[name] = sub

    def expr(i: int) -> tuple[Fields, int]:
        out: Fields = {}
        while True:
            names: list[str] = []
            while True:
                m = _FIELD_NAME.match(text, i)
                if m is None:
                    raise bad(f"a node identifier expected at offset {i}")
                names.append(m.group())
                i = m.end()
                if i < len(text) and text[i] == "/":
                    i += 1
                    continue
                break
            sub: Fields | None = None
            if i < len(text) and text[i] == "(":
                sub, i = expr(i + 1)
                if i >= len(text) or text[i] != ")":
                    raise bad(f"')' expected at offset {i}")
                i += 1
            for name in reversed(names[1:]):
                sub = {name: sub}
            merge(out, names[0], sub)
            if i < len(text) and text[i] == ";":
                i += 1
                continue
            return out, i

    if not text:
        raise bad("empty expression")
    fields, end = expr(0)
    if end != len(text):
        raise bad(f"unexpected {text[end]!r} at offset {end}")
    return fields


def _check_fields(fields: Fields, schema: SchemaNode) -> Fields:
    """``fields`` if every identifier names a data node under ``schema``, else a 400."""
    for name, sub in fields.items():
        child = _member_child(schema, name)
        if child is None:
            raise RestconfError(400, "invalid-value",
                                f"fields: {name!r} names no data node here")
        if sub is not None:
            _check_fields(sub, child)
    return fields


def _picked(fields: Fields, child: SchemaNode) -> Fields | None:
    """What ``fields`` selects of ``child`` (None: all of it), or ``_UNSELECTED``."""
    for name, sub in fields.items():
        prefix, sep, local = name.partition(":")
        if (local if sep else name) == child.name and (not sep or prefix == child.ns):
            return sub
    unselected: Fields | None = _UNSELECTED
    return unselected


def _error_path(path: str) -> str:
    """RFC 8040 error-path in the instance-identifier form of the resource path."""
    return "/" + path.strip("/")


def _parse_date_and_time(text: str) -> float:
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return math.inf


def _app_new_content(app: dict[str, Any]) -> dict[str, Any]:
    """``sdqkdn_application_new`` content from a ``qkd_app`` entry."""
    wanted: Iterable[str] = ("app_type", "server_app_id", "client_app_id", "app_priority",
                             "local_qkdn_id", "app_qos")
    return {k: app[k] for k in wanted if k in app}
