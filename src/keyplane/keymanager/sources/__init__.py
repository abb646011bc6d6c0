"""The KM's southbound interface: where each link's key comes from (DESIGN.md §3).

Whatever the source, a KM takes link key the same way: blocks of key with ids both ends
agree on, stored in the link's :class:`~keyplane.keymanager.keystore.LinkKeyStore` through
its sink method ``put_block`` (``KeyManager.link_key_sink``), acknowledged between the two
KMs with ``LinkBlocksHeld`` as for any block, and paused while the store is full
(``has_room``). A topology link names its source (``QuantumLink.source``):

* ``emulated`` (default) — keyplane's QKD modules, in worker processes
  (:class:`~keyplane.physical.pool.LinkWorkerPool`) beside the KMs, or on the KM's event
  loop with ``EmulationSettings.mode="inprocess"`` (virtual-clock tests). In a node
  process (distributed mode) the node's own ends run in its worker, which joins the
  network's bus itself and talks to the peer's ends there (in-process when the process
  has no bus URL, e.g. an in-memory bus in tests). A process of several nodes
  (keyplane.nodegroup) has one pool for all of their ends.
* ``etsi014`` — a QKD device reached over ETSI GS QKD 014 (real hardware, or
  ``keyplane device``): :class:`~keyplane.keymanager.sources.etsi014.Etsi014LinkEnd`.

:class:`KeySources` builds and runs every source of one process.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from keyplane.bus import Bus, BusSecurity, Handler, Message, Subscription, unsubscribe_all
from keyplane.certs import CertPaths
from keyplane.clock import Clock
from keyplane.config import EmulatedSource, Etsi014Source, QuantumLink, Topology
from keyplane.events import EventStream
from keyplane.keymanager.sources.etsi014 import Etsi014LinkEnd
from keyplane.keymanager.sources.wire import DeviceKeyIds, DeviceKeyIdsAck, keysource_topic
from keyplane.lifecycle import Service
from keyplane.physical.pool import EmulationSettings, LinkWorkerPool
from keyplane.physical.sink import LinkKeySink

if TYPE_CHECKING:
    # in-process links only (virtual-clock tests, tools): a process whose links run in
    # workers never loads the QKD stack (numpy, scipy.fft, Cascade) for nothing
    from keyplane.physical.network import PhysicalNetwork

__all__ = ["DeviceKeyIds", "DeviceKeyIdsAck", "Etsi014LinkEnd", "KeySources"]

logger = logging.getLogger(__name__)


class KeySources(Service):
    """Every key source of one process: its emulated links and its device link ends.

    Args:
        topology: the network.
        sinks: ``(node id, link id) -> sink`` for every local end.
        clock, bus, events: the process's.
        seed: run seed of the emulated links.
        emulation: how emulated links run.
        node: the one node of this process (distributed mode); None: every node
            (embedded mode: both ends of every link are local).
        credentials: ``node -> certificate`` the KMs present to their devices.
        ca: the CA file that signed the devices' certificates (by default).
        bus_url: with ``node``: the network bus's URL, which the node's link workers join
            (without it, a node's emulated ends run in this process).
        bus_security: the node's bus identity, which its link workers join with.
        nodes: instead of ``node``, the several nodes of one process (``keyplane node
            --id a,b``): their ends, in one worker pool (a link between two of them runs
            both ends in one worker).
        buses, bus_securities: with ``nodes``: each node's bus and identity; each end
            talks and each worker joins as its own node (default: ``bus``, no identity).
    """

    def __init__(self, topology: Topology, sinks: Mapping[tuple[str, str], LinkKeySink], *,
                 clock: Clock, bus: Bus, events: EventStream, seed: int = 0,
                 emulation: EmulationSettings | None = None, node: str | None = None,
                 credentials: Mapping[str, CertPaths] | None = None,
                 ca: Path | None = None, bus_url: str | None = None,
                 bus_security: BusSecurity | None = None,
                 nodes: Collection[str] | None = None, buses: Mapping[str, Bus] | None = None,
                 bus_securities: Mapping[str, BusSecurity | None] | None = None) -> None:
        self.topology = topology
        self.bus = bus
        self.buses = dict(buses or {})
        self.emulation = emulation or EmulationSettings()
        mine = set(nodes) if nodes is not None else {node} if node is not None else None
        local = [link for link in topology.links
                 if mine is None or mine.intersection(link.endpoints)]
        emulated = [link.link_id for link in local if isinstance(link.source, EmulatedSource)]
        self.emulated: PhysicalNetwork | LinkWorkerPool | None = None
        if emulated:
            workers = self.emulation.mode == "workers" and (
                mine is None or (bus_url is not None and not bus_url.startswith("memory:")))
            if workers:
                self.emulated = LinkWorkerPool(topology, clock=clock, sinks=sinks, seed=seed,
                                               bus=bus, events=events, settings=self.emulation,
                                               link_ids=emulated, node=node, bus_url=bus_url,
                                               bus_security=bus_security, nodes=nodes,
                                               bus_securities=bus_securities)
            else:
                from keyplane.physical.network import PhysicalNetwork

                self.emulated = PhysicalNetwork(
                    topology, clock=clock, sinks=sinks, seed=seed, bus=bus, events=events,
                    node=node, link_ids=emulated, nodes=nodes, buses=self.buses,
                    time_scale=self.emulation.time_scale,
                    telemetry_interval_s=self.emulation.telemetry_interval_s)
        self.device_ends: dict[tuple[str, str], Etsi014LinkEnd] = {}
        for link in local:
            if not isinstance(link.source, Etsi014Source):
                continue
            for end in link.endpoints:
                if mine is not None and end not in mine:
                    continue
                if credentials is None or end not in credentials or ca is None:
                    raise ValueError(f"link {link.link_id}: no certificate for {end}'s KM")
                self.device_ends[(end, link.link_id)] = Etsi014LinkEnd(
                    link, end, sinks[(end, link.link_id)], self.buses.get(end, bus), clock,
                    credentials=credentials[end], ca=ca, events=events,
                    telemetry_interval_s=self.emulation.telemetry_interval_s)
        self._subs: list[Subscription] = []

    @staticmethod
    def device_links(topology: Topology) -> list[QuantumLink]:
        """The links whose key comes from an ETSI 014 device."""
        return [link for link in topology.links if isinstance(link.source, Etsi014Source)]

    async def prepare(self) -> None:
        """Launch the emulation's worker processes ahead of :meth:`start` (see
        :meth:`~keyplane.physical.pool.LinkWorkerPool.prepare`)."""
        if isinstance(self.emulated, LinkWorkerPool):
            await self.emulated.prepare()

    async def start(self) -> None:
        """Subscribe the device ends' hand-over topics, then start every source.

        On failure, whatever started is stopped again.
        """
        try:
            for node in sorted({n for n, _ in self.device_ends}):
                self._subs.append(await self.buses.get(node, self.bus).subscribe(
                    keysource_topic(node), self._handler(node)))
            for end in self.device_ends.values():
                await end.start()
            if self.emulated is not None:
                await self.emulated.start()
        except BaseException:
            await self.close()
            raise

    def _handler(self, node: str) -> Handler:
        async def on_key_ids(topic: str, msg: Message) -> Message | None:
            if not isinstance(msg, DeviceKeyIds):
                return None
            end = self.device_ends.get((node, msg.link_id))
            if end is None:
                return DeviceKeyIdsAck(link_id=msg.link_id, block_id=msg.block_id, ok=False,
                                       reason=f"{node} has no device end on {msg.link_id}")
            return await end.on_key_ids(msg)
        return on_key_ids

    async def close(self) -> None:
        """Stop every source (idempotent)."""
        await unsubscribe_all(self._subs)
        self._subs.clear()
        for end in self.device_ends.values():
            await end.close()
        if self.emulated is not None:  # also when only prepared: its workers exit
            await self.emulated.close()
