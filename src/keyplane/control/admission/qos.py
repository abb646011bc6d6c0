"""Admission Control's QoS rules: a request against its owner's SLA, and what is reserved."""

from __future__ import annotations

from keyplane.config import SlaProfile
from keyplane.control.admission.model import Endpoint
from keyplane.control.settings import AdmissionSettings
from keyplane.messages import Qos

__all__ = ["check_qos"]


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


def _reserve_bps(ep: Endpoint) -> float:
    rate = ep.qos.max_bps or ep.sla.max_bps
    return float(min(max(ep.qos.min_bps, ep.sla.min_bps), rate))
