"""Process model: the same elements in one process (embedded) or one per process.

* :class:`ControlRuntime` runs the control plane elements and the node registry (node
  processes announce themselves and their interface URLs on ``keyplane.control.sdn.nodes``).
* :class:`NodeRuntime` runs one node: its key manager, its ends of the QKD links, its
  ETSI 014/004 servers and its ETSI 015 agent, and announces itself to the control plane.
* :class:`Embedded` runs one ControlRuntime and a NodeRuntime per node over one bus, one
  database and one clock: ``keyplane run`` and ``keyplane demo``.

``keyplane controller`` and ``keyplane node`` run the two halves as separate processes over
NATS and a shared database URL. Whoever knows every node's endpoints (the embedded runtime,
or the controller process) writes ``<state>/endpoints.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from keyplane.api.etsi015 import SdnAgent, serve_agent
from keyplane.api.server import serve_km_api
from keyplane.api.settings import ApiSettings, Etsi014Limits
from keyplane.bus import Bus, Message, topics
from keyplane.certs import Issued, ensure_network_certs
from keyplane.clock import Clock, RealClock
from keyplane.config import Topology
from keyplane.control import ControlPlane, ControlSettings
from keyplane.errors import BusError
from keyplane.events import EventStream, EventType
from keyplane.keymanager import KeyManager, KmSettings
from keyplane.keymanager.pqc import KmIdentity
from keyplane.messages import NodeAnnouncement, NodeWelcome
from keyplane.physical import PhysicalNetwork
from keyplane.store import Database
from keyplane.store.topology import load_topology_into

__all__ = ["ControlRuntime", "Embedded", "NodeRuntime", "RuntimeContext", "write_endpoints"]

logger = logging.getLogger(__name__)


@dataclass
class RuntimeContext:
    """What every element of one process shares."""

    topology: Topology
    bus: Bus
    db: Database
    clock: Clock = field(default_factory=RealClock)
    events: EventStream | None = None
    state_dir: Path = Path("state")
    host: str = "127.0.0.1"
    seed: int = 1
    certs: Issued | None = None

    def __post_init__(self) -> None:
        if self.events is None:
            self.events = EventStream(self.clock)

    @property
    def stream(self) -> EventStream:
        """The event stream (never None after construction)."""
        assert self.events is not None
        return self.events

    def ensure_certs(self) -> Issued:
        """Create or load the network's certificates under ``<state>/certs``."""
        if self.certs is None:
            self.certs = ensure_network_certs(self.topology, self.state_dir / "certs")
        return self.certs


def write_endpoints(state_dir: Path, topology: Topology, certs: Issued,
                    endpoints: dict[str, dict[str, str]]) -> Path:
    """Write ``endpoints.json``: each KM's interface URLs and each SAE's certificate files.

    Paths are relative to ``state_dir`` so the directory can be moved or mounted elsewhere.
    """
    def rel(p: Path) -> str:
        return os.path.relpath(p, state_dir)

    doc: dict[str, Any] = {
        "topology": topology.name,
        "ca": rel(certs.ca.cert),
        "controller": {"cert": rel(certs.controller.cert), "key": rel(certs.controller.key)},
        "kms": {node: dict(sorted(urls.items())) for node, urls in sorted(endpoints.items())},
        "saes": {a.sae_id: {"node": a.node, "owner": a.owner,
                            "cert": rel(certs.saes[a.sae_id].cert),
                            "key": rel(certs.saes[a.sae_id].key)}
                 for a in topology.applications},
    }
    path = state_dir / "endpoints.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


class _Lifecycle:
    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Any:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


class ControlRuntime(_Lifecycle):
    """The control plane of a network, in this process: the five elements (or a subset)
    and the node registry that learns where each node's interfaces listen."""

    def __init__(self, ctx: RuntimeContext, *, write_endpoints_file: bool = True,
                 elements: list[str] | None = None,
                 settings: ControlSettings | None = None) -> None:
        self.ctx = ctx
        self.endpoints: dict[str, dict[str, str]] = {}
        self._write = write_endpoints_file
        self._subs: list[Any] = []
        self._closed = False
        self.plane = ControlPlane(ctx.topology, ctx.bus, ctx.db, ctx.clock, ctx.stream,
                                  settings, elements=elements)

    async def start(self) -> None:
        """Start the control-plane elements and the node registry."""
        if "sdn" not in self.plane.elements:
            # the SDN Controller normally loads the topology; without it, do it here
            await load_topology_into(self.ctx.db, self.ctx.topology)
        await self.plane.start()
        self._subs.append(await self.ctx.bus.subscribe(topics.SDN_NODES, self._on_announcement))

    async def _on_announcement(self, topic: str, msg: Message) -> Message | None:
        if not isinstance(msg, NodeAnnouncement):
            return None
        known = any(n.id == msg.node for n in self.ctx.topology.nodes)
        if not known:
            return NodeWelcome(node=msg.node, known=False, reason="node not in the topology")
        self.endpoints[msg.node] = dict(msg.endpoints)
        self.ctx.stream.emit(EventType.topology_changed, "sdn", node=msg.node,
                             change="node_registered", endpoints=dict(msg.endpoints))
        if self._write and self.ctx.certs is not None:
            write_endpoints(self.ctx.state_dir, self.ctx.topology, self.ctx.certs,
                            self.endpoints)
        return NodeWelcome(node=msg.node, known=True)

    async def close(self) -> None:
        """Stop answering (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for sub in self._subs:
            await sub.unsubscribe()
        await self.plane.close()


class NodeRuntime(_Lifecycle):
    """One node of the network, in this process."""

    def __init__(self, ctx: RuntimeContext, node_id: str, *,
                 announce_timeout_s: float = 30.0, run_links: bool = True,
                 km_settings: KmSettings | None = None) -> None:
        ctx.topology.node(node_id)  # KeyError on an unknown node
        self.ctx = ctx
        self.node_id = node_id
        self.km = KeyManager(node_id, ctx.topology, ctx.bus, ctx.db, ctx.clock, ctx.stream,
                             km_settings)
        self.physical: PhysicalNetwork | None = None
        self._run_links = run_links
        self.endpoints: dict[str, str] = {}
        self._announce_timeout_s = announce_timeout_s
        self._closed = False
        self._stack = contextlib.AsyncExitStack()
        self.agent: SdnAgent | None = None

    async def start(self) -> None:
        """Start the node's elements, serve its interfaces, announce it to the control plane.

        On any failure, whatever already started is stopped again.
        """
        try:
            await self._start_elements()
        except BaseException:
            await self._stack.aclose()
            raise
        self.ctx.stream.emit(EventType.element_started, "node", node=self.node_id,
                             endpoints=dict(self.endpoints))
        await self._announce()

    async def _start_elements(self) -> None:
        ctx = self.ctx
        certs = ctx.ensure_certs()
        km_cert = certs.kms[self.node_id]  # the KM's certificate also signs its ML-KEM hops
        self.km.set_identity(KmIdentity.load(self.node_id, km_cert.cert, km_cert.key,
                                             certs.ca.cert))
        await self._stack.enter_async_context(self.km)
        if self._run_links:
            # distributed mode: this node runs its own ends of its links; the peer ends run
            # in the neighbours' processes and the classical channel goes over the bus
            sinks = {(self.node_id, link.link_id): self.km.link_key_sink(link.link_id)
                     for link in ctx.topology.links_of(self.node_id)}
            self.physical = PhysicalNetwork(ctx.topology, clock=ctx.clock, sinks=sinks,
                                            seed=ctx.seed, bus=ctx.bus, events=ctx.stream,
                                            node=self.node_id)
            await self.physical.start()
            self._stack.push_async_callback(self.physical.close)
        api = await serve_km_api(
            self.km, kme_id=self.node_id, server_cert=certs.kms[self.node_id],
            ca_file=certs.ca.cert, host=ctx.host, port=0,
            settings=ApiSettings.from_topology(
                ctx.topology, self.node_id,
                limits=Etsi014Limits.from_km_settings(self.km.settings)))
        self._stack.push_async_callback(api.close)
        self.endpoints["etsi014"] = api.etsi014_url
        self.endpoints["etsi004"] = api.etsi004_url
        self.agent = SdnAgent(self.node_id, ctx.topology, ctx.bus, ctx.clock, ctx.stream)
        await self._stack.enter_async_context(self.agent)
        server = await serve_agent(self.agent, ctx.host, 0, server_cert=certs.kms[self.node_id],
                                   ca_file=certs.ca.cert)
        self._stack.push_async_callback(server.close)
        self.endpoints["etsi015"] = server.url

    async def _announce(self) -> None:
        """Announce until the control plane answers (it may start after us)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._announce_timeout_s
        msg = NodeAnnouncement(node=self.node_id, endpoints=self.endpoints, pid=os.getpid())
        while True:
            try:
                reply = await self.ctx.bus.request(topics.SDN_NODES, msg, timeout_s=1.0)
            except BusError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)
                continue
            if isinstance(reply, NodeWelcome) and not reply.known:
                raise BusError(f"control plane refused node {self.node_id}: {reply.reason}")
            return

    async def close(self) -> None:
        """Stop the node's elements (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await self._stack.aclose()
        self.ctx.stream.emit(EventType.element_stopped, "node", node=self.node_id)


class Embedded(_Lifecycle):
    """Every element of a network in one process: control plane plus every node.

    The quantum links run as one :class:`PhysicalNetwork` with both ends in this process
    (in-process classical channels), feeding every KM's link key stores.
    """

    def __init__(self, ctx: RuntimeContext, *, control_settings: ControlSettings | None = None,
                 km_settings: KmSettings | None = None) -> None:
        self.ctx = ctx
        self.control = ControlRuntime(ctx, write_endpoints_file=False,
                                      settings=control_settings)
        self.nodes = {n.id: NodeRuntime(ctx, n.id, run_links=False, km_settings=km_settings)
                      for n in ctx.topology.nodes}
        sinks = {(node_id, link.link_id): rt.km.link_key_sink(link.link_id)
                 for node_id, rt in self.nodes.items()
                 for link in ctx.topology.links_of(node_id)}
        self.physical = PhysicalNetwork(ctx.topology, clock=ctx.clock, sinks=sinks,
                                        seed=ctx.seed, bus=ctx.bus, events=ctx.stream)

    def km(self, node_id: str) -> KeyManager:
        """The key manager of ``node_id``."""
        return self.nodes[node_id].km

    async def start(self) -> None:
        """Start the control plane, every node, then the links; write endpoints.json."""
        certs = self.ctx.ensure_certs()
        await self.control.start()
        try:
            await asyncio.gather(*(n.start() for n in self.nodes.values()))
            await self.physical.start()
        except BaseException:
            await self.close()
            raise
        write_endpoints(self.ctx.state_dir, self.ctx.topology, certs, self.control.endpoints)

    async def close(self) -> None:
        """Stop the links, the nodes, then the control plane (idempotent)."""
        await self.physical.close()
        await asyncio.gather(*(n.close() for n in self.nodes.values()))
        await self.control.close()
