"""The SDN Controller's model: QKD nodes and key-association links as ETSI GS QKD 015 sees them.

Pure (no bus, no database, no ETSI 015 wire code): :class:`SdnModel` holds the nodes
(``qkdn_id``) and the links (``qkd_link``): PHYS links (a direct quantum channel, one per
topology-file link or registered at run time) and VIRT links (the end-to-end key association
a multi-hop session creates over trusted nodes). Every mutation returns the
:class:`~keyplane.messages.TopologyChange` announcements it causes, for the shell
(:class:`keyplane.control.sdn.SdnController`) to publish.

Why a module of its own: the controller shell (``control/sdn.py``) drives the nodes through
the ETSI 015 southbound (``control/southbound.py``), and the southbound reads and writes this
model. With the model here both import it and neither imports the other's module at load
time, so the package's import graph has no cycle (tests/unit/test_imports.py).

Identifiers: ETSI 015 wants UUIDs. ``qkdn_id`` and ``qkdl_id`` are UUIDv5 of the node or
link id in a fixed keyplane namespace, so every process derives the same ids from the
topology file without coordination.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from keyplane.config import Topology
from keyplane.control.wire import RegisterLink, SnapshotLink, TopologySnapshot
from keyplane.messages import LinkAlarm, TopologyChange

__all__ = ["ELEMENT", "KEYPLANE_NAMESPACE", "LinkStatus", "LinkType", "NodeDiscovery", "SdnLink",
           "SdnModel", "SdnNode", "qkd_uuid"]

ELEMENT = "sdn"

KEYPLANE_NAMESPACE = uuid.UUID("6f1d3c1e-5b0a-5d7e-9a43-6b65796c616e")
"""UUIDv5 namespace of every keyplane ``qkdn_id`` / ``qkdl_id``: the same as
``keyplane.api.etsi015.model.KEYPLANE_UUID_NAMESPACE`` (not imported, so that the control
plane does not load the YANG toolchain), so the controller and every node agent agree."""

LinkType = Literal["PHYS", "VIRT"]
LinkStatus = Literal["ACTIVE", "PASSIVE", "PENDING", "OFF"]


def qkd_uuid(kind: Literal["node", "link"], ident: str) -> str:
    """The ETSI 015 UUID of a node or link id (stable across processes)."""
    return str(uuid.uuid5(KEYPLANE_NAMESPACE, f"{kind}:{ident}"))


@dataclass(frozen=True)
class NodeDiscovery:
    """What the controller last read from a node's SDN agent over ETSI 015.

    Attributes:
        url: the agent's base URL.
        t: clock time of the reading.
        reachable: the agent answered (``error`` says why not, or why the answer was
            not accepted, e.g. a ``qkdn_id`` that is not this node's).
        qkdn_id, status, capabilities: ``qkdn_id``, ``qkdn_status``, ``qkdn_capabilities``.
        interfaces: ``qkdi_id`` of every ``qkd_interface``.
        phys_links: ``qkdl_id`` → ``qkdl_status`` of every PHYS ``qkd_link`` reported.
        virt_links: ``qkdl_id`` of every VIRT ``qkd_link``.
        applications: ``app_id`` of every ``qkd_app``.
        missing_links: link ids of the PHYS links the controller has at this node and the
            agent does not report.
        unknown_links: ``qkdl_id`` the agent reports and the controller does not know.
    """

    url: str
    t: float
    reachable: bool
    qkdn_id: str = ""
    status: str = ""
    capabilities: Mapping[str, Any] = field(default_factory=dict)
    interfaces: tuple[int, ...] = ()
    phys_links: Mapping[str, str] = field(default_factory=dict)
    virt_links: tuple[str, ...] = ()
    applications: tuple[str, ...] = ()
    missing_links: tuple[str, ...] = ()
    unknown_links: tuple[str, ...] = ()
    error: str = ""


@dataclass
class SdnNode:
    """A QKD node (``/qkd_node``), with what its process announced and its agent told."""

    node_id: str
    qkdn_id: str
    name: str = ""
    address: str = "127.0.0.1"
    status: Literal["NEW", "OPERATING", "DOWN", "FAILURE", "OUT"] = "OPERATING"
    endpoints: dict[str, str] = field(default_factory=dict)
    discovery: NodeDiscovery | None = None


@dataclass
class SdnLink:
    """A key-association link (``/qkd_node/qkd_links/qkd_link``)."""

    link_id: str
    qkdl_id: str
    local: str  # node id of qkdl_local
    remote: str  # node id of qkdl_remote
    type: LinkType = "PHYS"
    status: LinkStatus = "ACTIVE"
    enable: bool = True
    path: tuple[str, ...] = ()  # VIRT: every node from local to remote
    bandwidth_bps: float = 0.0  # VIRT: virt_bandwidth, the rate the session was admitted at
    reserved_bps: float = 0.0  # VIRT: what Routing reserved per hop (qkd_app min_bandwidth)
    session_id: str | None = None  # VIRT: the session that created it
    source_sae: str = ""  # VIRT: the session's qkd_app (server_app_id)
    destination_sae: str = ""  # VIRT: client_app_id
    priority: int = 0  # VIRT: app_priority
    max_bps: float = 0.0  # VIRT: app_qos/max_bandwidth (0: not set)
    alarms: set[str] = field(default_factory=set)
    registered: bool = False  # PHYS added at run time (not from the topology file)

    def virt_prev_hop(self, node: str) -> str | None:
        """``virt_prev_hop`` as ``node``'s agent reports it (a qkdn_id), VIRT only."""
        if node not in self.path:
            return None
        i = self.path.index(node)
        return qkd_uuid("node", self.path[i - 1]) if i > 0 else None

    def virt_next_hop(self, node: str) -> list[str]:
        """``virt_next_hop`` as ``node``'s agent reports it (qkdn_ids), VIRT only."""
        if node not in self.path:
            return []
        i = self.path.index(node)
        return [qkd_uuid("node", self.path[i + 1])] if i + 1 < len(self.path) else []

    def snapshot(self) -> SnapshotLink:
        """The bus form."""
        return SnapshotLink(link_id=self.link_id, qkdl_id=self.qkdl_id,
                            endpoints=(self.local, self.remote), type=self.type,
                            status=self.status, enable=self.enable, path=list(self.path),
                            bandwidth_bps=self.bandwidth_bps)


class SdnModel:
    """Nodes and links with ETSI 015 identities; every mutation returns its announcements.

    Attributes:
        nodes: by node id.
        links: the key-association links by link id: PHYS links and the VIRT links of
            multi-hop sessions (the topology).
        direct: the records of sessions between adjacent nodes, by their registration's link
            id. Such a session's key association is the PHYS link between its nodes: it adds
            no link to the topology (no ``virtual_link_added``), only its ``qkd_app`` on the
            two nodes (issue 17.5). Its ``qkdl_id`` is that PHYS link's.
    """

    def __init__(self) -> None:
        self.nodes: dict[str, SdnNode] = {}
        self.links: dict[str, SdnLink] = {}
        self.direct: dict[str, SdnLink] = {}

    def record(self, link_id: str) -> SdnLink | None:
        """The link or direct-session record registered as ``link_id``, if any."""
        return self.links.get(link_id) or self.direct.get(link_id)

    def sessions(self) -> list[SdnLink]:
        """The record of every session: multi-hop VIRT links and direct sessions."""
        return [link for link in (*self.links.values(), *self.direct.values())
                if link.type == "VIRT" and link.session_id is not None]

    @classmethod
    def from_topology(cls, topology: Topology) -> SdnModel:
        """The model of a topology file (every link PHYS)."""
        model = cls()
        for n in topology.nodes:
            model.add_node(n.id, name=n.name, address=n.address)
        for link in topology.links:
            model.links[link.link_id] = SdnLink(
                link_id=link.link_id, qkdl_id=qkd_uuid("link", link.link_id),
                local=link.endpoints[0], remote=link.endpoints[1], enable=link.enabled,
                status="ACTIVE" if link.enabled else "OFF")
        return model

    def add_node(self, node_id: str, *, name: str = "", address: str = "127.0.0.1"
                 ) -> list[TopologyChange]:
        """Add a node (idempotent)."""
        if node_id in self.nodes:
            return []
        self.nodes[node_id] = SdnNode(node_id, qkd_uuid("node", node_id), name, address)
        return [TopologyChange(change="node_added", node=node_id)]

    def physical_between(self, a: str, b: str) -> SdnLink | None:
        """The PHYS link joining ``a`` and ``b``, if any."""
        for link in self.links.values():
            if link.type == "PHYS" and {link.local, link.remote} == {a, b}:
                return link
        return None

    def register(self, req: RegisterLink) -> tuple[SdnLink, list[TopologyChange]]:
        """Register a PHYS link or a session's VIRT link.

        Raises:
            ValueError: unknown endpoint, a PHYS link already joins the two nodes, a VIRT
                path that does not join its endpoints over PHYS links, or an id in use by a
                link of the other type.
        """
        a, b = req.endpoints
        for n in (a, b, *req.path):
            if n not in self.nodes:
                raise ValueError(f"unknown node {n!r}")
        if a == b:
            raise ValueError("a link needs two different endpoints")
        old = self.record(req.link_id)
        if old is not None and old.type != req.type:
            raise ValueError(f"{req.link_id} is already a {old.type} link")
        if req.type == "PHYS":
            other = self.physical_between(a, b)
            if other is not None and other.link_id != req.link_id:
                raise ValueError(f"{a} and {b} are already joined by {other.link_id}")
            link = SdnLink(req.link_id, qkd_uuid("link", req.link_id), a, b, "PHYS",
                           registered=True)
            change: Literal["link_added", "virtual_link_added"] = "link_added"
        else:
            path = tuple(req.path) or (a, b)
            if path[0] != a or path[-1] != b:
                raise ValueError(f"path {list(path)} does not join {a} and {b}")
            for u, v in itertools.pairwise(path):
                if self.physical_between(u, v) is None:
                    raise ValueError(f"no PHYS link between {u} and {v}")
            # the admitted rate (max_bps) is what the session draws from the PHYS links
            admitted = req.max_bps or req.bandwidth_bps
            if len(path) == 2:
                return self._register_direct(req, path, admitted)
            # a session's VIRT link has the qkdl_id the ETSI 015 driver gives it
            uid = qkd_uuid("link", f"session:{req.session_id}" if req.session_id
                           else req.link_id)
            link = SdnLink(req.link_id, uid, a, b, "VIRT", path=path, bandwidth_bps=admitted,
                           reserved_bps=req.bandwidth_bps, session_id=req.session_id,
                           source_sae=req.source_sae, destination_sae=req.destination_sae,
                           priority=req.priority, max_bps=req.max_bps)
            self.direct.pop(req.link_id, None)
            change = "virtual_link_added"
        self.links[req.link_id] = link
        return link, [TopologyChange(change=change, link_id=link.link_id, endpoints=(a, b),
                                     attributes=self._attributes(link))]

    def _register_direct(self, req: RegisterLink, path: tuple[str, ...], admitted: float
                         ) -> tuple[SdnLink, list[TopologyChange]]:
        """Record a session between adjacent nodes: no link; a VIRT link it had before (a
        reroute onto the direct link) goes."""
        phys = self.physical_between(*path)
        assert phys is not None  # checked by the caller
        link = SdnLink(req.link_id, phys.qkdl_id, path[0], path[1], "VIRT", path=path,
                       bandwidth_bps=admitted, reserved_bps=req.bandwidth_bps,
                       session_id=req.session_id, source_sae=req.source_sae,
                       destination_sae=req.destination_sae, priority=req.priority,
                       max_bps=req.max_bps)
        changes = self.unregister(req.link_id) if req.link_id in self.links else []
        self.direct[req.link_id] = link
        return link, changes

    def unregister(self, link_id: str) -> list[TopologyChange]:
        """Remove a link or a direct session's record (no-op if unknown; a direct session
        announces nothing, it added no link)."""
        if self.direct.pop(link_id, None) is not None:
            return []
        link = self.links.pop(link_id, None)
        if link is None:
            return []
        change: Literal["link_removed", "virtual_link_removed"] = (
            "link_removed" if link.type == "PHYS" else "virtual_link_removed")
        return [TopologyChange(change=change, link_id=link_id,
                               endpoints=(link.local, link.remote))]

    def set_enable(self, link_id: str, enable: bool) -> list[TopologyChange]:
        """Operator switch (``qkdl_enable``)."""
        link = self.links[link_id]
        link.enable = enable
        return self._status(link)

    def apply_alarm(self, alarm: LinkAlarm) -> list[TopologyChange]:
        """Follow the Monitoring Element's view of a PHYS link's health."""
        link = self.links.get(alarm.link_id)
        if link is None or link.type != "PHYS":
            return []
        if alarm.kind == "cleared":
            link.alarms.clear()
        else:
            link.alarms.add(alarm.kind)
        return self._status(link)

    def _status(self, link: SdnLink) -> list[TopologyChange]:
        status: LinkStatus = ("OFF" if not link.enable else
                              "PASSIVE" if link.alarms else "ACTIVE")
        if status == link.status:
            return []
        link.status = status
        return [TopologyChange(change="link_updated", link_id=link.link_id,
                               endpoints=(link.local, link.remote),
                               attributes=self._attributes(link))]

    @staticmethod
    def _attributes(link: SdnLink) -> dict[str, float | str | bool | None]:
        attrs: dict[str, float | str | bool | None] = {
            "qkdl_id": link.qkdl_id, "type": link.type, "status": link.status,
            "enable": link.enable}
        if link.type == "VIRT":
            attrs["bandwidth_bps"] = link.bandwidth_bps
            attrs["path"] = ",".join(link.path)
            attrs["session_id"] = link.session_id
        if link.alarms:
            attrs["alarms"] = ",".join(sorted(link.alarms))
        return attrs

    def snapshot(self) -> TopologySnapshot:
        """Every node and link."""
        return TopologySnapshot(nodes=list(self.nodes),
                                links=[link.snapshot() for link in self.links.values()])
