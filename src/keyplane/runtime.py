"""Process model: the same elements in one process (embedded) or one per process.

* :class:`ControlRuntime` runs the control plane elements. Node processes announce
  themselves and their interface URLs on ``keyplane.control.sdn.nodes``; the SDN Controller
  answers (and drives each node's ETSI 015 agent with the controller certificate), or, in
  a process without it, a fallback registry here. With the SDN Controller it also serves
  the northbound RESTCONF view of the network over mutual TLS.
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
import functools
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field

from keyplane.api.entanglement import NodeEntanglementAgent
from keyplane.api.etsi004.app import ETSI004_PREFIX
from keyplane.api.etsi015 import (
    AgentSettings,
    Etsi015Driver,
    KmEventFeed,
    RestconfServer,
    SdnAgent,
    create_agent_app,
    create_northbound_app,
    serve_app,
    serve_teraflowsdn,
)
from keyplane.api.httpserver import HttpServer, RequestObserver
from keyplane.api.server import create_km_app, km_interface
from keyplane.api.settings import ApiSettings, Etsi014Limits
from keyplane.bus import Bus, BusSecurity, Message, topics, unsubscribe_all
from keyplane.certs import Issued, ensure_network_certs, server_ssl_context
from keyplane.clock import Clock, RealClock
from keyplane.config import Topology
from keyplane.control import ControlPlane, ControlSettings
from keyplane.errors import BusError, BusUnavailable
from keyplane.events import Event, EventStream, EventType
from keyplane.fileperms import ensure_private_dir, write_private
from keyplane.heap import settle
from keyplane.keymanager import KeyManager, KmSettings
from keyplane.keymanager.hybrid import PROVENANCE_EXTENSION
from keyplane.keymanager.pqc import KmIdentity
from keyplane.keymanager.settings import km_settings_from_env
from keyplane.keymanager.sources import KeySources
from keyplane.keymanager.telemetry import KmTelemetryPublisher
from keyplane.lifecycle import ProcessSettings, Service
from keyplane.messages import NodeAnnouncement, NodeWelcome
from keyplane.ops import Ops
from keyplane.physical.pool import EmulationSettings, emulation_settings_from_env
from keyplane.store import Database
from keyplane.store.topology import load_topology_into

__all__ = ["ControlRuntime", "Embedded", "KmFeeds", "LazyApp", "NodeRuntime", "RuntimeContext",
           "StartupSettings", "write_endpoints"]

logger = logging.getLogger(__name__)


class LazyApp:
    """An ASGI app built on its first request.

    A KM's FastAPI app costs about 25 ms of CPU to build (route and model analysis); a
    network of 1,000 nodes would spend most of its start-up there, for KMs that no SAE may
    ever call. Serving a :class:`LazyApp` binds the port and the certificate at once and
    builds the app when the first request arrives.
    """

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._app: Any = None

    @property
    def app(self) -> Any:
        """The app (built now if it was not yet)."""
        if self._app is None:
            self._app = self._factory()
        return self._app

    async def __call__(self, scope: MutableMapping[str, Any],
                       receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        await self.app(scope, receive, send)


class KmFeeds:
    """One event sink for the ETSI 015 feeds (:class:`KmEventFeed`) of every node of a
    process: an event goes to its own node's feed only. As 1,000 separate sinks each event
    cost 1,000 calls (most of a 1,000-node network's event handling)."""

    def __init__(self) -> None:
        self.feeds: dict[str, KmEventFeed] = {}

    def write(self, event: Event) -> None:
        """Hand ``event`` to its node's feed (the EventSink protocol)."""
        feed = self.feeds.get(event.node) if event.node is not None else None
        if feed is not None:
            feed.write(event)

    def close(self) -> None:
        """Nothing to release (the EventSink protocol)."""


class StartupSettings(BaseModel):
    """How a process brings its nodes up (bounded, so 1,000 nodes start on 2 cores)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_start_concurrency: Annotated[int, Field(ge=1)] = 8
    """Nodes an embedded process starts at once. Each start loads the KM's stores, opens
    two HTTPS servers and registers with the SDN Controller (a database write and an ETSI
    015 discovery): all at once, 1,000 nodes exhausted the database pool and the event loop."""
    # announcements retry under keyplane.lifecycle.ProcessSettings (one back-off for every
    # dependency a process waits for at start)


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
    """Where this process's servers listen (``0.0.0.0`` in a container)."""
    advertise_host: str | None = None
    """The host name put in the URLs this process announces (e.g. a Kubernetes Service's
    DNS name); None: ``host``. Certificates must name it (keyplane.certs SANs)."""
    seed: int = 1
    certs: Issued | None = None
    ops: Ops | None = None  # the process's metrics and readiness (keyplane.ops)
    emulation: EmulationSettings = field(default_factory=emulation_settings_from_env)
    """How this process runs its emulated links (``KEYPLANE_EMULATION_*``)."""
    km: KmSettings = field(default_factory=km_settings_from_env)
    """Its key managers' settings unless a caller gives its own (``KEYPLANE_KM_*``)."""
    startup: StartupSettings = field(default_factory=StartupSettings)
    bus_url: str | None = None
    """The bus's URL (distributed mode), for link workers that join the bus themselves."""
    bus_security: BusSecurity | None = None
    """The node's bus identity (distributed mode): its link workers join with the same one."""
    km_feeds: KmFeeds | None = None
    """The nodes' ETSI 015 event feeds (one sink on :attr:`events`, added with the first)."""

    def __post_init__(self) -> None:
        if self.events is None:
            self.events = EventStream(self.clock)

    @property
    def stream(self) -> EventStream:
        """The event stream (never None after construction)."""
        assert self.events is not None
        return self.events

    @property
    def http_observer(self) -> RequestObserver | None:
        """What every HTTP server of the process reports requests to (None: nothing)."""
        return self.ops.http if self.ops is not None else None

    def advertised(self, url: str) -> str:
        """``url`` (of a server bound to :attr:`host`) as peers must reach it."""
        if self.advertise_host is None:
            return url
        parts = urlsplit(url)
        host = f"[{self.advertise_host}]" if ":" in self.advertise_host else self.advertise_host
        return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}"))

    def add_km_feed(self, node: str, feed: KmEventFeed) -> Callable[[], None]:
        """Route ``node``'s KM events to ``feed``; returns what removes it again."""
        if self.km_feeds is None:
            self.km_feeds = KmFeeds()
            self.stream.add_sink(self.km_feeds)
        feeds = self.km_feeds.feeds
        feeds[node] = feed

        def remove() -> None:
            if feeds.get(node) is feed:
                del feeds[node]
        return remove

    def ensure_certs(self) -> Issued:
        """Create or load the network's certificates under ``<state>/certs``; seal each
        node's key material under its ``certs/km/<node>.kek`` unless the database's key
        ring already names a KEK file for it (a setting or a mounted secret)."""
        if self.certs is None:
            ensure_private_dir(self.state_dir)
            self.certs = ensure_network_certs(self.topology, self.state_dir / "certs")
            ring = self.db.keyring
            for node, path in self.certs.keks.items():
                if not ring.has_file(node):
                    ring.use_file(node, path)
        return self.certs


def write_endpoints(state_dir: Path, topology: Topology, certs: Issued,
                    endpoints: Mapping[str, Mapping[str, str]],
                    controller: Mapping[str, str] | None = None,
                    operations: Mapping[str, str] | None = None) -> Path:
    """Write ``endpoints.json``: each KM's interface URLs, each SAE's certificate files, the
    controller's certificate and (``controller``) its own URLs, e.g.
    ``{"etsi015_northbound": "https://…"}``, and (``operations``) where the writing
    process serves operators, e.g. ``{"ops": "http://…", "dashboard": "http://…/dashboard/"}``
    (``keyplane status`` reads it).

    Paths are relative to ``state_dir`` so the directory can be moved or mounted elsewhere.
    """
    def rel(p: Path) -> str:
        return os.path.relpath(p, state_dir)

    doc: dict[str, Any] = {
        "topology": topology.name,
        "ca": rel(certs.ca.cert),
        "controller": {"cert": rel(certs.controller.cert), "key": rel(certs.controller.key),
                       **dict(sorted((controller or {}).items()))},
        "kms": {node: dict(sorted(urls.items())) for node, urls in sorted(endpoints.items())},
        "saes": {a.sae_id: {"node": a.node, "owner": a.owner,
                            "cert": rel(certs.saes[a.sae_id].cert),
                            "key": rel(certs.saes[a.sae_id].key)}
                 for a in topology.applications},
    }
    if operations:
        doc["operations"] = dict(sorted(operations.items()))
    return write_private(state_dir / "endpoints.json", json.dumps(doc, indent=2) + "\n")


class ControlRuntime(Service):
    """The control plane of a network, in this process: the five elements (or a subset).

    With the SDN Controller, that element is the node registry and drives the nodes' ETSI 015
    agents through ``driver`` (default: one presenting the controller certificate of
    ``<state>/certs``), and the northbound view is served with mutual TLS on
    ``northbound_port`` (0: a free port; ``None``: not served). Without it, a fallback
    registry here answers node announcements. Either way :attr:`endpoints` holds every
    announced node's URLs and ``endpoints.json`` is rewritten on each announcement (unless
    ``write_endpoints_file`` is false).
    """

    def __init__(self, ctx: RuntimeContext, *, write_endpoints_file: bool = True,
                 elements: list[str] | None = None,
                 settings: ControlSettings | None = None,
                 driver: Etsi015Driver | None = None,
                 northbound_port: int | None = 0) -> None:
        self.ctx = ctx
        self.endpoints: dict[str, dict[str, str]] = {}
        self.controller_endpoints: dict[str, str] = {}
        self.northbound: RestconfServer | None = None
        self._write = write_endpoints_file
        self._northbound_port = northbound_port
        self._subs: list[Any] = []
        self._closed = False
        self._own_driver = False
        if driver is None and (elements is None or "sdn" in elements):
            certs = ctx.ensure_certs()
            driver = Etsi015Driver.from_certs(certs.controller, certs.ca.cert)
            self._own_driver = True
        self.driver = driver
        self.plane = ControlPlane(ctx.topology, ctx.bus, ctx.db, ctx.clock, ctx.stream,
                                  settings, elements=elements,
                                  sdn_driver=driver if elements is None or "sdn" in elements
                                  else None)

    async def start(self) -> None:
        """Start the control-plane elements, the registry and the northbound server."""
        sdn = self.plane.sdn
        if sdn is None:
            # the SDN Controller normally loads the topology; without it, do it here
            await load_topology_into(self.ctx.db, self.ctx.topology)
        else:
            sdn.add_registry_listener(self._registered)
        await self.plane.start()
        if sdn is None:
            self._subs.append(await self.ctx.bus.subscribe(topics.SDN_NODES,
                                                           self._on_announcement))
            return
        if sdn.view is not None and self._northbound_port is not None:
            certs = self.ctx.ensure_certs()
            try:
                self.northbound = await serve_app(
                    LazyApp(functools.partial(create_northbound_app, sdn.view)),
                    self.ctx.host, self._northbound_port,
                    server_cert=certs.controller, ca_file=certs.ca.cert,
                    observer=self.ctx.http_observer)
            except BaseException:
                await self.close()
                raise
            self.controller_endpoints["etsi015_northbound"] = self.ctx.advertised(
                self.northbound.url)
            self.ctx.stream.emit(EventType.element_started, "sdn_northbound",
                                 url=self.northbound.url)
            self._write_file()

    def _registered(self, node: str, endpoints: Mapping[str, str]) -> None:
        self.endpoints[node] = dict(endpoints)
        self._write_file()

    def _write_file(self) -> None:
        if self._write and self.ctx.certs is not None:
            write_endpoints(self.ctx.state_dir, self.ctx.topology, self.ctx.certs,
                            self.endpoints, self.controller_endpoints,
                            self.ctx.ops.urls if self.ctx.ops is not None else None)

    async def _on_announcement(self, topic: str, msg: Message) -> Message | None:
        """The registry of a process without the SDN Controller (URLs only, no driving)."""
        if not isinstance(msg, NodeAnnouncement):
            return None
        known = any(n.id == msg.node for n in self.ctx.topology.nodes)
        if not known:
            return NodeWelcome(node=msg.node, known=False, reason="node not in the topology")
        self.ctx.stream.emit(EventType.topology_changed, "sdn", node=msg.node,
                             change="node_registered", endpoints=dict(msg.endpoints))
        self._registered(msg.node, msg.endpoints)
        return NodeWelcome(node=msg.node, known=True)

    async def stop_driving_nodes(self) -> None:
        """Cancel the SDN Controller's pending ETSI 015 work and take no more (the nodes are
        being shut down with this process); registry and northbound view keep answering."""
        sdn = self.plane.sdn
        if sdn is not None and sdn.southbound is not None:
            await sdn.southbound.close()
        if self._own_driver and self.driver is not None:
            # its kept-alive connections would hold every agent server's close for its
            # whole shutdown timeout (5 s each)
            await self.driver.close()

    async def close(self) -> None:
        """Stop answering, serving and driving (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await unsubscribe_all(self._subs)
        if self.northbound is not None:
            await self.northbound.close()
        await self.plane.close()
        if self._own_driver and self.driver is not None:
            await self.driver.close()


async def start_nodes(nodes: Iterable[NodeRuntime], concurrency: int) -> None:
    """Start ``nodes``, at most ``concurrency`` at once (each start opens connections and
    reads the store: unbounded, a large network exhausts the database pool)."""
    gate = asyncio.Semaphore(concurrency)

    async def start_node(n: NodeRuntime) -> None:
        async with gate:
            await n.start()

    await asyncio.gather(*(start_node(n) for n in nodes))


class NodeRuntime(Service):
    """One node of the network, in this process.

    Its ETSI 014/004 server listens on ``etsi014_port`` and its ETSI 015 agent on
    ``etsi015_port`` at ``ctx.host`` (0: the topology's ``ports``, else free ports; pinned
    for a Kubernetes Service) and announces the URLs under ``ctx.advertise_host``.
    """

    def __init__(self, ctx: RuntimeContext, node_id: str, *,
                 run_links: bool = True, km_settings: KmSettings | None = None,
                 process_settings: ProcessSettings | None = None, etsi014_port: int = 0,
                 etsi015_port: int = 0) -> None:
        ctx.topology.node(node_id)  # KeyError on an unknown node
        self.ctx = ctx
        self.node_id = node_id
        self.km = KeyManager(node_id, ctx.topology, ctx.bus, ctx.db, ctx.clock, ctx.stream,
                             km_settings or ctx.km)
        self.sources: KeySources | None = None
        self._run_links = run_links
        self._ports = (etsi014_port, etsi015_port)  # 0: a free port each
        self.endpoints: dict[str, str] = {}
        self._process = process_settings or ProcessSettings()
        self._closed = False
        self._stack = contextlib.AsyncExitStack()
        self.agent: SdnAgent | None = None
        self.entanglement: NodeEntanglementAgent | None = None  # its applications' demands

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
        ports = ctx.topology.node(self.node_id).ports  # fixed ones, or 0: a free one
        km_cert = certs.kms[self.node_id]  # the KM's certificate also signs its ML-KEM hops
        self.km.set_identity(KmIdentity.load(self.node_id, km_cert.cert, km_cert.key,
                                             certs.ca.cert))
        if self._run_links:
            # distributed mode: this node runs its own ends of its links (emulated ends talk
            # to the neighbours' processes over the bus; device ends to their devices)
            sinks = {(self.node_id, link.link_id): self.km.link_key_sink(link.link_id)
                     for link in ctx.topology.links_of(self.node_id)}
            self.sources = KeySources(ctx.topology, sinks, clock=ctx.clock, bus=ctx.bus,
                                      events=ctx.stream, seed=ctx.seed, node=self.node_id,
                                      emulation=ctx.emulation, credentials=certs.kms,
                                      ca=certs.ca.cert, bus_url=ctx.bus_url,
                                      bus_security=ctx.bus_security)
            self._stack.push_async_callback(self.sources.close)
            await self.sources.prepare()  # the link worker boots while the KM starts
        await self._stack.enter_async_context(self.km)
        # key-store levels and per-session figures for Monitoring, ETSI 015 and operators
        await self._stack.enter_async_context(
            KmTelemetryPublisher(self.km, ctx.bus, ctx.clock, ctx.stream))
        if self.sources is not None:
            await self.sources.start()
        settings = ApiSettings.from_topology(
            ctx.topology, self.node_id, limits=Etsi014Limits.from_km_settings(self.km.settings),
            supported_extensions=frozenset({PROVENANCE_EXTENSION}))
        ent = ctx.topology.entanglement
        entanglement = None
        if ent is not None and self.node_id in ent.memories:  # its applications may ask
            entanglement = self.entanglement = NodeEntanglementAgent(
                self.node_id, ctx.bus, {a.sae_id: a.node for a in ctx.topology.applications})
            await self._stack.enter_async_context(entanglement)
        app = LazyApp(functools.partial(create_km_app, self.km, kme_id=self.node_id,
                                        settings=settings, entanglement=entanglement))
        # one server context for both of the node's servers (same certificate and CA)
        tls = server_ssl_context(certs.kms[self.node_id], certs.ca.cert)
        api = HttpServer(app, host=ctx.host, port=self._ports[0] or ports.api or 0,
                         ssl_context=tls,
                         observer=ctx.http_observer, interface=km_interface,
                         name=f"km-api-{self.node_id}")
        await api.start()
        self._stack.push_async_callback(api.close)
        self.endpoints["etsi014"] = ctx.advertised(api.url)
        self.endpoints["etsi004"] = ctx.advertised(api.url) + ETSI004_PREFIX
        if entanglement is not None:
            self.endpoints["entanglement"] = ctx.advertised(api.url) + "/entanglement"
        self.agent = SdnAgent(self.node_id, ctx.topology, ctx.bus, ctx.clock, ctx.stream,
                              settings=AgentSettings.from_config(ctx.topology.etsi015))
        # ETSI 015 state from this node's KM: app_statistics bits, key provenance per hop
        # and the sessions' hybrid policies (keyplane-qkd-provenance)
        self._stack.callback(ctx.add_km_feed(self.node_id, KmEventFeed(self.agent)))
        await self._stack.enter_async_context(self.agent)
        # the RESTCONF app is built on its first request, as the KM's (LazyApp)
        server = RestconfServer(LazyApp(functools.partial(create_agent_app, self.agent)),
                                ctx.host, self._ports[1] or ports.etsi015 or 0,
                                ssl_context=tls, observer=ctx.http_observer)
        await server.start()
        self._stack.push_async_callback(server.close)
        self.endpoints["etsi015"] = ctx.advertised(server.url)
        tfs = ctx.topology.etsi015.teraflowsdn
        if tfs is not None and (listener := await serve_teraflowsdn(
                self.agent, tfs, server_cert=certs.kms[self.node_id], ca_file=certs.ca.cert,
                observer=ctx.http_observer)):
            self._stack.push_async_callback(listener.close)
            self.endpoints["etsi015_teraflowsdn"] = ctx.advertised(listener.url)
        if ctx.ops is not None and "ops" in ctx.ops.urls:  # where its /metrics are scraped
            self.endpoints["ops"] = ctx.ops.urls["ops"]

    async def _announce(self) -> None:
        """Announce until the control plane answers (it may start after us), backing off
        between attempts, for at most ``announce_timeout_s`` (ProcessSettings)."""
        loop = asyncio.get_running_loop()
        st = self._process
        deadline = loop.time() + st.announce_timeout_s
        msg = NodeAnnouncement(node=self.node_id, endpoints=self.endpoints, pid=os.getpid())
        failures = 0
        while True:
            try:
                reply = await self.ctx.bus.request(
                    topics.SDN_NODES, msg, timeout_s=min(st.announce_request_timeout_s,
                                                         max(0.001, deadline - loop.time())))
            except BusUnavailable:
                raise
            except BusError as exc:
                if loop.time() >= deadline:
                    raise BusError(f"node {self.node_id}: the control plane did not answer "
                                   f"its announcement within {st.announce_timeout_s:g} s "
                                   f"({exc})") from exc
                if failures == 0:
                    logger.info("node %s: control plane not answering yet (%s); retrying",
                                self.node_id, exc)
                # the control plane may be starting: back off
                await asyncio.sleep(min(max(0.0, deadline - loop.time()),
                                        st.backoff_s(failures, random.random())))
                failures += 1
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


class Embedded(Service):
    """Every element of a network in one process: control plane plus every node.

    The links' key sources (:class:`~keyplane.keymanager.sources.KeySources`) feed every
    KM's link key stores: emulated links in worker processes (both ends of each link in one
    worker), device links from their ETSI 014 devices.
    """

    def __init__(self, ctx: RuntimeContext, *, control_settings: ControlSettings | None = None,
                 km_settings: KmSettings | None = None) -> None:
        self.ctx = ctx
        self._control_settings = control_settings
        self.control: ControlRuntime | None = None  # built by start(), after the links
        self.nodes = {n.id: NodeRuntime(ctx, n.id, run_links=False, km_settings=km_settings)
                      for n in ctx.topology.nodes}
        sinks = {(node_id, link.link_id): rt.km.link_key_sink(link.link_id)
                 for node_id, rt in self.nodes.items()
                 for link in ctx.topology.links_of(node_id)}
        # device links need the KMs' certificates now; emulated ones do not (start())
        certs = ctx.ensure_certs() if KeySources.device_links(ctx.topology) else None
        self.sources = KeySources(ctx.topology, sinks, clock=ctx.clock, bus=ctx.bus,
                                  events=ctx.stream, seed=ctx.seed, emulation=ctx.emulation,
                                  credentials=certs.kms if certs is not None else None,
                                  ca=certs.ca.cert if certs is not None else None)

    def km(self, node_id: str) -> KeyManager:
        """The key manager of ``node_id``."""
        return self.nodes[node_id].km

    async def start(self) -> None:
        """Launch the link workers, then start the control plane, every node and the links;
        write endpoints.json.

        The workers go first, before the certificates are made: their interpreter, imports
        and first blocks are what the first key waits for on a busy machine, and they run
        while the rest starts (blocks wait for the KMs, LinkWorkerPool.prepare).
        """
        try:
            await self.sources.prepare()
            certs = self.ctx.ensure_certs()
            self.control = ControlRuntime(self.ctx, write_endpoints_file=False,
                                          settings=self._control_settings)
            await self.control.start()
        except BaseException:
            await self.sources.close()
            raise
        try:
            await start_nodes(self.nodes.values(), self.ctx.startup.node_start_concurrency)
            await self.sources.start()
        except BaseException:
            await self.close()
            raise
        write_endpoints(self.ctx.state_dir, self.ctx.topology, certs, self.control.endpoints,
                        self.control.controller_endpoints,
                        self.ctx.ops.urls if self.ctx.ops is not None else None)
        settle()  # what the start built lives as long as the process (keyplane.heap)

    async def close(self) -> None:
        """Stop the links, the nodes, then the control plane (idempotent).

        The SDN Controller stops driving the nodes first: the sessions the closing KMs end
        would otherwise send ETSI 015 deletions to agents that are going away.
        """
        if self.control is not None:
            await self.control.stop_driving_nodes()
        await self.sources.close()
        await asyncio.gather(*(n.close() for n in self.nodes.values()))
        if self.control is not None:
            await self.control.close()
