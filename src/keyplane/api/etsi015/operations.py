"""The live figures of a node's datastore: telemetry, alarms, statistics, key provenance.

A mixin of :class:`~keyplane.api.etsi015.datastore.NodeDatastore` (kept apart so each module
stays readable): everything here updates the node's operational records — never the
configuration tree — and returns the ETSI 015 notifications it causes. A telemetry sample
costs O(1): it keeps the latest figures of its link (:class:`~keyplane.api.etsi015.entries.PhysOps`)
and reads the link's expected consumption from running sums
(:class:`~keyplane.api.etsi015.demand.Demand`); nothing is rebuilt per sample.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from keyplane.api.etsi015.entries import (
    HOP_SOURCES,
    AppOps,
    AppProvenance,
    HopProvenance,
    LinkStatus,
    Notification,
    PerfThresholds,
    PhysOps,
)
from keyplane.api.etsi015.model import identity
from keyplane.config import HybridPolicy
from keyplane.messages import LinkState, SdnNotificationName

__all__ = ["DOWN_STATES", "LiveFigures", "NodeStatus"]

NodeStatus = Literal["NEW", "OPERATING", "DOWN", "FAILURE", "OUT"]
DOWN_STATES = ("PASSIVE", "OFF")


class LiveFigures(ABC):
    """Operational state of one node (see the module docstring); mixed into the datastore."""

    status: NodeStatus
    thresholds: PerfThresholds
    statistics_periods_kept: int
    _phys: dict[str, PhysOps]
    _by_link_id: dict[str, str]
    _apps: dict[str, AppOps]
    _provenance: dict[str, AppProvenance]
    _virt_sources: dict[str, dict[str, str]]

    @abstractmethod
    def _link_performance(self, uid: str) -> dict[str, Any]:
        """The ``qkdl_performance`` of link ``uid`` (the datastore computes it)."""

    def set_status(self, status: NodeStatus) -> None:
        """Set ``qkdn_status`` (the agent: OPERATING when started, OUT when closed)."""
        self.status = status

    def apply_telemetry(self, link_id: str, *, state: LinkState, skr_bps: float,
                        qber: float | None, wall_s: float) -> list[Notification]:
        """Take one :class:`~keyplane.messages.LinkTelemetry` sample of a topology link.

        Returns:
            ``sdqkdn_link_down`` / ``event`` on a status change, ``sdqkdn_link_perf_update``
            on a major change (see :class:`PerfThresholds`), ``sdqkdn_link_overloaded`` when the
            expected consumption starts to exceed the skr. Empty for links of other nodes.
        """
        uid = self._by_link_id.get(link_id)
        if uid is None:
            return []
        ops = self._phys[uid]
        if math.isfinite(skr_bps):
            ops.skr_bps = max(0.0, skr_bps)
        if qber is not None and math.isfinite(qber):
            ops.qber = min(1.0, max(0.0, qber))
        notes: list[Notification] = []
        target: LinkStatus = "ACTIVE"
        if not ops.enabled:
            target = "OFF"
        elif state is LinkState.down:
            target = "PASSIVE" if (ops.buffer_bits or 0) > 0 else "OFF"
        if target != ops.status:
            notes += self._status_change(uid, ops, target, f"telemetry: link {state.value}",
                                         wall_s)
        if self._perf_changed(ops) or notes:
            notes.append(self._perf_update(uid, ops, wall_s))
            ops.reported_skr_bps, ops.reported_qber = ops.skr_bps, ops.qber
        notes += self._overload_check(uid, ops, wall_s)
        return notes

    def apply_buffer(self, link_id: str, buffer_bits: int) -> None:
        """Record the KM's stored key for a link (PASSIVE vs OFF when it stops generating)."""
        uid = self._by_link_id.get(link_id)
        if uid is not None:
            self._phys[uid].buffer_bits = buffer_bits

    def apply_alarm(self, link_id: str, *, kind: str, severity: Literal["MAJOR", "MINOR"],
                    message: str, wall_s: float) -> list[Notification]:
        """Take a :class:`~keyplane.messages.LinkAlarm` for a topology link.

        ``link_down`` marks the link down (``sdqkdn_link_down``), ``cleared`` marks it ACTIVE
        again; every alarm also yields an ETSI 015 ``alarm`` (``event`` for ``cleared``).
        """
        uid = self._by_link_id.get(link_id)
        if uid is None:
            return []
        ops = self._phys[uid]
        notes: list[Notification] = []
        if kind == "link_down":
            ops.alarmed = True
            down: LinkStatus = "PASSIVE" if (ops.buffer_bits or 0) > 0 else "OFF"
            if ops.status != down:
                notes += self._status_change(uid, ops, down, message or "link down", wall_s)
        elif kind == "cleared":
            ops.alarmed = False
            if ops.status != "ACTIVE" and ops.enabled:
                notes += self._status_change(uid, ops, "ACTIVE", message or "cleared", wall_s)
        name: SdnNotificationName = "event" if kind == "cleared" else "alarm"
        text = f"{kind}: {message}" if message else kind
        notes.append(Notification(name, {"link": {
            "qkdl_id": uid, "qkdl_status": identity(ops.status), "message": text,
            "severity": identity(severity)}}, wall_s))
        return notes

    def record_consumption(self, app_uuid: str, bits: int) -> None:
        """Add key bits delivered to an application in the current statistics period."""
        ops = self._apps.get(app_uuid)
        if ops is not None:
            ops.period_bits += max(0, bits)

    def set_hybrid_policy(self, app_uuid: str, policy: str | HybridPolicy) -> None:
        """Record the hybrid policy the node's KM enforces for a session's ``qkd_app``.

        Raises:
            ValueError: not a policy name (``qkd-only``, ``qkd-and-pqc``, ``at-least-qkd``,
                ``either``).
        """
        value = HybridPolicy(policy).value
        self._provenance.setdefault(app_uuid, AppProvenance()).hybrid_policy = value

    def record_provenance(self, app_uuid: str, hops: Iterable[Mapping[str, Any]]) -> None:
        """Count a delivered batch's provenance for a session's ``qkd_app``.

        Args:
            app_uuid: the session's ``app_id``.
            hops: ``{"hop", "key_count": {source: n}, "last_source"}`` per hop, in path
                order (the ``provenance_counts`` of a ``key_delivered`` event,
                :func:`keyplane.keymanager.hybrid.count_provenance`). Malformed entries
                and unknown sources are skipped.
        """
        for entry in hops:
            if not isinstance(entry, Mapping):
                continue
            hop = entry.get("hop")
            counts = entry.get("key_count")
            last = entry.get("last_source")
            if not (isinstance(hop, str) and "->" in hop and isinstance(counts, Mapping)
                    and last in HOP_SOURCES):
                continue
            valid = {source: n for source, n in counts.items()
                     if source in HOP_SOURCES and isinstance(n, int) and n > 0}
            if not valid:
                continue
            provenance = self._provenance.setdefault(app_uuid, AppProvenance())
            record = provenance.hops.setdefault(hop, HopProvenance())
            for source, n in valid.items():
                record.key_count[source] = record.key_count.get(source, 0) + n
            record.last_source = last

    def record_hop_source(self, qkdl_uuid: str, hop: str, source: str) -> None:
        """Record the source of the last key batch this node sent over ``hop`` for the
        session whose VIRT link is ``qkdl_uuid`` (shown once that link exists here)."""
        if source in HOP_SOURCES and "->" in hop:
            self._virt_sources.setdefault(qkdl_uuid, {})[hop] = source

    def forget_provenance(self, app_uuid: str, qkdl_uuid: str) -> None:
        """Drop a session's provenance state (its KM ended the session)."""
        self._provenance.pop(app_uuid, None)
        self._virt_sources.pop(qkdl_uuid, None)

    def close_statistics_period(self, wall_s: float) -> None:
        """End the current ``app_statistics`` period of every application at ``wall_s``."""
        for ops in self._apps.values():
            if wall_s <= ops.period_start_s:
                continue
            ops.statistics.append((ops.period_start_s, wall_s, ops.period_bits))
            del ops.statistics[:-self.statistics_periods_kept]
            ops.period_start_s = wall_s
            ops.period_bits = 0

    def _status_change(self, uid: str, ops: PhysOps, target: LinkStatus, reason: str,
                       wall_s: float) -> list[Notification]:
        before = ops.status
        ops.status = target
        self._update_node_status()
        if target in DOWN_STATES and before not in DOWN_STATES:
            return [Notification("sdqkdn_link_down",
                                 {"qkd_link": {"qkdl_id": uid, "reason": reason}}, wall_s)]
        if target == "ACTIVE" and before != "ACTIVE":
            return [Notification("event", {"link": {
                "qkdl_id": uid, "qkdl_status": identity("ACTIVE"),
                "message": f"link active ({reason})", "severity": identity("MINOR")}}, wall_s)]
        return []

    def _update_node_status(self) -> None:
        if self.status not in ("OPERATING", "DOWN") or not self._phys:
            return
        enabled = [o for o in self._phys.values() if o.enabled]
        all_down = bool(enabled) and all(o.status in DOWN_STATES for o in enabled)
        self.status = "DOWN" if all_down else "OPERATING"

    def _perf_changed(self, ops: PhysOps) -> bool:
        if ops.skr_bps is None:
            return False
        if ops.reported_skr_bps is None:
            return True
        base = max(ops.reported_skr_bps, 1.0)
        if abs(ops.skr_bps - ops.reported_skr_bps) / base >= self.thresholds.skr_ratio:
            return True
        if ops.qber is None or ops.reported_qber is None:
            return ops.qber is not None
        return abs(ops.qber - ops.reported_qber) >= self.thresholds.qber_abs

    def _perf_update(self, uid: str, ops: PhysOps, wall_s: float) -> Notification:
        perf = self._link_performance(uid)
        return Notification("sdqkdn_link_perf_update",
                            {"qkd_link": {"qkdl_id": uid, "performance": perf}}, wall_s)

    def _overload_check(self, uid: str, ops: PhysOps, wall_s: float) -> list[Notification]:
        perf = self._link_performance(uid)
        over = ops.skr_bps is not None and perf.get("expected_consumption", 0) > ops.skr_bps
        was, ops.overloaded = ops.overloaded, over
        if over and not was:
            common = {k: v for k, v in perf.items() if k != "phys_perf"}
            return [Notification("sdqkdn_link_overloaded",
                                 {"qkd_link": {"qkdl_id": uid, "performance": common}}, wall_s)]
        return []
