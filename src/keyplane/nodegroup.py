"""Several nodes in one process: ``keyplane node --id km1,km2,...`` (issue 15.4).

Why: on one host a process per node repeats, per node, an interpreter, the imports, a link
worker and their connections: about 250 MB and 2.6 s of CPU to start and 2 % of a core
idle per node (docs/benchmarks.md, "Distributed at scale"). A :class:`NodeGroup` runs
several :class:`~keyplane.runtime.NodeRuntime` on one event loop, with one database pool,
one clock, one event stream, one operations server and one link-worker pool
(:class:`~keyplane.physical.pool.LinkWorkerPool`) for all of the process's links; a link
whose two ends are both here runs both of them in one worker, over in-process channels.

What stays per node, as with a process per node: its identity on the bus (its own
connection, TLS client certificate and signing key; nats-server grants each connection only
its own node's topics and every receiver checks its signatures, docs/bus.md), its ETSI
014/004 and ETSI 015 servers with its own certificate, its key-encryption key and store
rows, its events file (``events-<node>.jsonl``). Nodes of one process still talk to each
other over the bus (relay, key-source hand-overs), each as itself.

The trade-off: the nodes share a fate. A crash, ``kill -9`` or OOM kill of the process
stops all of them, and its restart (systemd, Kubernetes, ``LocalCluster.start``) brings all
of them back, each recovering as a restarted node does (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence

from keyplane.bus import Bus, BusSecurity
from keyplane.config import Topology
from keyplane.errors import ConfigError
from keyplane.events import Event, EventSink
from keyplane.keymanager import KmSettings
from keyplane.keymanager.sources import KeySources
from keyplane.lifecycle import ProcessSettings, Service
from keyplane.runtime import KmFeeds, NodeRuntime, RuntimeContext, start_nodes

__all__ = ["NodeGroup", "NodeRoutedSink", "parse_node_ids"]


def parse_node_ids(text: str, topology: Topology) -> list[str]:
    """The node ids of a comma-separated ``--id`` list, in their order.

    Raises:
        ConfigError: an empty item, an id not in ``topology``, or an id given twice.
    """
    ids = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not i for i in ids):
        raise ConfigError(f"--id {text!r}: expected node ids separated by commas, "
                          "with none empty")
    known = {n.id for n in topology.nodes}
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise ConfigError(f"--id: {', '.join(repr(i) for i in unknown)} not in the topology "
                          f"{topology.name!r} (nodes: {', '.join(sorted(known))})")
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise ConfigError(f"--id: {', '.join(repr(i) for i in twice)} given more than once")
    return ids


class NodeRoutedSink:
    """An event sink that hands each event to its node's sink (``default`` for an event of
    no node here): each node's events file and bus publications stay its own."""

    def __init__(self, sinks: Mapping[str, EventSink], default: EventSink) -> None:
        self.sinks = dict(sinks)
        self.default = default

    def write(self, event: Event) -> None:
        """Pass ``event`` on (the EventSink protocol)."""
        node = event.node
        (self.sinks.get(node, self.default) if node is not None else self.default).write(event)

    def close(self) -> None:
        """Close every node's sink (the EventSink protocol)."""
        for sink in {id(s): s for s in [*self.sinks.values(), self.default]}.values():
            sink.close()


class NodeGroup(Service):
    """The nodes ``node_ids`` of ``ctx.topology`` in this process (module docstring).

    Args:
        ctx: what the nodes share (topology, database, clock, events, operations, state,
            bus URL); its ``bus`` and ``bus_security`` are the first node's.
        node_ids: the nodes, at least one, each once.
        buses: node id -> that node's own bus connection.
        securities: node id -> the identity ``buses[node]`` was opened with (its link ends
            join the bus with it; None or absent: the in-memory or insecure bus).
        process_settings: the announcements' bounds (as for one node per process).
        km_settings: every node's key manager settings.

    Raises:
        ConfigError: no node, a node twice, an unknown node, or a node without a bus.
    """

    def __init__(self, ctx: RuntimeContext, node_ids: Sequence[str],
                 buses: Mapping[str, Bus], *,
                 securities: Mapping[str, BusSecurity | None] | None = None,
                 process_settings: ProcessSettings | None = None,
                 km_settings: KmSettings | None = None) -> None:
        parse_node_ids(",".join(node_ids), ctx.topology)
        missing = [n for n in node_ids if n not in buses]
        if missing:
            raise ConfigError(f"no bus connection for node(s) {', '.join(missing)}")
        self.ctx = ctx
        self.node_ids = list(node_ids)
        self.buses = {n: buses[n] for n in node_ids}
        self.securities = {n: (securities or {}).get(n) for n in node_ids}
        if ctx.km_feeds is None:  # one ETSI 015 feed router for every node's KM events
            ctx.km_feeds = KmFeeds()
            ctx.stream.add_sink(ctx.km_feeds)
        self.contexts = {n: dataclasses.replace(ctx, bus=self.buses[n],
                                                bus_security=self.securities[n])
                         for n in node_ids}
        self.nodes = {n: NodeRuntime(self.contexts[n], n, run_links=False,
                                     km_settings=km_settings,
                                     process_settings=process_settings)
                      for n in node_ids}
        self.sources: KeySources | None = None  # built by start(), with the certificates
        self._closed = False

    @property
    def links(self) -> list[str]:
        """The links with at least one end here, each once."""
        here = set(self.node_ids)
        return [lk.link_id for lk in self.ctx.topology.links if here.intersection(lk.endpoints)]

    def link_buses(self) -> dict[str, Bus]:
        """Link id -> the connection its telemetry is read on (its first end's node here)."""
        return {lk.link_id: self.buses[next(e for e in lk.endpoints if e in self.buses)]
                for lk in self.ctx.topology.links if set(lk.endpoints) & set(self.buses)}

    async def start(self) -> None:
        """Launch the link workers, start every node (at most
        ``StartupSettings.node_start_concurrency`` at once), then let the links' blocks in.

        On failure whatever started is stopped again.
        """
        ctx = self.ctx
        certs = ctx.ensure_certs()
        for c in self.contexts.values():
            c.certs = certs
        sinks = {(n, link.link_id): rt.km.link_key_sink(link.link_id)
                 for n, rt in self.nodes.items() for link in ctx.topology.links_of(n)}
        self.sources = KeySources(ctx.topology, sinks, clock=ctx.clock, bus=ctx.bus,
                                  events=ctx.stream, seed=ctx.seed, emulation=ctx.emulation,
                                  nodes=self.node_ids, credentials=certs.kms,
                                  ca=certs.ca.cert, bus_url=ctx.bus_url, buses=self.buses,
                                  bus_securities=self.securities)
        try:
            await self.sources.prepare()  # the workers boot while the KMs start
            await start_nodes(self.nodes.values(), ctx.startup.node_start_concurrency)
            await self.sources.start()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop the links, then every node (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self.sources is not None:
            await self.sources.close()
        await asyncio.gather(*(n.close() for n in self.nodes.values()))
