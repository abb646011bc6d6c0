"""The pure Admission Control logic: ``(event, now) → effects`` (paper Fig. 2b).

Every method takes one event (an open request, a route, acknowledgements, a keep-alive,
a close, a reroute order, the clock) and ``now``, updates the session records and returns
the :data:`~.model.Effect` list the shell carries out (faucet's ``valve.py`` style). No
I/O and no asyncio here; the decisions are in the package docstring.
"""

from __future__ import annotations

import math
from typing import Any

from keyplane.config import User
from keyplane.control.admission.index import DeadlineHeap, DeadlineKey, LiveCounts
from keyplane.control.admission.model import (
    AdmissionSession,
    AdmissionState,
    DeletePurpose,
    Effect,
    Endpoint,
    ForgetStored,
    Notify,
    PushConfigs,
    RecordKeepAlive,
    ReleaseRoute,
    RepushConfig,
    RequestRoute,
    SendDeletes,
    StoreSession,
    virtual_link,
)
from keyplane.control.admission.qos import check_qos, hop_configs, qos_offer, session_qos
from keyplane.control.settings import AdmissionSettings
from keyplane.control.wire import LiveSession, RerouteAck, RerouteOrder
from keyplane.events import EventType
from keyplane.messages import (
    KeepAlive,
    OpenAck,
    Qos,
    SessionClose,
    SessionConfig,
    SessionDelete,
    SessionOpenRequest,
)
from keyplane.store.admitted import AdmittedSession

__all__ = ["AdmissionCore"]

TERMINATED = AdmissionState.terminated


class AdmissionCore:
    """The pure Admission Control logic: ``(event, now) → effects``.

    Args:
        settings: timers and QoS bounds.
    """

    def __init__(self, settings: AdmissionSettings | None = None) -> None:
        self.settings = settings or AdmissionSettings()
        self.sessions: dict[str, AdmissionSession] = {}
        self._aliases: dict[str, str] = {}
        self._deadlines = DeadlineHeap(self._deadline_of)
        self._live = LiveCounts()

    # ------------------------------------------------------------------ queries

    def session(self, session_id: str) -> AdmissionSession | None:
        """A session by its id or by the id a paired peer opened it under."""
        return self.sessions.get(self._aliases.get(session_id, session_id))

    def live_sessions_of(self, user_id: str) -> int:
        """Sessions (not terminated) the user takes part in (an index: :meth:`_recount`)."""
        return self._live.of(user_id)

    def live_sessions(self) -> list[LiveSession]:
        """Every ``(session, route epoch)`` whose reservation is still needed: a path in
        use, a path being configured, or a path whose deletions are not yet confirmed."""
        return [r for s in self.sessions.values() for r in s.reservations()]

    def next_deadline(self) -> float | None:
        """The earliest peer-wait or session-timer deadline (a heap: O(log n))."""
        top = self._deadlines.earliest()
        return None if top is None else top[0]

    def _deadline_of(self, key: DeadlineKey) -> float | None:
        sess = self.sessions.get(key[0])
        return None if sess is None else sess.deadline(key[1])

    def _set_timer(self, sess: AdmissionSession, now: float) -> None:
        """(Re)arm the session timer: the SLA idle timeout plus grace from ``now``."""
        sess.timer_deadline = at = now + sess.idle_timeout_s + self.settings.session_timer_grace_s
        self._deadlines.arm((sess.session_id, "timer"), at)

    def _recount(self, sess: AdmissionSession) -> None:
        """Keep the per-user live counts in step with ``sess``'s state."""
        live = self.sessions.get(sess.session_id) is sess and sess.state is not TERMINATED
        self._live.set(sess.session_id, sess.users if live else ())

    # ------------------------------------------------------------------ open

    def _refusal(self, node: str, session_id: str, reason: str, *, offer: Qos | None = None,
                 **data: Any) -> list[Effect]:
        delete = SessionDelete(session_id=session_id, node=node, reason=reason, refused=True,
                               qos_offer=offer)
        return [Notify(EventType.admission_refused, session_id, node, {"reason": reason, **data}),
                SendDeletes(session_id, DeletePurpose.refusal, None, (delete,))]

    def open(self, req: SessionOpenRequest, user: User | None, destination_node: str | None,
             now: float, *, source_node: str | None = None) -> tuple[OpenAck, list[Effect]]:
        """An endpoint KM's open request (paper Fig. 2a 'user accepted' → Fig. 2b).

        Args:
            req: the request.
            user: the user ``req.user_id`` from the user database (None: unknown).
            destination_node: the KM of ``req.destination_sae`` (None: unknown SAE).
            source_node: the KM of ``req.source_sae`` if known; it must be ``req.node``.

        Returns:
            The reply to the KM (``accepted_for_review=False`` only when the id is in use)
            and the effects to carry out.
        """
        sid = req.session_id
        registered = OpenAck(session_id=sid)
        effects: list[Effect] = [Notify(EventType.admission_requested, sid, req.node,
                                        {"source_sae": req.source_sae,
                                         "destination_sae": req.destination_sae,
                                         "interface": req.interface})]
        if user is None or user.id != req.user_id:
            return registered, effects + self._refusal(req.node, sid, "unknown user")
        if destination_node is None:
            return registered, effects + self._refusal(req.node, sid,
                                                       "unknown destination SAE")
        if source_node is not None and source_node != req.node:
            return registered, effects + self._refusal(req.node, sid,
                                                       f"{req.source_sae} is not served by "
                                                       f"{req.node}")
        if req.source_sae == req.destination_sae:
            return registered, effects + self._refusal(req.node, sid, "SAE paired with itself")
        if not user.sla.allows_peer(req.destination_sae):
            return registered, effects + self._refusal(req.node, sid,
                                                       "peer not allowed by the SLA")
        reason = check_qos(req.qos, user.sla, self.settings)
        if reason is not None:
            return registered, effects + self._refusal(
                req.node, sid, f"QoS above SLA: {reason}",
                offer=qos_offer(req.qos, user.sla, self.settings))
        ep = Endpoint(node=req.node, user_id=user.id, sae_id=req.source_sae,
                      peer_sae=req.destination_sae, qos=req.qos, opened_as=sid, sla=user.sla)

        existing = self.session(sid)
        if existing is not None:
            if (existing.state is AdmissionState.requested and existing.interface == "etsi004"
                    and req.interface == "etsi004" and existing.initiator.mirrors(ep)):
                return registered, effects + self._pair(existing, ep, now)
            if existing.state is not AdmissionState.terminated:
                reason = "Key_stream_ID already in use"
                return (OpenAck(session_id=sid, accepted_for_review=False, reason=reason),
                        [Notify(EventType.admission_refused, sid, req.node, {"reason": reason})])
            self._forget(existing)
        # ETSI 004 pairs streams by Key_stream_ID only: an open with another id is another
        # stream, even for the same SAE pair (a stale pending open is never matched with it)
        if self.live_sessions_of(user.id) >= user.sla.max_sessions:
            return registered, effects + self._refusal(
                req.node, sid, f"max_sessions {user.sla.max_sessions} reached")
        if destination_node == req.node:
            return registered, effects + self._refusal(req.node, sid,
                                                       "both SAEs on the same KM")
        sess = AdmissionSession(session_id=sid, interface=req.interface, initiator=ep,
                                destination_node=destination_node,
                                state=AdmissionState.requested, created_t=now)
        self.sessions[sid] = sess
        self._recount(sess)
        if req.interface == "etsi014":
            # ETSI 014: the slave SAE never opens; its KM is configured directly.
            return registered, effects + self._accept(sess, now)
        wait_s = self.peer_wait_s(req.qos)
        sess.peer_deadline = now + wait_s
        self._deadlines.arm((sid, "peer"), sess.peer_deadline)
        effects.append(Notify(EventType.peer_waiting, sid, req.node,
                              {"peer_sae": req.destination_sae, "timeout_s": wait_s}))
        return OpenAck(session_id=sid, waiting_for_peer=True), effects

    def peer_wait_s(self, qos: Qos) -> float:
        """How long a pending ETSI 004 open waits for its peer: its QoS ``Timeout``
        (``peer_wait_timeout_s`` when the application gives none, ``Timeout`` 0)."""
        return qos.timeout_ms / 1000 if qos.timeout_ms else self.settings.peer_wait_timeout_s

    def _pair(self, sess: AdmissionSession, ep: Endpoint, now: float) -> list[Effect]:
        init = sess.initiator
        sid = ep.opened_as
        if ep.node != sess.destination_node:
            self._aliases.pop(sid, None)
            return self._refusal(ep.node, sid, f"{ep.sae_id} is not served by this KM")
        if ep.user_id != init.user_id and self.live_sessions_of(ep.user_id) >= ep.sla.max_sessions:
            self._aliases.pop(sid, None)
            return self._refusal(ep.node, sid, f"max_sessions {ep.sla.max_sessions} reached")
        if ep.qos.key_chunk_size != init.qos.key_chunk_size:
            self._aliases.pop(sid, None)
            # the counter-proposal (status 7) is the chunk size the stream runs with
            return self._refusal(ep.node, sid, "key_chunk_size differs from the peer's",
                                 offer=ep.qos.model_copy(
                                     update={"key_chunk_size": init.qos.key_chunk_size}))
        want = session_qos([init, ep], sess.interface)
        if want.min_bps > want.rate_bps:
            self._aliases.pop(sid, None)
            return self._refusal(ep.node, sid, "peers' QoS incompatible: min_bps above the "
                                 "other side's max_bps")
        sess.responder = ep
        sess.peer_deadline = None
        self._recount(sess)
        return self._accept(sess, now)

    def _accept(self, sess: AdmissionSession, now: float) -> list[Effect]:
        init, resp = sess.initiator, sess.responder
        eps = [init] if resp is None else [init, resp]
        policy = init.sla.hybrid_policy if resp is None else \
            init.sla.hybrid_policy.meet(resp.sla.hybrid_policy)
        if policy is None:
            assert resp is not None
            return self._refuse_endpoints(
                sess, f"hybrid policies {init.sla.hybrid_policy.value} and "
                      f"{resp.sla.hybrid_policy.value} of the two users have no key source "
                      f"in common")
        sess.hybrid_policy = policy.value
        want = session_qos(eps, sess.interface)
        sess.rate_bps, sess.min_bps, sess.priority = want.rate_bps, want.min_bps, want.priority
        sess.idle_timeout_s = min(e.sla.idle_timeout_s for e in eps)
        sess.key_chunk_size = init.qos.key_chunk_size
        sess.bucket_size_bits = max(sess.key_chunk_size * 8,
                           math.ceil(sess.rate_bps * self.settings.bucket_burst_s))
        sess.state = AdmissionState.accepted
        sess.inflight.add("route")
        return [Notify(EventType.admission_requested, sess.session_id, sess.destination_node,
                       {"state": "accepted", "min_bps": sess.min_bps, "rate_bps": sess.rate_bps,
                        "hybrid_policy": sess.hybrid_policy,
                        "max_trusted_relays": sess.max_trusted_relays}),
                RequestRoute(sess.session_id, sess.epoch, init.node, sess.destination_node,
                             sess.min_bps, sess.hybrid_policy, sess.max_trusted_relays)]

    # ------------------------------------------------------------------ route, configs

    def route_found(self, session_id: str, epoch: int, path: list[str] | tuple[str, ...],
                    now: float) -> list[Effect]:
        """The Routing Element reserved ``path`` under ``(session_id, epoch)``."""
        sess = self.sessions.get(session_id)
        if sess is None:
            return [ReleaseRoute(session_id, epoch)]
        sess.inflight.discard("route")
        if sess.state is not AdmissionState.accepted or epoch != sess.epoch or sess.closing:
            out: list[Effect] = [ReleaseRoute(session_id, epoch)]
            if sess.closing:
                out += self._terminate(sess, Notify(EventType.session_closed, session_id, None,
                                                    {"reason": sess.closing}))
            return out
        path = tuple(path)
        if len(path) < 2 or path[0] != sess.initiator.node or path[-1] != sess.destination_node:
            return self.route_failed(session_id, epoch, f"bad route {list(path)}", now)
        sess.pending_path = path
        sess.inflight.add(f"config:{epoch}")
        return [Notify(EventType.route_computed, session_id, path[0],
                       {"path": list(path), "epoch": epoch}),
                PushConfigs(session_id, epoch, hop_configs(sess, path, epoch))]

    def route_failed(self, session_id: str, epoch: int, reason: str,
                     now: float) -> list[Effect]:
        """No route (or no answer): refuse both endpoints."""
        sess = self.sessions.get(session_id)
        out: list[Effect] = [ReleaseRoute(session_id, epoch)]
        if sess is None or sess.state is not AdmissionState.accepted or epoch != sess.epoch:
            return out
        sess.inflight.discard("route")
        if sess.closing:
            return out + self._terminate(sess, Notify(EventType.session_closed, session_id,
                                                      None, {"reason": sess.closing}))
        out += self._refuse_endpoints(sess, f"no route: {reason}")
        return out

    def _refuse_endpoints(self, sess: AdmissionSession, reason: str,
                          configured: tuple[str, ...] = (),
                          acked: tuple[str, ...] = ()) -> list[Effect]:
        """Refuse both endpoints and roll back every KM a configuration went to.

        Rollback covers ``configured`` (the whole path), not only the KMs that acknowledged:
        a KM whose acknowledgement was late may have applied the configuration. A responder
        endpoint that did not acknowledge may know only the id its own open request carried,
        so it is addressed by that id.
        """
        deletes = []
        for node in dict.fromkeys((*sess.endpoint_nodes, *configured)):
            sid = sess.session_id
            if (sess.responder is not None and node == sess.responder.node
                    and node not in acked):
                sid = sess.responder.opened_as
            deletes.append(SessionDelete(session_id=sid, node=node, reason=reason,
                                         refused=True))
        purpose = DeletePurpose.rollback if configured else DeletePurpose.refusal
        return self._terminate(sess, Notify(EventType.admission_refused, sess.session_id, None,
                                            {"reason": reason}),
                               SendDeletes(sess.session_id, purpose, None, tuple(deletes)))

    def configs_applied(self, session_id: str, epoch: int, acked: tuple[str, ...],
                        failed: dict[str, str], now: float) -> list[Effect]:
        """Every KM of ``epoch``'s path answered (``acked``) or did not (``failed``)."""
        sess = self.sessions.get(session_id)
        if sess is None:
            return []
        sess.inflight.discard(f"config:{epoch}")
        if sess.state is AdmissionState.accepted and epoch == sess.epoch:
            if failed or sess.closing:
                if sess.closing:
                    out: list[Effect] = [ReleaseRoute(session_id, epoch)]
                    deletes = tuple(SessionDelete(session_id=session_id, node=n,
                                                  reason=sess.closing)
                                    for n in sess.pending_path)
                    return out + self._terminate(
                        sess, Notify(EventType.session_closed, session_id, None,
                                     {"reason": sess.closing}),
                        SendDeletes(session_id, DeletePurpose.rollback, None, deletes))
                why = "; ".join(f"{n}: {r}" for n, r in sorted(failed.items()))
                return [ReleaseRoute(session_id, epoch),
                        Notify(EventType.config_refused, session_id, None,
                               {"failed": sorted(failed), "reason": why}),
                        *self._refuse_endpoints(sess, f"configuration failed: {why}",
                                                configured=sess.pending_path,
                                                acked=tuple(acked))]
            sess.state = AdmissionState.active
            sess.path = sess.pending_path
            sess.pending_path = ()
            self._set_timer(sess, now)
            out = [Notify(EventType.configured, session_id, n, {"epoch": epoch})
                   for n in sess.path]
            out.append(Notify(EventType.session_operative, session_id, sess.initiator.node,
                              {"path": list(sess.path), "epoch": epoch,
                               "min_bps": sess.min_bps, "rate_bps": sess.rate_bps,
                               "priority": sess.priority}))
            out.append(virtual_link(sess, sess.path, True))
            out.append(StoreSession(sess.record()))
            return out
        if sess.state is AdmissionState.active and epoch == sess.pending_epoch:
            if sess.pending_kind == "restore":
                return self._restored(sess, epoch, failed)
            return self._rerouted(sess, epoch, failed)
        # the session ended (or moved on) while this epoch was being configured: undo it
        deletes = tuple(SessionDelete(session_id=session_id, node=n, epoch=epoch,
                                      reason="session ended during configuration")
                        for n in dict.fromkeys((*sess.pending_path, *acked)))
        out = [ReleaseRoute(session_id, None if sess.state is AdmissionState.terminated
                            else sess.pending_route_epoch)]
        if deletes:
            out.append(SendDeletes(session_id, DeletePurpose.reroute_rollback, None, deletes))
        self._maybe_forget(sess)
        return out

    def _rerouted(self, sess: AdmissionSession, epoch: int,
                  failed: dict[str, str]) -> list[Effect]:
        """The new path's KMs answered. On success the KMs that left the path drop the old
        epoch; on failure the old path is restored under a yet higher epoch (the endpoints
        that took the new epoch would ignore a lower one)."""
        sid = sess.session_id
        new_path, new_route_epoch = sess.pending_path, sess.pending_route_epoch
        sess.pending_epoch = sess.pending_route_epoch = sess.pending_kind = None
        sess.pending_path = ()
        if failed:
            why = "; ".join(f"{n}: {r}" for n, r in sorted(failed.items()))
            out: list[Effect] = [ReleaseRoute(sid, new_route_epoch),
                                 Notify(EventType.session_rerouted, sid, None,
                                        {"ok": False, "reason": f"reroute failed: {why}",
                                         "path": list(sess.path)})]
            # every KM the new epoch went to and that is not on the old path (a late
            # acknowledgement does not mean the configuration was not applied)
            strays = tuple(SessionDelete(session_id=sid, node=n, epoch=epoch,
                                         reason=f"reroute failed: {why}")
                           for n in new_path if n not in sess.path)
            if strays:
                out.append(SendDeletes(sid, DeletePurpose.reroute_rollback, None, strays))
            restore = epoch + 1
            sess.pending_epoch, sess.pending_kind = restore, "restore"
            sess.pending_path = sess.path
            sess.inflight.add(f"config:{restore}")
            out.append(PushConfigs(sid, restore, hop_configs(sess, sess.path, restore)))
            return out
        old_epoch, old_route_epoch, old_path = sess.epoch, sess.route_epoch, sess.path
        sess.epoch, sess.path = epoch, new_path
        sess.route_epoch = new_route_epoch if new_route_epoch is not None else old_route_epoch
        leavers = [n for n in old_path if n not in new_path]
        out = [Notify(EventType.session_rerouted, sid, None,
                      {"ok": True, "old_path": list(old_path), "path": list(new_path),
                       "epoch": epoch})]
        if leavers:
            deletes = tuple(SessionDelete(session_id=sid, node=n, epoch=old_epoch,
                                          reason="rerouted") for n in leavers)
            out.append(SendDeletes(sid, DeletePurpose.reroute_cleanup, old_route_epoch,
                                   deletes))
        else:
            out.append(ReleaseRoute(sid, old_route_epoch))
        out.append(virtual_link(sess, old_path, False))
        out.append(virtual_link(sess, new_path, True))
        out.append(StoreSession(sess.record()))
        return out

    def _restored(self, sess: AdmissionSession, epoch: int,
                  failed: dict[str, str]) -> list[Effect]:
        """The old path was pushed again after a failed reroute; if even that fails, the
        session cannot be kept consistent and ends."""
        sess.pending_epoch = sess.pending_route_epoch = sess.pending_kind = None
        sess.pending_path = ()
        if failed:
            why = "; ".join(f"{n}: {r}" for n, r in sorted(failed.items()))
            return self._end(sess, f"path could not be restored after a failed reroute: {why}")
        sess.epoch = epoch
        out: list[Effect] = [Notify(EventType.configured, sess.session_id, n,
                                    {"epoch": epoch, "restored": True}) for n in sess.path]
        out.append(StoreSession(sess.record()))
        return out

    def deletes_done(self, session_id: str, purpose: DeletePurpose, epoch: int | None,
                     confirmed: tuple[str, ...], missing: tuple[str, ...],
                     now: float) -> list[Effect]:
        """Deletions were confirmed (or their bound passed): release what they freed."""
        out: list[Effect] = []
        sess = self.sessions.get(session_id)
        if purpose is DeletePurpose.close:
            out.append(ReleaseRoute(session_id, epoch))
            out.append(Notify(EventType.session_deleted, session_id, None,
                              {"confirmed": list(confirmed), "missing": list(missing)}))
            out.append(ForgetStored(session_id))
        elif purpose is DeletePurpose.reroute_cleanup:
            out.append(ReleaseRoute(session_id, epoch))
        if sess is not None:
            sess.inflight.discard(f"delete:{purpose.value}:{epoch}")
            self._maybe_forget(sess)
        return out

    def km_ready(self, node: str) -> list[Effect]:
        """A KM (re)started: its hop of every active, settled session through it, again
        (a reroute or restore in flight pushes its own epoch anyway)."""
        return [RepushConfig(c) for s in self.sessions.values()
                if s.state is AdmissionState.active and s.pending_epoch is None
                and node in s.path for c in hop_configs(s, s.path, s.epoch) if c.node == node]

    def config_repushed(self, cfg: SessionConfig, error: str | None) -> list[Effect]:
        """The restarted KM's answer: an event (the session's state is unchanged)."""
        if error is None:
            return [Notify(EventType.configured, cfg.session_id, cfg.node,
                           {"epoch": cfg.epoch, "repushed": True})]
        return [Notify(EventType.config_refused, cfg.session_id, cfg.node,
                       {"epoch": cfg.epoch, "repushed": True, "reason": error})]

    # ------------------------------------------------------------------ keep-alive, close

    def keepalive(self, msg: KeepAlive, now: float) -> list[Effect]:
        """An endpoint served a key request: reset the session timer."""
        sess = self.session(msg.session_id)
        if (sess is not None and sess.state is AdmissionState.active
                and msg.node in sess.endpoint_nodes):
            self._set_timer(sess, now)
            return [RecordKeepAlive(sess.session_id)]
        return []

    def close(self, msg: SessionClose, now: float) -> list[Effect]:
        """An endpoint KM closed the session (application CLOSE or its idle timer)."""
        sess = self.session(msg.session_id)
        if sess is None or msg.node not in sess.endpoint_nodes:
            return []
        return self._end(sess, f"{msg.reason} from {msg.node}")

    def _end(self, sess: AdmissionSession, reason: str) -> list[Effect]:
        if sess.state is AdmissionState.requested:
            return self._terminate(sess, Notify(EventType.session_closed, sess.session_id,
                                                sess.initiator.node, {"reason": reason}))
        if sess.state is AdmissionState.accepted:
            sess.closing = reason  # finished when the route / configuration answer arrives
            return []
        if sess.state is AdmissionState.active:
            deletes = tuple(SessionDelete(session_id=sess.session_id, node=n, reason=reason)
                            for n in sess.path)
            out: list[Effect] = [Notify(EventType.session_closed, sess.session_id, None,
                                        {"reason": reason, "path": list(sess.path)})]
            out.append(virtual_link(sess, sess.path, False))
            out += self._terminate(
                sess, SendDeletes(sess.session_id, DeletePurpose.close, None, deletes))
            if sess.session_id in self.sessions:  # deletions still out: mark the record
                out.append(StoreSession(sess.record()))
            return out
        return []

    def _terminate(self, sess: AdmissionSession, *effects: Effect) -> list[Effect]:
        sess.state = AdmissionState.terminated
        sess.peer_deadline = sess.timer_deadline = None
        self._recount(sess)
        for e in effects:
            if isinstance(e, SendDeletes):
                sess.inflight.add(f"delete:{e.purpose.value}:{e.epoch}")
        self._maybe_forget(sess)
        return list(effects)

    def _maybe_forget(self, sess: AdmissionSession) -> None:
        if sess.state is AdmissionState.terminated and not sess.inflight:
            self._forget(sess)

    def _forget(self, sess: AdmissionSession) -> None:
        sid = sess.session_id
        if self.sessions.get(sid) is not sess:
            return
        del self.sessions[sid]  # terminated already: no longer counted live
        self._deadlines.disarm((sid, "peer"), (sid, "timer"))
        # the only alias is the id the responder opened under (no scan over all aliases)
        if sess.responder is not None and self._aliases.get(sess.responder.opened_as) == sid:
            del self._aliases[sess.responder.opened_as]

    # ------------------------------------------------------------------ restart

    def restore(self, rec: AdmittedSession, now: float) -> list[Effect]:
        """Take back a session a previous run stored (at start, before any request).

        An ``active`` one is active again with its session timer re-armed from ``now``
        (a full idle timeout plus grace: a KM that still serves it keeps it alive with its
        next key request, one that forgot it stays silent and the timer's deletion cleans
        up). A ``terminated`` one (its deletions were out) has its deletions sent again.
        A record that cannot be read is ended the same way.
        """
        if self.session(rec.session_id) is not None:
            return []
        path = tuple(rec.path)
        try:
            sess = AdmissionSession.from_record(rec, now)
        except (KeyError, TypeError, ValueError) as exc:
            reason = f"stored session unreadable: {exc}"
            deletes = tuple(SessionDelete(session_id=rec.session_id, node=n, reason=reason)
                            for n in dict.fromkeys((*path, rec.source_node,
                                                    rec.destination_node)))
            return [Notify(EventType.session_closed, rec.session_id, None, {"reason": reason}),
                    ReleaseRoute(rec.session_id, None), ForgetStored(rec.session_id),
                    SendDeletes(rec.session_id, DeletePurpose.refusal, None, deletes)]
        self.sessions[sess.session_id] = sess
        self._recount(sess)
        if sess.responder is not None and sess.responder.opened_as != sess.session_id:
            self._aliases[sess.responder.opened_as] = sess.session_id
        out: list[Effect] = [Notify(EventType.session_restored, sess.session_id,
                                    sess.initiator.node,
                                    {"state": rec.state, "path": list(path),
                                     "epoch": rec.epoch, "min_bps": rec.min_bps,
                                     "idle_timeout_s": rec.idle_timeout_s})]
        if rec.state == "terminated":
            return out + self._end(sess, "deletion not confirmed before the controller "
                                         "restarted")
        self._set_timer(sess, now)
        out.append(virtual_link(sess, path, True))
        return out

    # ------------------------------------------------------------------ reroute, timers

    def reroute(self, order: RerouteOrder, now: float) -> tuple[RerouteAck, list[Effect]]:
        """The Routing Element moved a live session to ``order.path`` (already reserved)."""
        sess = self.sessions.get(order.session_id)

        def refuse(reason: str) -> tuple[RerouteAck, list[Effect]]:
            return RerouteAck(session_id=order.session_id, accepted=False, reason=reason), []

        if sess is None or sess.state is not AdmissionState.active:
            return refuse("session not active")
        if sess.pending_epoch is not None:
            return refuse("a reroute is already in progress")
        if order.old_epoch != sess.route_epoch or order.new_epoch <= sess.route_epoch:
            return refuse(f"stale route epochs {order.old_epoch}->{order.new_epoch}, "
                          f"session at {sess.route_epoch}")
        path = tuple(order.path)
        if len(path) < 2 or path[0] != sess.initiator.node or path[-1] != sess.destination_node:
            return refuse(f"path {order.path} does not join the session's endpoints")
        epoch = sess.epoch + 1
        sess.pending_epoch, sess.pending_kind = epoch, "reroute"
        sess.pending_route_epoch = order.new_epoch
        sess.pending_path = path
        sess.inflight.add(f"config:{epoch}")
        return (RerouteAck(session_id=order.session_id, accepted=True),
                [Notify(EventType.route_computed, sess.session_id, path[0],
                        {"path": list(path), "epoch": epoch, "reason": order.reason}),
                 PushConfigs(sess.session_id, epoch, hop_configs(sess, path, epoch))])

    def tick(self, now: float) -> list[Effect]:
        """Fire every peer-wait and session timer due at ``now``, earliest first."""
        out: list[Effect] = []
        while (key := self._deadlines.pop_due(now)) is not None:
            sess = self.sessions[key[0]]
            if key[1] == "timer":
                sess.timer_deadline = None
                out += self._end(sess, "session timer expired")
                continue
            sess.peer_deadline = None
            sid, node = sess.session_id, sess.initiator.node
            reason = (f"peer {sess.initiator.peer_sae} did not open {sid} within "
                      f"{self.peer_wait_s(sess.initiator.qos):g} s")
            delete = SessionDelete(session_id=sid, node=node, reason=reason, refused=True)
            out += self._terminate(sess, Notify(EventType.admission_refused, sid, node,
                                                {"reason": reason}),
                                   SendDeletes(sid, DeletePurpose.refusal, None, (delete,)))
        return out
