"""Routing Element: capacity-aware shortest paths over the QKD link graph (paper §III).

Map:

* :class:`RoutingCore` — pure logic, no I/O: a :mod:`networkx` graph of nodes and PHYS
  links (built from the SDN Controller's topology), link weights from monitored metrics
  (:class:`MetricWeight`, see :class:`~keyplane.control.settings.RoutingSettings` for the
  formula), per-link capacity and the reservations of live sessions, reroute planning.
* :class:`RoutingElement` — the bus shell: answers :class:`~keyplane.control.wire.RouteRequest`,
  follows :class:`~keyplane.messages.TopologyChange` and :class:`~keyplane.messages.LinkAlarm`,
  takes the Monitoring Element's :class:`~keyplane.control.wire.LinkMetricsReport`, and
  orders Admission Control to move the sessions of a link that went down or raised an alarm.

Decisions:

* Paths are computed with bidirectional Dijkstra on a weight *function* that hides a link
  (returns ``None``) when it is out of service or lacks the requested free capacity, so no
  filtered copy of the graph is built per request; each link's capacity ledger makes the
  capacity check O(1) per edge, so a request costs the same with 10,000 live sessions as
  with none (docs/benchmarks.md).
* A reservation is keyed by ``(session, epoch)``. A link's reserved rate counts each session
  once (its largest epoch reservation on that link), so while a session moves from its old
  path to its new one the links both share are not counted twice.
* Rerouting reserves the new path (epoch + 1) before telling Admission Control, and the old
  epoch stays reserved until Admission has removed the old forwarding entries: at no point
  is a live session without a reserved path.
* Restart (docs/control.md, "Controller restart"): reservations live in memory; Admission
  Control owns the sessions (and persists them). A starting Routing Element asks Admission
  for its :class:`~keyplane.control.wire.LiveSessions`, and a starting Admission sends them;
  either way :meth:`RoutingElement.apply_live_sessions` re-holds the capacity on the paths
  the sessions use (:meth:`RoutingCore.restore`) and frees reservations nobody owns.
* Hybrid provisioning (docs/hybrid.md): a request carries the session's hybrid policy. A
  link without QKD key (:meth:`RoutingCore.has_qkd_key`) is hidden from every session except
  those whose policy allows PQC alone (``pqc_fallback``); for those it costs
  ``pqc_hop_penalty`` more and its QKD capacity is not checked. When such a link fails, a
  fallback session moves only if a better path exists; otherwise it keeps its path and its
  KMs switch that hop to ML-KEM.

Modules: :mod:`.weights` (weight functions), :mod:`.core` (graph, ledgers, reservations,
paths), :mod:`.shell` (the bus shell).
"""

from keyplane.control.routing.core import NoRoute, Reservation, Route, RoutingCore
from keyplane.control.routing.shell import RoutingElement
from keyplane.control.routing.weights import MetricWeight, WeightFunction, hop_weight

__all__ = [
    "MetricWeight",
    "NoRoute",
    "Reservation",
    "Route",
    "RoutingCore",
    "RoutingElement",
    "WeightFunction",
    "hop_weight",
]
