"""All the links of a topology (or only one node's ends of them), as one object.

Embedded mode builds :class:`PhysicalNetwork` without ``node``: both ends of every link
run in this process over in-process channels. Distributed mode passes ``node``: only the
ends that node owns run here, over the bus, and the peer node's process runs the other
ends with the same topology and seed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from keyplane.bus import Bus
from keyplane.clock import Clock
from keyplane.config import Topology
from keyplane.errors import ConfigError
from keyplane.events import EventStream
from keyplane.lifecycle import Service
from keyplane.physical.frames import End
from keyplane.physical.runner import LinkRunner
from keyplane.physical.sink import LinkKeySink

__all__ = ["PhysicalNetwork"]


class PhysicalNetwork(Service):
    """Builds and runs a :class:`LinkRunner` per link of ``topology``.

    Args:
        topology: the network.
        clock: the one clock.
        sinks: ``(node id, link id) -> sink`` for every local end.
        seed: run seed (the same in every process of a distributed run).
        bus: telemetry, link control and (distributed) the channels.
        events: the event stream.
        node: run only this node's ends (distributed mode); ``None`` runs every end.
        link_ids: run only these links (default: every link; the others have other key
            sources, see :mod:`keyplane.keymanager.sources`).
        runner_options: extra keyword arguments for every :class:`LinkRunner`.

    Raises:
        ConfigError: a local end has no sink, or ``node`` is unknown.
    """

    def __init__(self, topology: Topology, *, clock: Clock,
                 sinks: Mapping[tuple[str, str], LinkKeySink], seed: int = 0,
                 bus: Bus | None = None, events: EventStream | None = None,
                 node: str | None = None, link_ids: Collection[str] | None = None,
                 **runner_options: object) -> None:
        if node is not None and node not in {n.id for n in topology.nodes}:
            raise ConfigError(f"unknown node {node!r}")
        self.topology = topology
        self.node = node
        self.runners: dict[str, LinkRunner] = {}
        chosen = None if link_ids is None else set(link_ids)
        for link in topology.links:
            if chosen is not None and link.link_id not in chosen:
                continue
            a, b = link.endpoints
            ends: tuple[End, ...]
            if node is None:
                ends = ("alice", "bob")
            elif node == a:
                ends = ("alice",)
            elif node == b:
                ends = ("bob",)
            else:
                continue
            lid = link.link_id
            alice_sink = sinks.get((a, lid)) if "alice" in ends else None
            bob_sink = sinks.get((b, lid)) if "bob" in ends else None
            for end, sink, owner in (("alice", alice_sink, a), ("bob", bob_sink, b)):
                if end in ends and sink is None:
                    raise ConfigError(f"no key sink for node {owner!r} on link {lid!r}")
            self.runners[lid] = LinkRunner(link, clock=clock, seed=seed, alice_sink=alice_sink,
                                           bob_sink=bob_sink, bus=bus, events=events,
                                           local_ends=ends, **runner_options)  # type: ignore[arg-type]
        self._started = False

    def runner(self, link_id: str) -> LinkRunner:
        """The runner of ``link_id`` (KeyError if not local)."""
        return self.runners[link_id]

    async def start(self) -> None:
        """Start every local link; idempotent."""
        if self._started:
            return
        self._started = True
        for r in self.runners.values():
            await r.start()

    async def close(self) -> None:
        """Stop every local link; idempotent."""
        for r in self.runners.values():
            await r.close()

