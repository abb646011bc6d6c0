"""Admission Control's QoS rules: what an endpoint asks for, against its owner's SLA, and
what a session gets (issue #17.2: per-application QoS).

What an endpoint asks for (:func:`wanted`):

* **ETSI 004** — its OPEN_CONNECT's QoS: ``priority`` as requested; ``max_bps`` /
  ``min_bps`` as requested, where 0 means "the application's profile, else the SLA's";
  ``Timeout`` as requested.
* **ETSI 014** — no QoS travels with the request, so the application's profile in its
  owner's SLA (:class:`~keyplane.config.ApplicationQos`): its priority, rates and timeout,
  each falling back to the SLA's.

Either way the SLA caps it: a request above the SLA is refused with the reason and an
offer (:func:`qos_offer`: the request capped by the SLA, for the ETSI 004 status 7
counter-proposal); a profile above the SLA cannot be loaded.

What a session gets (:func:`session_qos`): the lower priority and rate of its endpoints
(neither gets more than it asked for or its SLA allows), the higher reservation, each
endpoint's own timeout.
"""

from __future__ import annotations

from dataclasses import dataclass

from keyplane.config import SlaProfile
from keyplane.control.admission.model import AdmissionSession, Endpoint
from keyplane.control.settings import AdmissionSettings
from keyplane.messages import HopRole, Qos, SessionConfig

__all__ = ["SessionQos", "Wanted", "check_qos", "hop_configs", "qos_offer", "session_qos",
           "wanted"]


@dataclass(frozen=True)
class Wanted:
    """One endpoint's effective request (profile and SLA applied)."""

    priority: int
    max_bps: float
    reserve_bps: float  # what must be reserved on every link for it
    timeout_ms: int | None


@dataclass(frozen=True)
class SessionQos:
    """What the session is configured with at every KM of its path."""

    priority: int
    rate_bps: float
    min_bps: float


def check_qos(qos: Qos, sla: SlaProfile, settings: AdmissionSettings) -> str | None:
    """Why ``qos`` exceeds ``sla`` or the settings' bounds, or None when it fits."""
    rate = qos.max_bps or sla.max_bps
    if qos.max_bps > sla.max_bps:
        return f"max_bps {qos.max_bps} above the SLA's {sla.max_bps}"
    if qos.min_bps > sla.max_bps:
        return f"min_bps {qos.min_bps} above the SLA's max_bps {sla.max_bps}"
    if qos.min_bps > rate:
        return f"min_bps {qos.min_bps} above max_bps {rate}"
    if qos.priority > sla.priority:
        return f"priority {qos.priority} above the SLA's {sla.priority}"
    if qos.key_chunk_size > settings.max_key_chunk_size:
        return (f"key_chunk_size {qos.key_chunk_size} above the limit "
                f"{settings.max_key_chunk_size}")
    if qos.ttl_s > settings.max_key_ttl_s:
        return f"ttl_s {qos.ttl_s} above the limit {settings.max_key_ttl_s}"
    if qos.jitter > rate:
        return f"jitter {qos.jitter} larger than the rate {rate}"
    return None


def qos_offer(qos: Qos, sla: SlaProfile, settings: AdmissionSettings) -> Qos:
    """``qos`` capped by ``sla`` and the settings' bounds: what would be admitted."""
    max_bps = min(qos.max_bps, sla.max_bps)
    rate = max_bps or sla.max_bps
    return qos.model_copy(update={
        "max_bps": max_bps, "min_bps": min(qos.min_bps, rate),
        "priority": min(qos.priority, sla.priority),
        "key_chunk_size": min(qos.key_chunk_size, settings.max_key_chunk_size),
        "ttl_s": min(qos.ttl_s, settings.max_key_ttl_s), "jitter": min(qos.jitter, rate)})


def wanted(ep: Endpoint, interface: str) -> Wanted:
    """What ``ep`` asks for once its application's profile and its SLA apply."""
    sla, qos = ep.sla, ep.qos
    profile = sla.application(ep.sae_id)
    profile_max = profile.max_bps if profile.max_bps is not None else sla.max_bps
    rate = float(min(qos.max_bps or profile_max, sla.max_bps))
    floor = max(qos.min_bps or (profile.min_bps or 0), sla.min_bps)
    if interface == "etsi014":
        priority = profile.priority if profile.priority is not None else sla.priority
        timeout = profile.timeout_ms
    else:
        priority, timeout = qos.priority, qos.timeout_ms
    return Wanted(priority=min(priority, sla.priority), max_bps=rate,
                  reserve_bps=float(min(floor, rate)), timeout_ms=timeout)


def session_qos(endpoints: list[Endpoint], interface: str) -> SessionQos:
    """The session's configuration from its endpoints' requests."""
    ws = [wanted(e, interface) for e in endpoints]
    return SessionQos(priority=min(w.priority for w in ws),
                      rate_bps=min(w.max_bps for w in ws),
                      min_bps=max(w.reserve_bps for w in ws))


def hop_configs(sess: AdmissionSession, path: tuple[str, ...],
                epoch: int) -> tuple[SessionConfig, ...]:
    """Each KM's configuration for ``sess`` over ``path`` (its own hop only, the session's
    QoS, at an endpoint its application's wait bound)."""
    init, last = sess.initiator, len(path) - 1
    # each endpoint's own wait bound (ETSI 014: the master's profile at both ends)
    timeouts = {0: wanted(init, sess.interface).timeout_ms,
                last: wanted(sess.responder or init, sess.interface).timeout_ms}
    out = []
    for i, node in enumerate(path):
        role = (HopRole.source if i == 0 else
                HopRole.destination if i == last else HopRole.intermediate)
        opened_as = None
        if (i == last and sess.responder is not None
                and sess.responder.opened_as != sess.session_id):
            opened_as = sess.responder.opened_as
        out.append(SessionConfig(
            session_id=sess.session_id, node=node, epoch=epoch, role=role,
            prev_km=path[i - 1] if i > 0 else None,
            next_km=path[i + 1] if i < last else None,
            source_sae=init.sae_id, destination_sae=init.peer_sae,
            local_sae=init.sae_id if i == 0 else init.peer_sae if i == last else None,
            priority=sess.priority, bucket_size_bits=sess.bucket_size_bits,
            token_rate_bps=sess.rate_bps, idle_timeout_s=sess.idle_timeout_s,
            key_chunk_size=sess.key_chunk_size,
            hybrid_policy=sess.hybrid_policy, opened_as=opened_as,
            min_bps=sess.min_bps, timeout_ms=timeouts.get(i)))
    return tuple(out)
