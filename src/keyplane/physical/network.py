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
        nodes: instead of ``node``, several nodes of one process: their ends (a link
            between two of them runs both ends here, over in-process channels).
        buses: with ``nodes``: node id -> its bus; a link's runner uses its local Alice
            end's node's (else its Bob end's); default ``bus``.
        link_ids: run only these links (default: every link; the others have other key
            sources, see :mod:`keyplane.keymanager.sources`).
        runner_options: extra keyword arguments for every :class:`LinkRunner`.

    Raises:
        ConfigError: a local end has no sink, or ``node`` (one of ``nodes``) is unknown.
    """

    def __init__(self, topology: Topology, *, clock: Clock,
                 sinks: Mapping[tuple[str, str], LinkKeySink], seed: int = 0,
                 bus: Bus | None = None, events: EventStream | None = None,
                 node: str | None = None, link_ids: Collection[str] | None = None,
                 nodes: Collection[str] | None = None,
                 buses: Mapping[str, Bus] | None = None,
                 **runner_options: object) -> None:
        local = set(nodes) if nodes is not None else {node} if node is not None else None
        unknown = sorted((local or set()) - {n.id for n in topology.nodes})
        if unknown:
            raise ConfigError(f"unknown node {unknown[0]!r}")
        self.topology = topology
        self.node = node
        self.runners: dict[str, LinkRunner] = {}
        chosen = None if link_ids is None else set(link_ids)
        for link in topology.links:
            if chosen is not None and link.link_id not in chosen:
                continue
            a, b = link.endpoints
            roles: tuple[tuple[End, str], ...] = (("alice", a), ("bob", b))
            ends = tuple(end for end, owner in roles if local is None or owner in local)
            if not ends:
                continue
            runs_as = a if "alice" in ends else b
            lid = link.link_id
            alice_sink = sinks.get((a, lid)) if "alice" in ends else None
            bob_sink = sinks.get((b, lid)) if "bob" in ends else None
            for end, sink, owner in (("alice", alice_sink, a), ("bob", bob_sink, b)):
                if end in ends and sink is None:
                    raise ConfigError(f"no key sink for node {owner!r} on link {lid!r}")
            self.runners[lid] = LinkRunner(link, clock=clock, seed=seed, alice_sink=alice_sink,
                                           bob_sink=bob_sink,
                                           bus=(buses or {}).get(runs_as, bus), events=events,
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

