"""TEST SUPPORT ONLY: a minimal control-plane counterpart for key manager tests.

It answers on the bus exactly where Access Control and Admission Control would
(:mod:`keyplane.messages` flows 1-4), with none of their policy: every identity in
``identities`` is accepted for its SAE, paths are shortest paths over the topology's links,
and the token bucket, priority and idle timeout come from the constructor (or per SAE).
It is not product code; the real elements live in ``keyplane.control``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import networkx as nx

from keyplane.bus import Bus, Message, Subscription, topics
from keyplane.config import Topology
from keyplane.errors import BusError
from keyplane.messages import (
    AuthRequest,
    AuthResponse,
    ConfigAck,
    DeleteConfirm,
    HopRole,
    KeepAlive,
    OpenAck,
    SessionClose,
    SessionConfig,
    SessionDelete,
    SessionOpenRequest,
)
from tests.support.deadlines import DEADLINE_S

__all__ = ["FakeControlPlane", "FakeSession"]


@dataclass
class FakeSession:
    """What the fake Admission Control knows about one session."""

    session_id: str
    source_sae: str
    destination_sae: str
    opened: set[str] = field(default_factory=set)  # nodes whose KM asked
    path: list[str] = field(default_factory=list)
    epoch: int = 0
    configured: bool = False
    closed: list[SessionClose] = field(default_factory=list)
    confirms: list[DeleteConfirm] = field(default_factory=list)


class FakeControlPlane:
    """Answers AuthRequest / SessionOpenRequest and configures the KMs of a path.

    Args:
        bus: the bus the KMs use.
        topology: nodes, links and applications.
        bucket_size_bits, token_rate_bps, idle_timeout_s, key_chunk_size: pushed in every
            SessionConfig.
        priority_of: SLA priority per source SAE (default 0).
        refuse: SAE ids whose sessions Admission Control refuses (SessionDelete refused=True).
        deny: identities Access Control refuses.
        hold_config: when True, a complete session is *not* configured until
            :meth:`configure` is called (to test waiting states).
        hybrid_policy: pushed in every SessionConfig (``SessionConfig.hybrid_policy``).
        answer_access: False leaves Access Control to the real element
            (:class:`keyplane.control.access.AccessControl` on the same bus).
    """

    def __init__(self, bus: Bus, topology: Topology, *, bucket_size_bits: int = 1 << 30,
                 token_rate_bps: float = 1e12, idle_timeout_s: float = 60.0,
                 key_chunk_size: int = 32, priority_of: dict[str, int] | None = None,
                 refuse: set[str] | None = None, deny: set[str] | None = None,
                 hold_config: bool = False, hybrid_policy: str = "qkd-only",
                 answer_access: bool = True) -> None:
        self.bus = bus
        self.topology = topology
        self.bucket_size_bits = bucket_size_bits
        self.token_rate_bps = token_rate_bps
        self.idle_timeout_s = idle_timeout_s
        self.key_chunk_size = key_chunk_size
        self.priority_of = priority_of or {}
        self.refuse = refuse or set()
        self.deny = deny or set()
        self.hold_config = hold_config
        self.hybrid_policy = hybrid_policy
        self.answer_access = answer_access
        self.sessions: dict[str, FakeSession] = {}
        self.keepalives: list[KeepAlive] = []
        self.closes: list[SessionClose] = []
        self.auth_requests: list[AuthRequest] = []
        self.graph = nx.Graph()
        for link in topology.links:
            self.graph.add_edge(*link.endpoints)
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> FakeControlPlane:
        """Subscribe to the Access and Admission Control topics."""
        if self.answer_access:
            self._subs.append(await self.bus.subscribe(topics.ACCESS, self._on_access))
        self._subs.append(await self.bus.subscribe(topics.ADMISSION, self._on_admission))
        return self

    async def close(self) -> None:
        """Unsubscribe and stop background pushes."""
        for s in self._subs:
            await s.unsubscribe()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- Access Control ------------------------------------------------------------
    async def _on_access(self, topic: str, msg: Message) -> Message | None:
        if not isinstance(msg, AuthRequest):
            return None
        self.auth_requests.append(msg)
        if msg.identity in self.deny:
            return AuthResponse(ok=False, reason="identity not allowed")
        return AuthResponse(ok=True, user_id=f"user-of-{msg.sae_id}")

    # ---- Admission Control ---------------------------------------------------------
    def node_of(self, sae: str) -> str:
        return self.topology.application(sae).node

    async def _on_admission(self, topic: str, msg: Message) -> Message | None:
        if isinstance(msg, KeepAlive):
            self.keepalives.append(msg)
            return None
        if isinstance(msg, SessionClose):
            self.closes.append(msg)
            fs = self.sessions.get(msg.session_id)
            if fs is not None:
                fs.closed.append(msg)
                self._bg(self.delete(msg.session_id, reason=f"closed by {msg.node}",
                                     skip={msg.node}))
            return None
        if not isinstance(msg, SessionOpenRequest):
            return None
        fs = self.sessions.get(msg.session_id)
        if fs is None:
            # the opener is the source of the path (it asked first)
            fs = FakeSession(msg.session_id, msg.source_sae, msg.destination_sae)
            self.sessions[msg.session_id] = fs
        fs.opened.add(msg.node)
        if msg.source_sae in self.refuse:
            self._bg(self._send_refusal(msg))
            return OpenAck(session_id=msg.session_id)
        complete = msg.interface == "etsi014" or {self.node_of(fs.source_sae),
                                                  self.node_of(fs.destination_sae)} <= fs.opened
        if complete and not self.hold_config and not fs.configured:
            fs.configured = True
            fs.path = nx.shortest_path(self.graph, self.node_of(fs.source_sae),
                                       self.node_of(fs.destination_sae))
            self._bg(self.push(fs))
        return OpenAck(session_id=msg.session_id)

    def _bg(self, coro) -> None:  # type: ignore[no-untyped-def]
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _send_refusal(self, msg: SessionOpenRequest) -> None:
        await self.bus.request(topics.km_config(msg.node), SessionDelete(
            session_id=msg.session_id, node=msg.node, refused=True,
            reason="requested QoS exceeds the SLA"), timeout_s=DEADLINE_S)

    def configs(self, fs: FakeSession, path: list[str], epoch: int) -> list[SessionConfig]:
        """The per-hop configurations of ``path``."""
        out = []
        for i, node in enumerate(path):
            role = (HopRole.source if i == 0 else
                    HopRole.destination if i == len(path) - 1 else HopRole.intermediate)
            local = (fs.source_sae if role is HopRole.source else
                     fs.destination_sae if role is HopRole.destination else None)
            out.append(SessionConfig(
                session_id=fs.session_id, node=node, epoch=epoch, role=role,
                prev_km=path[i - 1] if i > 0 else None,
                next_km=path[i + 1] if i < len(path) - 1 else None,
                source_sae=fs.source_sae, destination_sae=fs.destination_sae, local_sae=local,
                priority=self.priority_of.get(fs.source_sae, 0),
                bucket_size_bits=self.bucket_size_bits, token_rate_bps=self.token_rate_bps,
                idle_timeout_s=self.idle_timeout_s, key_chunk_size=self.key_chunk_size,
                hybrid_policy=self.hybrid_policy))
        return out

    async def push(self, fs: FakeSession, path: list[str] | None = None) -> list[ConfigAck]:
        """Configure every KM of the path (intermediates first, endpoints last)."""
        path = path or fs.path
        cfgs = self.configs(fs, path, fs.epoch)
        order = [*cfgs[1:-1], cfgs[-1], cfgs[0]]
        acks = []
        for cfg in order:
            reply = await self.bus.request(topics.km_config(cfg.node), cfg, timeout_s=DEADLINE_S)
            assert isinstance(reply, ConfigAck)
            acks.append(reply)
        return acks

    async def configure(self, session_id: str) -> list[ConfigAck]:
        """Configure a held session now (``hold_config=True``)."""
        fs = self.sessions[session_id]
        fs.configured = True
        fs.path = nx.shortest_path(self.graph, self.node_of(fs.source_sae),
                                   self.node_of(fs.destination_sae))
        return await self.push(fs)

    async def reconfigure(self, session_id: str, **changes: object) -> list[ConfigAck]:
        """Push the same path again with changed figures (same epoch)."""
        fs = self.sessions[session_id]
        for k, v in changes.items():
            setattr(self, k, v)
        return await self.push(fs)

    async def reroute(self, session_id: str, new_path: list[str]) -> list[DeleteConfirm]:
        """Move a live session to ``new_path`` (epoch + 1), then retire the old epoch."""
        fs = self.sessions[session_id]
        old_path, old_epoch = fs.path, fs.epoch
        fs.epoch += 1
        fs.path = new_path
        await self.push(fs)
        confirms = []
        for node in old_path:
            try:
                reply = await self.bus.request(topics.km_config(node), SessionDelete(
                    session_id=session_id, node=node, epoch=old_epoch, reason="reroute"),
                    timeout_s=5)  # short: a failed KM (still subscribed) never answers
            except BusError:
                continue  # a failed KM on the old path cannot confirm
            assert isinstance(reply, DeleteConfirm)
            confirms.append(reply)
        return confirms

    async def delete(self, session_id: str, reason: str = "deleted",
                     skip: set[str] | None = None) -> list[DeleteConfirm]:
        """End a session at every KM of its path and collect the confirmations."""
        fs = self.sessions[session_id]
        confirms = []
        for node in fs.path:
            if skip and node in skip:
                continue
            reply = await self.bus.request(topics.km_config(node), SessionDelete(
                session_id=session_id, node=node, reason=reason), timeout_s=DEADLINE_S)
            assert isinstance(reply, DeleteConfirm)
            confirms.append(reply)
        fs.confirms += confirms
        return confirms
