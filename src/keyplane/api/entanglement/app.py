"""The node-side entanglement API: an application asks its node for packets of entangled
pairs and reads them back, each with its EID (ITU-T Y Suppl. 98 clause 8.3).

Served on the node's mutual-TLS server under :data:`ENTANGLEMENT_PREFIX` beside ETSI 014
and 004 (:func:`keyplane.api.server.create_km_app`). The caller is the application its
verified client certificate owns on this node, chosen as for ETSI 014
(:func:`keyplane.api.auth.resolve_sae`, ``X-SAE-ID`` only among its own SAEs); no body
field names the caller. Errors are ETSI 014's ``{"message", "details"}``:

* ``POST /v1/demands`` with ``{peer_sae_id, packets, packet_size, min_fidelity,
  deadline_s, priority}``: 201 the admitted demand; 400 a bad body or peer; 401 no
  identity; 503 refused (``details[0].reason``) or no answer from the service.
* ``GET /v1/demands``: 200 the caller's demands (without pairs).
* ``GET /v1/demands/{demand_id}``: 200 the demand with every pair delivered to this node
  so far; 404 when it is not the caller's.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from keyplane.api.auth import caller_from_scope, resolve_sae
from keyplane.api.entanglement.agent import DemandRecord, NodeEntanglementAgent
from keyplane.api.openapi import drop_validation_responses
from keyplane.api.routing import install_error_handlers
from keyplane.api.settings import ApiSettings

__all__ = ["ENTANGLEMENT_PREFIX", "DemandBody", "create_entanglement_app", "demand_json"]

ENTANGLEMENT_PREFIX = "/entanglement"
"""Where :func:`keyplane.api.server.create_km_app` mounts this app."""


class DemandBody(BaseModel):
    """What an application asks for; the bounds are the service's
    (:class:`~keyplane.control.entanglement.model.EntanglementDemand`)."""

    model_config = ConfigDict(extra="forbid")

    peer_sae_id: Annotated[str, Field(min_length=1, max_length=256)]
    """The application at the other end node the pairs are shared with."""
    packets: Annotated[int, Field(ge=1, le=100_000)] = 1
    packet_size: Annotated[int, Field(ge=1, le=64)] = 1
    """Pairs per packet; they coexist when the packet is complete."""
    min_fidelity: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.8
    deadline_s: Annotated[float, Field(gt=0.0, le=86_400.0)] = 10.0
    """Seconds from submission by which every packet must be delivered."""
    priority: Annotated[int, Field(ge=0, le=7)] = 0


def demand_json(rec: DemandRecord, *, pairs: bool) -> dict[str, Any]:
    """The wire form of one demand (``pairs``: with its delivered pairs)."""
    out: dict[str, Any] = {
        "demand_id": rec.demand_id, "sae_id": rec.app, "peer_sae_id": rec.peer_app,
        "role": rec.role, "state": rec.state.value, "reason": rec.reason, "path": rec.path,
        "expected_fidelity": rec.expected_fidelity,
        "delivered_packets": rec.delivered_packets}
    if pairs:
        out["pairs"] = [{"eid": p.eid, "packet": p.packet, "node_a": p.node_a,
                         "node_b": p.node_b, "fidelity": p.fidelity,
                         "delivered_t": p.delivered_t} for p in rec.pairs]
    return out


def create_entanglement_app(agent: NodeEntanglementAgent, *,
                            settings: ApiSettings | None = None) -> FastAPI:
    """The entanglement API of one node.

    Args:
        agent: the node's agent (forwards demands, holds the pairs delivered here).
        settings: the node's SAEs and their owners (who may act as which SAE).
    """
    cfg = settings or ApiSettings()
    app = FastAPI(title="keyplane node entanglement API", version="1",
                  description="Packets of entangled pairs with EIDs, per application, over "
                              "HTTPS with mutual TLS.")
    install_error_handlers(app)

    def caller_sae(request: Request) -> str:
        return resolve_sae(request.scope, caller_from_scope(request.scope), cfg)

    @app.post("/v1/demands", status_code=201, summary="Submit a demand")
    async def submit(request: Request, body: DemandBody) -> JSONResponse:
        """Ask for ``packets`` packets of ``packet_size`` pairs with ``peer_sae_id``."""
        sae = caller_sae(request)
        rec = await agent.submit(sae, body.peer_sae_id, packets=body.packets,
                                 packet_size=body.packet_size, min_fidelity=body.min_fidelity,
                                 deadline_s=body.deadline_s, priority=body.priority)
        return JSONResponse(demand_json(rec, pairs=False), status_code=201)

    @app.get("/v1/demands", summary="The caller's demands")
    async def list_demands(request: Request) -> JSONResponse:
        """Every demand of the caller held on this node, without pairs."""
        sae = caller_sae(request)
        return JSONResponse({"demands": [demand_json(r, pairs=False)
                                         for r in agent.demands_of(sae)]})

    @app.get("/v1/demands/{demand_id}", summary="One demand with its pairs")
    async def get_demand(request: Request,
                         demand_id: Annotated[str, Path(min_length=1, max_length=256)]
                         ) -> JSONResponse:
        """The demand and every pair delivered to this node so far, each with its EID."""
        sae = caller_sae(request)
        return JSONResponse(demand_json(agent.view(sae, demand_id), pairs=True))

    drop_validation_responses(app)
    return app
