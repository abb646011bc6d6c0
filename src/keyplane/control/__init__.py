"""The control plane: Access Control, Admission Control, Routing Element, Monitoring Element,
SDN Controller (paper Fig. 1 and 2; DESIGN.md §1–2).

Every element talks to key managers only over the bus, with the models of
:mod:`keyplane.messages`, and to the other elements with :mod:`keyplane.control.wire`;
each runs alone or together in a :class:`ControlPlane`. Operator guide: docs/control.md.
"""

from keyplane.control.access import AccessControl, AccessDecision, RefusalReason, decide
from keyplane.control.admission import (
    AdmissionControl,
    AdmissionCore,
    AdmissionSession,
    AdmissionState,
    check_qos,
)
from keyplane.control.monitoring import MonitoringCore, MonitoringElement
from keyplane.control.plane import ELEMENTS, ControlPlane, run_controller
from keyplane.control.routing import (
    MetricWeight,
    NoRoute,
    Reservation,
    Route,
    RoutingCore,
    RoutingElement,
    WeightFunction,
    hop_weight,
)
from keyplane.control.sdn import SdnController, SdnLink, SdnModel, SdnNode, qkd_uuid
from keyplane.control.settings import (
    AccessSettings,
    AdmissionSettings,
    ControlSettings,
    MonitoringSettings,
    RoutingSettings,
    SdnSettings,
)

__all__ = [
    "ELEMENTS",
    "AccessControl",
    "AccessDecision",
    "AccessSettings",
    "AdmissionControl",
    "AdmissionCore",
    "AdmissionSession",
    "AdmissionSettings",
    "AdmissionState",
    "ControlPlane",
    "ControlSettings",
    "MetricWeight",
    "MonitoringCore",
    "MonitoringElement",
    "MonitoringSettings",
    "NoRoute",
    "RefusalReason",
    "Reservation",
    "Route",
    "RoutingCore",
    "RoutingElement",
    "RoutingSettings",
    "SdnController",
    "SdnLink",
    "SdnModel",
    "SdnNode",
    "SdnSettings",
    "WeightFunction",
    "check_qos",
    "decide",
    "hop_weight",
    "qkd_uuid",
    "run_controller",
]
