"""Idle expiry agreed by both ends of a session: the probe along its path (pure).

Why: each endpoint KM runs its own idle timer, reset by its own application's key
requests. Two applications that ask in lockstep (each waits for the other before asking
for the next index) leave one end silent for as long as the other end waits; if the other
end waits because the path is down (an intermediate KM restarting), the silent end used to
close the session for idleness while the busy end's application was still waiting on it
(ETSI 004 status 3 at both ends once the path came back). A session is idle only when
*both* ends are.

So when a stream's idle deadline passes, its KM does not close it at once: it asks the
other endpoint KM, hop by hop along the session's current path (``SessionProbe`` on each
hop's relay topic, a bus request; intermediates forward by the probe's epoch), how long
its end has been idle:

* ``active`` (an exchange in flight) or idle for less than the idle timeout: the stream's
  deadline becomes the idle timeout after the *peer's* last activity (never sooner than a
  quarter of the timeout from now, so two ends do not probe each other in a tight loop);
* idle for the timeout too, or ``ended`` (the peer KM holds no live stream of that id):
  the stream closes for ``idle_timeout`` as before;
* no answer (``unknown``: a hop or the peer KM is down, restarting, or slower than
  ``idle_probe_timeout_s``): the path is in a fault and the stream is *held*. The KM
  sends Admission Control a KeepAlive (its session timer must not end a session an
  endpoint holds for a fault either) and probes again half an idle timeout later, until
  ``idle_hold_max_s`` without an answer, after which it closes: a peer that never comes
  back does not hold a session forever.

Everything here takes ``now`` and returns what to do; :class:`~.core.KmCore` applies it and
the shell (:mod:`~keyplane.keymanager.shell`) sends the probes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from keyplane.keymanager.session import SessionState
from keyplane.keymanager.stream import Stream
from keyplane.messages import HopRole

__all__ = ["Answer", "Forward", "PeerState", "ProbeVerdict", "answer_for", "next_idle_deadline",
           "probe_hop", "route"]

PeerState = Literal["active", "idle", "ended", "unknown"]
"""What a probe learned of the other end (``unknown``: no answer, the path is in a fault)."""


@dataclass(frozen=True)
class Answer:
    """This KM answers a probe itself (it is the target endpoint, or cannot route it)."""

    state: PeerState
    idle_for_s: float = 0.0


@dataclass(frozen=True)
class Forward:
    """This KM is an intermediate of the probe's epoch: pass it on to ``to``."""

    to: str


@dataclass(frozen=True)
class ProbeVerdict:
    """What a probe's answer means for the prober's stream: ``close`` it, or wait until
    ``deadline`` (``hold``: the peer could not be reached, signal Admission Control)."""

    close: bool
    deadline: float = 0.0
    hold: bool = False


def probe_hop(s: Stream) -> tuple[str, int] | None:
    """``(neighbour, epoch)`` a probe of ``s`` leaves by: toward the other endpoint on the
    current path; None when there is no such hop (both applications on this node)."""
    cfg = s.config
    if cfg is None:
        return None
    hop = cfg.next_km if cfg.role is HopRole.source else cfg.prev_km
    return None if hop is None else (hop, cfg.epoch)


def answer_for(s: Stream | None, now: float) -> Answer:
    """The target endpoint's answer: how long its end of the session has been idle."""
    if s is None or not s.live:
        return Answer("ended")
    if s.machine.state is SessionState.key_exchanging:
        return Answer("active")
    return Answer("idle", max(0.0, now - s.last_active))


def route(node_id: str, target: str, sender: str, prev_km: str | None, next_km: str | None,
          role: HopRole | None) -> Forward | Answer | None:
    """An intermediate's step for a probe that came from ``sender``: where it goes next.

    Returns None when this KM is the target (it answers from its stream), an ``unknown``
    answer when it has no hop for the probe (its entry is gone, or the probe came from a
    KM that is not one of its hops): a KM that cannot route a probe says nothing about the
    session, so the prober holds it rather than closing it.
    """
    if target == node_id:
        return None
    if role is not HopRole.intermediate:
        return Answer("unknown")
    if sender == prev_km and next_km is not None:
        return Forward(next_km)
    if sender == next_km and prev_km is not None:
        return Forward(prev_km)
    return Answer("unknown")


def next_idle_deadline(s: Stream, state: PeerState, idle_for_s: float, now: float,
                       hold_max_s: float) -> ProbeVerdict:
    """The prober's decision on the other end's answer (see the module docstring).

    ``s.held_since`` records when the peer first stopped answering (None once it answers).
    """
    timeout = s.machine.idle_timeout_s
    if state == "unknown":
        if s.held_since is None:
            s.held_since = now
        if now - s.held_since >= hold_max_s:
            return ProbeVerdict(close=True)
        return ProbeVerdict(close=False, deadline=now + timeout / 2, hold=True)
    s.held_since = None
    if state == "active":
        return ProbeVerdict(close=False, deadline=now + timeout)
    if state == "idle" and idle_for_s < timeout:
        return ProbeVerdict(close=False, deadline=now + max(timeout - idle_for_s, timeout / 4))
    return ProbeVerdict(close=True)
