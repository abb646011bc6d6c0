"""The key manager's pure core: sessions, pairing, indexes, pacing and timers as data.

Map (faucet's ``valve.py`` style, as :mod:`keyplane.control.admission`): every method of
:class:`KmCore` takes one event and ``now`` and returns the :data:`Effect` list the shell
(:class:`~keyplane.keymanager.km.KeyManager`) carries out: arm a timer, publish to
Admission Control, write a session row, emit an event, free a session's resources, settle
an opener's wait. It never touches the bus, the store, the clock or asyncio, so it is unit
tested without any of them (tests/unit/keymanager/test_km_core.py).

What the core owns:

* **Streams** (:class:`Stream` and its index bookkeeping, :mod:`~keyplane.keymanager.stream`):
  the endpoint sessions with their Fig. 2a machine (:mod:`~keyplane.keymanager.session`),
  QoS, owner, token bucket, configurations by epoch, and this end's indexes (ETSI 004
  ``next_index``; ETSI 014 ``next_gen`` and spares).
* **Pairing**: ETSI 014 sessions by (master, slave); Key_stream_IDs this KM assigned that
  Admission Control merged into the peer's stream (``aliases``).
* **The forwarding table** (:class:`~keyplane.keymanager.forwarding.ForwardingTable`).
* **Pacing and ordering**: a token bucket per stream, the exchange slots and the priority
  queues (:mod:`~keyplane.keymanager.scheduling`).
* **Keep-alive and idle bookkeeping**: when to signal Admission Control, when a stream idles.

What the shell keeps: futures and tasks (an opener's wait, arrivals, relays), the vault of
end-to-end keys and the journal (persistence), the link key stores and the relay.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from keyplane.errors import (
    ExceedsTokenBucket,
    IllegalTransition,
    PeerNotConnected,
    RateLimited,
    SessionIdInUse,
    SessionNotFound,
)
from keyplane.events import EventType
from keyplane.keymanager import liveness
from keyplane.keymanager.effects import (
    ArmIdle,
    Decide,
    Effect,
    Emit,
    FreeStream,
    KeepAliveAt,
    PersistRow,
    ProbePeer,
    Renamed,
    SendAdmission,
)
from keyplane.keymanager.forwarding import ForwardingEntry, ForwardingTable
from keyplane.keymanager.hybrid import parse_policy
from keyplane.keymanager.scheduling import PriorityQueues, TokenBucket
from keyplane.keymanager.session import (
    ArmIdleTimer,
    FreeResources,
    SendKeepAlive,
    SendSessionClose,
    SessionEvent,
    SessionMachine,
    SessionState,
)
from keyplane.keymanager.settings import KmSettings
from keyplane.keymanager.shares import NodeShares
from keyplane.keymanager.stream import (
    Interface,
    KeyState,
    Stream,
    claim_indexes,
    delivered_index,
    fresh_indexes,
    next_get_index,
    release_indexes,
)
from keyplane.messages import (
    ConfigAck,
    HopRole,
    KeepAlive,
    Qos,
    SessionClose,
    SessionConfig,
    SessionDelete,
)

__all__ = ["Interface", "KeyState", "KmCore", "Stream"]

# ---- the core --------------------------------------------------------------------------
class KmCore:
    """One KM's session logic (see the module docstring).

    Args:
        node_id: the KM's node.
        neighbours: nodes this KM shares a quantum link with (a configuration naming any
            other hop is refused).
        settings: the KM's tunables (queue sizes, aging, keep-alive interval).
    """

    def __init__(self, node_id: str, neighbours: Iterable[str], settings: KmSettings) -> None:
        self.node_id = node_id
        self.neighbours = frozenset(neighbours)
        self.settings = settings
        self.streams: dict[str, Stream] = {}
        self.pairs: dict[tuple[str, str], str] = {}  # (master, slave) -> 014 session id
        # Key_stream_IDs this KM assigned that Admission Control merged into the peer's
        # stream (paired by SAE pair, SessionConfig.opened_as): own id -> stream id
        self.aliases: dict[str, str] = {}
        self.forwarding = ForwardingTable()
        self.queues: PriorityQueues[object] = PriorityQueues(
            settings.aging_interval_s, settings.queue_limit)
        self.active = 0  # exchanges running
        self.shares = NodeShares(self.neighbours, settings.share_cap_bytes,
                                 settings.share_idle_s,
                                 settings.share_debt_bytes)  # scarce link key, per neighbour

    # ---- lookups -----------------------------------------------------------------------
    def stream(self, key_stream_id: str) -> Stream | None:
        """The stream of an id (or of the alias an application holds)."""
        return self.streams.get(self.aliases.get(key_stream_id, key_stream_id))

    def app_stream(self, owner: str, key_stream_id: str) -> Stream:
        """The caller's live stream.

        Raises:
            SessionNotFound: unknown, or another owner's.
            PeerNotConnected: it has ended.
        """
        s = self.stream(key_stream_id)
        if s is None or s.owner != owner:
            raise SessionNotFound(f"no stream {key_stream_id} for this caller")
        if not s.live:
            # closed (by either application), deleted by Admission Control or idle: the
            # peer is no longer connected to it (ETSI 004 status 3 for GET_KEY)
            raise PeerNotConnected(f"stream {key_stream_id} has ended")
        return s

    @staticmethod
    def served_qos(s: Stream) -> Qos:
        """The QoS the KM serves the stream with (the configured figures once known)."""
        cfg = s.config
        if cfg is None:
            return s.qos
        if cfg.qos is not None:  # negotiated by Admission Control: the same at both ends
            return cfg.qos
        return s.qos.model_copy(update={
            "priority": cfg.priority, "key_chunk_size": cfg.key_chunk_size,
            "max_bps": min(int(cfg.token_rate_bps), 2**32 - 1)})

    # ---- the session machine -----------------------------------------------------------
    def apply(self, s: Stream, event: SessionEvent, now: float, *,
              idle_timeout_s: float | None = None) -> list[Effect]:
        """Feed ``event`` to the stream's Fig. 2a machine; what the shell must do.

        Raises:
            IllegalTransition: Fig. 2a forbids ``event`` now.
        """
        out: list[Effect] = []
        if event in (SessionEvent.key_request, SessionEvent.key_done,
                     SessionEvent.config_received, SessionEvent.reconfigured):
            s.last_active = now  # what an idle probe from the other end is told
            s.held_since = None
        for a in s.machine.handle(event, now, idle_timeout_s=idle_timeout_s):
            if isinstance(a, ArmIdleTimer):
                s.idle_deadline = a.deadline
                out.append(ArmIdle(s.session_id, a.deadline))
            elif isinstance(a, SendKeepAlive):
                out += self.keepalive(s, now)
            elif isinstance(a, SendSessionClose):
                out.append(SendAdmission(SessionClose(
                    session_id=s.session_id, node=self.node_id, reason=a.reason)))
                out.append(Emit(EventType.session_closed, {
                    "session": s.session_id, "reason": a.reason}))
            elif isinstance(a, FreeResources):
                out += self._free(s)
            # ConfirmDelete: the SessionDelete handler replies DeleteConfirm itself
        if event not in (SessionEvent.key_request, SessionEvent.key_done):
            out.append(self.persist(s))
        return out

    def persist(self, s: Stream) -> PersistRow:
        """The stream's row as it is now."""
        return PersistRow(s.session_id, s.machine.state.value, s.data())

    def _free(self, s: Stream) -> list[Effect]:
        if s.config is not None:  # never configured here: the id's entries are not its own
            self.forwarding.remove(s.session_id)
            self.shares.forget(s.session_id)
        s.bucket = None
        s.stock.clear()  # its keys go with the session's (FreeStream)
        if self.pairs.get((s.local_sae, s.peer_sae)) == s.session_id:
            del self.pairs[(s.local_sae, s.peer_sae)]
        return [FreeStream(s.session_id), Decide(s.session_id, "ended")]

    def freed(self, session_id: str, bits: int) -> None:
        """The shell dropped the stream's keys: ``bits`` of them were never delivered."""
        s = self.streams.get(session_id)
        if s is not None:
            s.freed_bits = bits

    # ---- keep-alives and idle ----------------------------------------------------------
    def keepalive_interval(self, s: Stream) -> float:
        """At most half the idle timeout, so Admission Control's session timer (idle timeout
        + grace, reset by each KeepAlive) always sees one in time."""
        return min(self.settings.keepalive_min_interval_s, s.machine.idle_timeout_s / 2)

    def keepalive(self, s: Stream, now: float) -> list[Effect]:
        """A key request: signal Admission Control, at most once per interval.

        A request inside the interval is not lost: it is covered by one trailing KeepAlive
        at the end of the interval, so the last KeepAlive is never older than the last
        request and Admission Control's timer never ends a session the KM still serves.
        """
        interval = self.keepalive_interval(s)
        if now - s.last_keepalive >= interval:
            s.last_keepalive = now
            return [SendAdmission(KeepAlive(session_id=s.session_id, node=self.node_id))]
        if s.keepalive_owed:
            return []
        s.keepalive_owed = True
        return [KeepAliveAt(s.session_id, s.last_keepalive + interval)]

    def keepalive_due(self, session_id: str, now: float) -> list[Effect]:
        """The trailing KeepAlive's time came: send it if the stream still lives."""
        s = self.streams.get(session_id)
        if s is None:
            return []
        s.keepalive_owed = False
        if not s.live:
            return []
        s.last_keepalive = now
        return [SendAdmission(KeepAlive(session_id=s.session_id, node=self.node_id))]

    def idle_due(self, session_id: str, now: float) -> tuple[float | None, list[Effect]]:
        """The idle timer fired: ``(next deadline to wait for or None, effects)``.

        A stream with an exchange in flight is busy, not idle: it signals Admission Control
        (KeepAlive) and is looked at again one keep-alive interval later.
        """
        s = self.streams.get(session_id)
        if s is None or not s.live:
            return None, []
        busy = s.machine.state is SessionState.key_exchanging
        if busy and now >= s.idle_deadline:
            s.idle_deadline = now + s.machine.idle_timeout_s
        if busy:  # a request waiting for scarce key sends no new KeepAlive: the wait does
            return min(s.idle_deadline, now + self.keepalive_interval(s)), self.keepalive(s, now)
        if now < s.idle_deadline:
            return s.idle_deadline, []
        if s.machine.state is not SessionState.operative:
            return None, []
        hop = liveness.probe_hop(s)
        if hop is None or not self.settings.idle_probe:
            return None, self.apply(s, SessionEvent.idle_expired, now)
        # idle here: ask the other end before closing (keymanager/liveness.py); the
        # KeepAlive keeps Admission Control's timer from ending the session meanwhile
        s.probe_seq += 1
        s.last_keepalive = now
        return None, [ProbePeer(s.session_id, s.probe_seq, hop[0], hop[1], s.peer_sae),
                      SendAdmission(KeepAlive(session_id=s.session_id, node=self.node_id))]

    def probe_result(self, session_id: str, seq: int, state: liveness.PeerState,
                     idle_for_s: float, now: float) -> list[Effect]:
        """The other end's answer to idle probe ``seq`` (``unknown``: none came)."""
        s = self.streams.get(session_id)
        if s is None or not s.live or seq != s.probe_seq:
            return []
        if s.machine.state is not SessionState.operative or now < s.idle_deadline:
            return []  # used again meanwhile: its own timer runs
        v = liveness.next_idle_deadline(s, state, idle_for_s, now,
                                        self.settings.idle_hold_max_s)
        if v.close:
            return self.apply(s, SessionEvent.idle_expired, now)
        s.idle_deadline = v.deadline
        out: list[Effect] = [ArmIdle(s.session_id, v.deadline)]
        if v.hold:
            s.last_keepalive = now
            out += [SendAdmission(KeepAlive(session_id=s.session_id, node=self.node_id)),
                    Emit(EventType.session_held, {"session": s.session_id,
                                                  "held_s": now - (s.held_since or now)})]
        return out

    def probe_step(self, session_id: str, epoch: int, sender: str, target: str,
                   now: float) -> liveness.Forward | liveness.Answer:
        """A probe reached this KM: forward it (intermediate) or answer it (target)."""
        entry = self.forwarding.at(session_id, epoch)
        step = liveness.route(self.node_id, target, sender,
                              entry.prev_km if entry else None,
                              entry.next_km if entry else None, entry.role if entry else None)
        if step is not None:
            return step
        return liveness.answer_for(self.streams.get(session_id), now)

    # ---- opening -----------------------------------------------------------------------
    def claim_open(self, owner: str, source: str, destination: str, qos: Qos,
                   sid: str, interface: Interface) -> tuple[Stream, bool]:
        """An application opens ``sid``: ``(stream, joined)``; ``joined`` when it takes
        over a stream Admission Control already configured for it (an ETSI 014 slave's
        pair opened over ETSI 004 with the same id), else a new stream in
        ``authenticating``.

        Raises:
            SessionIdInUse: ``sid`` names a live stream of another kind or owner.
        """
        existing = self.streams.get(sid)
        if existing is not None and existing.live:
            if existing.implicit and existing.owner is None and existing.local_sae == source \
                    and existing.peer_sae == destination:
                existing.owner = owner
                existing.qos = qos
                return existing, True
            raise SessionIdInUse(f"Key_stream_ID {sid} is already in use")
        if sid in self.forwarding:  # a stream relayed through this KM
            raise SessionIdInUse(f"Key_stream_ID {sid} is already in use")
        s = Stream(sid, SessionMachine(sid), local_sae=source, peer_sae=destination,
                   interface=interface, qos=qos, owner=owner)
        self.streams[sid] = s
        return s, False

    # ---- control plane -----------------------------------------------------------------
    def session_config(self, cfg: SessionConfig, now: float
                       ) -> tuple[ConfigAck, list[Effect]]:
        """Admission Control's SessionConfig: the acknowledgement and the effects."""
        out: list[Effect] = []

        def ack(ok: bool, reason: str = "") -> tuple[ConfigAck, list[Effect]]:
            if not ok:
                out.append(Emit(EventType.config_refused, {"session": cfg.session_id,
                                                           "reason": reason}))
            return ConfigAck(session_id=cfg.session_id, node=self.node_id, epoch=cfg.epoch,
                             ok=ok, reason=reason), out

        if cfg.node != self.node_id:
            return ack(False, f"configuration for {cfg.node} sent to {self.node_id}")
        s = self.streams.get(cfg.session_id)
        if (self.forwarding.current(cfg.session_id) == ForwardingEntry.from_config(cfg)
                and (cfg.role is HopRole.intermediate
                     or (s is not None and s.live and s.configs.get(cfg.epoch) == cfg))):
            return ack(True)  # held already (Admission re-pushes to a KM that restarted)
        try:
            parse_policy(cfg.hybrid_policy)
        except ValueError:
            return ack(False, f"unknown hybrid policy {cfg.hybrid_policy!r}")
        for peer in (cfg.prev_km, cfg.next_km):
            if peer is not None and peer not in self.neighbours:
                return ack(False, f"no quantum link from {self.node_id} to {peer}")
        if cfg.role is HopRole.intermediate:
            if cfg.prev_km is None or cfg.next_km is None:
                return ack(False, "an intermediate hop needs prev_km and next_km")
            if not self.forwarding.apply(cfg):
                return ack(False, f"stale epoch {cfg.epoch}")
            out.append(self.intermediate_row(cfg.session_id))
            out.append(Emit(EventType.configured, {
                "session": cfg.session_id, "role": cfg.role.value, "epoch": cfg.epoch,
                "prev_km": cfg.prev_km, "next_km": cfg.next_km}))
            return ack(True)
        if cfg.opened_as and cfg.opened_as != cfg.session_id \
                and cfg.session_id not in self.streams:
            own = self.streams.get(cfg.opened_as)
            if own is not None and own.live and own.config is None:
                out += self._adopt(own, cfg.session_id)
        s = self.streams.get(cfg.session_id)
        if s is None or not s.live:
            if cfg.local_sae is None:
                return ack(False, "an endpoint configuration needs local_sae")
            peer = cfg.destination_sae if cfg.role is HopRole.source else cfg.source_sae
            s = Stream(cfg.session_id, SessionMachine(cfg.session_id, SessionState.user_accepted),
                       local_sae=cfg.local_sae, peer_sae=peer, implicit=True,
                       interface="etsi014")
            self.streams[cfg.session_id] = s
        current = self.forwarding.current(cfg.session_id)
        if current is not None and cfg.epoch < current.epoch:
            return ack(False, f"stale epoch {cfg.epoch} < {current.epoch}")
        event = (SessionEvent.config_received if s.machine.state is SessionState.user_accepted
                 else SessionEvent.reconfigured)
        if not s.machine.can(event):
            try:
                s.machine.handle(event, now)  # raises and logs
            except IllegalTransition as exc:
                return ack(False, str(exc))
        rerouted = current is not None and cfg.epoch > current.epoch
        self.forwarding.apply(cfg)
        s.config = cfg
        s.configs[cfg.epoch] = cfg
        if s.bucket is None:
            s.bucket = TokenBucket(cfg.bucket_size_bits, cfg.token_rate_bps, now)
        else:
            s.bucket.reconfigure(cfg.bucket_size_bits, cfg.token_rate_bps, now)
        out += self.apply(s, event, now, idle_timeout_s=cfg.idle_timeout_s)
        out.append(Emit(EventType.configured, {
            "session": cfg.session_id, "role": cfg.role.value, "epoch": cfg.epoch,
            "prev_km": cfg.prev_km, "next_km": cfg.next_km, "priority": cfg.priority,
            "hybrid_policy": cfg.hybrid_policy}))
        if rerouted:
            out.append(Emit(EventType.session_rerouted, {"session": cfg.session_id,
                                                         "epoch": cfg.epoch}))
        if event is SessionEvent.config_received:
            out.append(Emit(EventType.session_operative, {"session": cfg.session_id}))
            out.append(Decide(cfg.session_id))
        return ack(True)

    def _adopt(self, s: Stream, stream_id: str) -> list[Effect]:
        """Admission Control paired our open request with the peer's by SAE pair: the
        stream takes the peer's Key_stream_ID (both ends must use the same one); the id we
        assigned stays an alias for the application that holds it."""
        own = s.session_id
        del self.streams[own]
        s.session_id = stream_id
        s.machine.session_id = stream_id
        self.streams[stream_id] = s
        self.aliases[own] = stream_id
        return [Renamed(own, stream_id), PersistRow(own, "terminated", {}), self.persist(s),
                Emit(EventType.configured, {"session": stream_id, "adopted_from": own})]

    def intermediate_row(self, session_id: str) -> PersistRow:
        """The row of a session this KM only forwards (its hops by epoch)."""
        epochs = {str(epoch): {"prev_km": e.prev_km, "next_km": e.next_km,
                               "hybrid_policy": e.hybrid_policy, "priority": e.priority}
                  for epoch, e in self.forwarding.epochs(session_id).items()}
        return PersistRow(session_id, "forwarding" if epochs else "terminated",
                          {"intermediate": epochs})

    def session_delete(self, msg: SessionDelete, now: float
                       ) -> tuple[Stream | None, list[Effect]]:
        """Admission Control's SessionDelete: ``(the stream it ended or None, effects)``.

        The shell confirms with ``DeleteConfirm(freed_bits=stream.freed_bits)`` once the
        effects ran (and were written, for a whole session).
        """
        sid = msg.session_id
        s = self.streams.get(sid)
        out: list[Effect] = []
        if msg.epoch is not None and not msg.refused:
            # a reroute retires one epoch's hop; the session (if any) goes on
            removed = self.forwarding.remove_epoch(sid, msg.epoch)
            if s is not None:
                s.configs.pop(msg.epoch, None)
                out.append(self.persist(s))
            elif removed:
                out.append(self.intermediate_row(sid))
            out.append(Emit(EventType.session_deleted, {
                "session": sid, "epoch": msg.epoch, "reason": msg.reason, "scope": "epoch"}))
            return None, out
        if s is None or not s.live:
            if self.forwarding.remove(sid):
                self.shares.forget(sid)
                out.append(PersistRow(sid, "terminated", {}))
            out.append(Emit(EventType.session_deleted, {"session": sid, "reason": msg.reason}))
            return None, out
        if msg.refused and s.machine.state is SessionState.user_accepted:
            out.append(Decide(sid, "refused", msg.reason, msg.qos_offer))
            out += self.apply(s, SessionEvent.admission_refused, now)
            out.append(Emit(EventType.admission_refused, {"session": sid,
                                                          "reason": msg.reason}))
        else:
            out += self.apply(s, SessionEvent.deleted, now)
            out.append(Emit(EventType.session_deleted, {"session": sid, "reason": msg.reason}))
        return s, out

    # ---- restart -----------------------------------------------------------------------
    def restore(self, rows: dict[str, tuple[str, dict[str, Any], float]],
                delivered_end: Callable[[str], int], held: Callable[[str], list[int]],
                now: float) -> list[Effect]:
        """Take back the persisted sessions (KM start).

        Args:
            rows: session rows by id (state, data, time).
            delivered_end: one past the highest index of a session handed out here.
            held: the indexes of a session's keys held and not yet handed out.
            now: the clock.
        """
        out: list[Effect] = []
        for sid, (state, data, _t) in rows.items():
            if "intermediate" in data:
                for epoch, hop in data["intermediate"].items():
                    self.forwarding.apply(SessionConfig(
                        session_id=sid, node=self.node_id, epoch=int(epoch),
                        role=HopRole.intermediate, prev_km=hop["prev_km"],
                        next_km=hop["next_km"], source_sae="-", destination_sae="-",
                        bucket_size_bits=1, token_rate_bps=0, idle_timeout_s=1,
                        hybrid_policy=hop.get("hybrid_policy", "qkd-only"),
                        priority=hop.get("priority", 0)))
                continue
            if state in (SessionState.terminated.value, SessionState.authenticating.value):
                continue
            configs = {int(e): SessionConfig.model_validate(c)
                       for e, c in data.get("configs", {}).items()}
            restored = SessionState.operative if configs else SessionState.user_accepted
            s = Stream(sid, SessionMachine(sid, restored), local_sae=data["local_sae"],
                       peer_sae=data["peer_sae"], interface=data["interface"],
                       qos=Qos.model_validate(data["qos"]), user_id=data["user_id"],
                       owner=data["owner"], implicit=data["implicit"],
                       next_index=data["next_index"], next_gen=data["next_gen"],
                       acked014=dict(data.get("acked014", {})))
            # the row is not rewritten per delivery: the counters also follow from the
            # keys this end handed out (each written durably before it was returned)
            after = delivered_end(sid)
            s.next_index = max(s.next_index, after)
            s.next_gen = max(s.next_gen, after)
            for epoch in sorted(configs):
                self.forwarding.apply(configs[epoch])
            s.configs = configs
            if configs:
                s.config = configs[max(configs)]
                s.bucket = TokenBucket(s.config.bucket_size_bits, s.config.token_rate_bps, now)
                s.machine.idle_timeout_s = s.config.idle_timeout_s
            self.streams[sid] = s
            if s.interface == "etsi014" and s.role is HopRole.source:
                self.pairs[(s.local_sae, s.peer_sae)] = sid
                # made but never delivered here (a batch that failed before the restart)
                undelivered = held(sid)
                s.next_gen = max(s.next_gen, 1 + max(undelivered, default=-1))
                s.spare = sorted(undelivered)
        for s in self.streams.values():
            if s.config is not None:
                s.last_active = now
                s.idle_deadline = now + s.machine.idle_timeout_s
                out.append(ArmIdle(s.session_id, s.idle_deadline))
        return out

    # ---- key requests: state, token bucket, slots --------------------------------------
    def admit(self, s: Stream, bits: int, timeout_s: float, now: float) -> float:
        """Admit one key request of ``bits``: the wait its token bucket asks for.

        Raises:
            PeerNotConnected: the stream is not configured yet.
            SessionNotFound: the stream ended.
            ExceedsTokenBucket: ``bits`` is more than the bucket holds (never servable).
            RateLimited: the bucket cannot cover ``bits`` within ``timeout_s``.
        """
        state = s.machine.state
        if state in (SessionState.authenticating, SessionState.user_accepted):
            raise PeerNotConnected(f"session {s.session_id} is not configured yet")
        if state is SessionState.terminated or s.bucket is None:
            raise SessionNotFound(f"session {s.session_id} has ended")
        if bits > s.bucket.size_bits:
            raise ExceedsTokenBucket(s.session_id, bits, s.bucket.size_bits)
        wait = s.bucket.reserve(bits, now, timeout_s)
        if wait is None:
            raise RateLimited(s.session_id, bits, s.bucket.wait_for(bits, now), timeout_s)
        return wait

    @staticmethod
    def refund(s: Stream, bits: int, now: float) -> None:
        """A request failed before using its bits: back to the bucket."""
        if s.bucket is not None:
            s.bucket.refund(bits, now)

    def take_slot(self) -> bool:
        """Take an exchange slot now if one is free and nobody waits for one."""
        if self.active < self.settings.max_concurrent_exchanges and not len(self.queues):
            self.active += 1
            return True
        return False

    def wait_slot(self, ticket: object, priority: int, now: float) -> bool:
        """Queue ``ticket`` for a slot; False when the queues are full."""
        return self.queues.push(ticket, priority, now)

    def release_slot(self, now: float) -> object | None:
        """A request ends: its slot goes to the queued ticket to wake, or back (None)."""
        ticket = self.queues.pop(now)
        if ticket is None:
            self.active -= 1
        return ticket

    # ---- scarce link key (keymanager/shares.py) ---------------------------------------
    def flow_priority(self, session_id: str) -> int:
        """A session's weight class on this KM's links (its configuration's priority at an
        endpoint, its forwarding entry's at an intermediate; 0 if unknown here)."""
        s = self.streams.get(session_id)
        entry = s.config if s is not None and s.config else self.forwarding.current(session_id)
        return entry.priority if entry is not None else 0

    # ---- indexes (keymanager/stream.py) ----------------------------------------------
    next_get_index = staticmethod(next_get_index)
    delivered_index = staticmethod(delivered_index)
    claim_indexes = staticmethod(claim_indexes)
    fresh_indexes = staticmethod(fresh_indexes)
    release_indexes = staticmethod(release_indexes)
