"""Monitoring Element: link telemetry, latched alarms, eavesdropper detection, link tests
(paper §III).

Inputs, on ``keyplane.telemetry.>``: :class:`~keyplane.messages.LinkTelemetry` from each
link's QKD modules (SKR, QBER and its sample size, state, per block or period) and
:class:`~keyplane.messages.KmTelemetry` from each KM (link key buffer levels, live
sessions per link); answers to the element's own link tests. The latest figures stay in
memory; those of the links that changed go to the topology database (``link_metrics``)
and to the Routing Element at most once per ``persist_interval_s``.

Alarms (:class:`~keyplane.messages.LinkAlarm` on ``keyplane.alarms.<link>``, plus an
``alarm`` event; the SDN Controller and each node's ETSI 015 agent turn them into link
status and ETSI 015 ``alarm`` notifications, the Routing Element takes the link out of
service and moves its sessions): ``link_down``, ``eavesdropper_suspected``,
``qber_high``, ``key_rate_collapse``, then ``cleared``. Every one is latched with
hysteresis and a minimum hold time (:mod:`.alarms`); the eavesdropper test compares each
link's QBER with its own baseline in standard errors (:mod:`.detection`).

Modules: :mod:`.alarms`, :mod:`.detection`, :mod:`.core` (the pure logic),
:mod:`.shell` (the bus shell, persistence at a bounded rate, link tests).
"""

from keyplane.control.monitoring.alarms import AlarmLatch
from keyplane.control.monitoring.core import KINDS, LinkHealth, MonitoringCore
from keyplane.control.monitoring.detection import QberBaseline, Verdict
from keyplane.control.monitoring.shell import MonitoringElement
from keyplane.control.settings import AlarmKind

__all__ = [
    "KINDS",
    "AlarmKind",
    "AlarmLatch",
    "LinkHealth",
    "MonitoringCore",
    "MonitoringElement",
    "QberBaseline",
    "Verdict",
]
