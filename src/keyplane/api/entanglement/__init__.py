"""The node-side entanglement API (docs/quantum-networking.md, "The node-side API")."""

from keyplane.api.entanglement.agent import (
    DemandRecord,
    EntanglementApiSettings,
    NodeEntanglementAgent,
)
from keyplane.api.entanglement.app import (
    ENTANGLEMENT_PREFIX,
    DemandBody,
    create_entanglement_app,
    demand_json,
)

__all__ = [
    "ENTANGLEMENT_PREFIX",
    "DemandBody",
    "DemandRecord",
    "EntanglementApiSettings",
    "NodeEntanglementAgent",
    "create_entanglement_app",
    "demand_json",
]
