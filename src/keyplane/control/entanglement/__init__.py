"""The entanglement service: demands for packets of entangled pairs, a central scheduler.

Beside Admission Control (which serves key streams), this element serves the second network
resource of the QuNet'25 framework: packets of entanglement (docs/quantum-networking.md).
:mod:`~keyplane.control.entanglement.model` holds the vocabulary (demands, EIDs, resources),
:mod:`~keyplane.control.entanglement.scheduler` the pure scheduling core.
"""

from keyplane.control.entanglement.model import (
    DemandOutcome,
    DemandState,
    EntangledPair,
    EntanglementDemand,
    EntanglementLink,
    EntanglementNetwork,
    new_eid,
)
from keyplane.control.entanglement.scheduler import (
    Admitted,
    Booking,
    DemandPlan,
    EntanglementScheduler,
    Finished,
    Refused,
    Schedule,
    SchedulerSettings,
)

__all__ = [
    "Admitted",
    "Booking",
    "DemandOutcome",
    "DemandPlan",
    "DemandState",
    "EntangledPair",
    "EntanglementDemand",
    "EntanglementLink",
    "EntanglementNetwork",
    "EntanglementScheduler",
    "Finished",
    "Refused",
    "Schedule",
    "SchedulerSettings",
    "new_eid",
]
