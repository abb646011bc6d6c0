"""FakeKeyManager: a test double of the KM's ApplicationService, for API tests only.

It is NOT the key manager (that is keyplane.keymanager): no sessions with Admission
Control, no relay, no link key stores. It keeps just enough state to let the ETSI 004/014
servers be tested through their whole contract, with the same observable rules:

- Access Control: the caller's identity (certificate subject or token) must belong to the
  user owning the SAE, the SAE must be attached to this node, and the peer must be in the
  user's SLA ``allowed_peers`` -> otherwise :class:`AuthenticationFailed`;
- one shared :class:`FakeKeyNetwork` per test stands in for "both KMs got the same key":
  a pool of ``pool_bits`` key bits that enc_keys and GET_KEY consume
  (:class:`InsufficientKeyMaterial` when short, checked before anything is consumed);
- ETSI 014: keys are kept until every named slave fetched them once; unknown or already
  fetched -> :class:`KeyNotFound`; made for another pair -> :class:`AuthenticationFailed`;
- ETSI 004: stream ids, joins, same chunk for the same index at both ends.

Key bytes come from a seeded ``random.Random`` so tests are reproducible.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from keyplane.api.settings import Etsi014Limits
from keyplane.config import Topology, User
from keyplane.errors import (
    AuthenticationFailed,
    ExtensionNotMet,
    InsufficientKeyMaterial,
    KeyNotFound,
    PeerNotConnected,
    PeerUnreachable,
    QosNotMet,
    SessionIdInUse,
    SessionNotFound,
)
from keyplane.keymanager.interface import (
    Caller,
    DeliveredKey,
    GetKeyResult,
    OpenResult,
    PairStatus,
)
from keyplane.messages import Qos

__all__ = ["FakeKeyManager", "FakeKeyNetwork"]


@dataclass
class _PendingKey:
    master: str
    slaves: set[str]
    key: bytes = field(repr=False)
    delivered: set[str] = field(default_factory=set)


@dataclass
class _Stream:
    source: str
    destination: str
    qos: Qos
    joined: bool = False
    closed: set[str] = field(default_factory=set)
    chunks: dict[int, bytes] = field(default_factory=dict, repr=False)
    next_index: dict[str, int] = field(default_factory=dict)


class FakeKeyNetwork:
    """State shared by the FakeKeyManagers of one test network."""

    def __init__(self, topology: Topology, *, seed: int, pool_bits: int = 1 << 20,
                 limits: Etsi014Limits | None = None) -> None:
        self.topology = topology
        self.rng = random.Random(seed)
        self.pool_bits = pool_bits
        self.limits = limits or Etsi014Limits()
        self.pending: dict[str, _PendingKey] = {}
        self.streams: dict[str, _Stream] = {}
        self.calls: list[str] = []

    def km(self, node_id: str) -> FakeKeyManager:
        """The fake KM of ``node_id``."""
        return FakeKeyManager(self, node_id)

    def node_of(self, sae_id: str) -> str | None:
        for app in self.topology.applications:
            if app.sae_id == sae_id:
                return app.node
        return None

    def user_of(self, caller: Caller) -> User:
        for user in self.topology.users:
            if caller.method == "token" and user.token is not None and user.token == caller.identity:
                return user
            if caller.method == "certificate" and user.certificate_subject == caller.identity:
                return user
        raise AuthenticationFailed("unknown identity")

    def new_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def take(self, bits: int) -> bytes:
        if bits > self.pool_bits:
            raise InsufficientKeyMaterial(f"{bits} bits asked, {self.pool_bits} available")
        self.pool_bits -= bits
        return self.rng.randbytes(bits // 8)


class FakeKeyManager:
    """ApplicationService of one node over a :class:`FakeKeyNetwork` (test double)."""

    def __init__(self, network: FakeKeyNetwork, node_id: str) -> None:
        self.network = network
        self.node_id = node_id

    def _authorize(self, caller: Caller, sae: str, peer: str | None) -> None:
        net = self.network
        user = net.user_of(caller)
        owned = {a.sae_id for a in net.topology.applications
                 if a.owner == user.id and a.node == self.node_id}
        if sae not in owned:
            raise AuthenticationFailed(f"identity may not act as {sae} at {self.node_id}")
        if peer is not None and (not user.sla.allows_peer(peer) or net.node_of(peer) is None):
            raise AuthenticationFailed(f"{sae} may not reach {peer}")

    # ---- ETSI 014 ----------------------------------------------------------------------
    async def status(self, caller: Caller, master_sae: str, slave_sae: str) -> PairStatus:
        self.network.calls.append("status")
        self._authorize(caller, master_sae, slave_sae)
        lim = self.network.limits
        return PairStatus(
            source_kme_id=self.node_id, target_kme_id=self.network.node_of(slave_sae) or "",
            master_sae_id=master_sae, slave_sae_id=slave_sae, key_size=lim.key_size_bits,
            stored_key_count=self.network.pool_bits // lim.key_size_bits,
            max_key_count=(1 << 20) // lim.key_size_bits,
            max_key_per_request=lim.max_key_per_request, max_key_size=lim.max_key_size_bits,
            min_key_size=lim.min_key_size_bits, max_sae_id_count=lim.max_sae_id_count)

    async def enc_keys(self, caller: Caller, master_sae: str, slave_sae: str, number: int,
                       size_bits: int, additional_slaves: list[str] | None = None,
                       extensions: dict[str, Any] | None = None) -> list[DeliveredKey]:
        self.network.calls.append("enc_keys")
        slaves = [slave_sae, *(additional_slaves or [])]
        for slave in slaves:
            self._authorize(caller, master_sae, slave)
        material = self.network.take(number * size_bits)
        out = []
        for i in range(number):
            key = material[i * size_bits // 8:(i + 1) * size_bits // 8]
            key_id = self.network.new_id()
            self.network.pending[key_id] = _PendingKey(master_sae, set(slaves), key)
            out.append(DeliveredKey(key_id, key))
        return out

    async def dec_keys(self, caller: Caller, slave_sae: str, master_sae: str,
                       key_ids: list[str], *, acknowledge: bool = False,
                       confirm: Sequence[str] = ()) -> list[DeliveredKey]:
        self.network.calls.append("dec_keys")
        self._authorize(caller, slave_sae, master_sae)
        if acknowledge or confirm:  # the real KM's feature (keymanager/ack014.py)
            raise ExtensionNotMet("keyplane_ack: not supported by this fake")
        pending = self.network.pending
        for key_id in key_ids:  # check everything first: a refusal consumes nothing
            entry = pending.get(key_id)
            if entry is None:
                raise KeyNotFound("key_ID not found")
            if entry.master != master_sae or slave_sae not in entry.slaves:
                raise AuthenticationFailed("key_ID was made for another SAE pair")
            if slave_sae in entry.delivered:
                raise KeyNotFound("key_ID already delivered")
        out = []
        for key_id in key_ids:
            entry = pending[key_id]
            entry.delivered.add(slave_sae)
            if entry.delivered == entry.slaves:
                del pending[key_id]
            out.append(DeliveredKey(key_id, entry.key))
        return out

    # ---- ETSI 004 ----------------------------------------------------------------------
    def _side(self, caller: Caller, stream: _Stream) -> str:
        user = self.network.user_of(caller)
        for sae in (stream.source, stream.destination):
            if any(a.sae_id == sae and a.owner == user.id and a.node == self.node_id
                   for a in self.network.topology.applications):
                return sae
        raise AuthenticationFailed("caller is not an end of this stream")

    async def open_connect(self, caller: Caller, source: str, destination: str, qos: Qos,
                           key_stream_id: str | None) -> OpenResult:
        self.network.calls.append("open_connect")
        self._authorize(caller, source, destination)
        user = self.network.user_of(caller)
        if qos.min_bps > user.sla.max_bps:
            proposal = qos.model_copy(update={"min_bps": user.sla.max_bps,
                                              "max_bps": user.sla.max_bps})
            raise QosNotMet(f"min_bps {qos.min_bps} above the SLA's {user.sla.max_bps}",
                            counter_proposal=proposal)
        if self.network.node_of(destination) == self.node_id and destination == source:
            raise PeerUnreachable("a stream needs two applications")
        streams = self.network.streams
        if key_stream_id is not None and key_stream_id in streams:
            stream = streams[key_stream_id]
            if stream.joined or (source, destination) != (stream.destination, stream.source):
                raise SessionIdInUse(key_stream_id)
            stream.joined = True
            return OpenResult(key_stream_id, stream.qos, peer_connected=True)
        ksid = key_stream_id or self.network.new_id()
        streams[ksid] = _Stream(source, destination, qos)
        return OpenResult(ksid, qos, peer_connected=False)

    async def get_key(self, caller: Caller, key_stream_id: str, index: int | None,
                      metadata: dict[str, Any] | None = None) -> GetKeyResult:
        self.network.calls.append("get_key")
        stream = self.network.streams.get(key_stream_id)
        if stream is None:
            raise SessionNotFound(key_stream_id)
        side = self._side(caller, stream)
        if not stream.joined:
            raise PeerNotConnected("peer application has not opened its side")
        if index is None:
            index = stream.next_index.get(side, 0)
        if index not in stream.chunks:
            stream.chunks[index] = self.network.take(stream.qos.key_chunk_size * 8)
        stream.next_index[side] = max(stream.next_index.get(side, 0), index + 1)
        return GetKeyResult(key_stream_id, index, stream.chunks[index],
                            {"hops": 1, "echo": metadata} if metadata else {"hops": 1})

    async def close_stream(self, caller: Caller, key_stream_id: str) -> None:
        self.network.calls.append("close")
        stream = self.network.streams.get(key_stream_id)
        if stream is None:
            raise SessionNotFound(key_stream_id)
        stream.closed.add(self._side(caller, stream))
        if stream.closed == {stream.source, stream.destination} or not stream.joined:
            del self.network.streams[key_stream_id]
