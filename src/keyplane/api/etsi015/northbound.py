"""The SDN Controller's northbound RESTCONF view of the whole QKD network.

ETSI GS QKD 015 models one node; an orchestrator wants the network. :class:`NetworkView`
reads every node's ``qkd_node`` through an :class:`~keyplane.api.etsi015.client.Etsi015Driver`
and serves them side by side, plus a network-wide link list, under the keyplane-defined
(documented, not standardised) top-level member ``keyplane-network:network``::

    {"keyplane-network:network": {
       "node": [{"node-id": "km0", "url": "https://…", "reachable": true,
                 "etsi-qkd-sdn-node:qkd_node": {…the node's tree…}}, …],
       "link": [{"qkdl_id": "…", "qkdl_type": "etsi-qkd-node-types:PHYS",
                 "nodes": ["km0", "km1"], "qkdl_status": "…", "skr": 1234, "qber": "0.021"},
                {"qkdl_id": "…", "qkdl_type": "etsi-qkd-node-types:VIRT",
                 "nodes": ["km2", "km0", "km3"], "virt_bandwidth": 5000}, …]}}

Each ``etsi-qkd-sdn-node:qkd_node`` member is exactly what the node served (validated
against the model in the tests). A node that does not answer appears with
``qkdn_status`` = ``FAILURE`` ("cannot be accessed by SDN controller with communication
failure", etsi-qkd-node-types) and ``reachable: false``.

Freshness: the cache is refreshed when older than ``max_age_s`` (clock seconds) and
immediately after any ETSI 015 notification on the bus (``keyplane.sdn.*.notifications``).

Routes of :func:`create_northbound_app` (read-only; writes answer 405):
``GET /restconf/data/keyplane-network:network``, ``…/network/node=<node-id>`` and
``…/network/node=<node-id>/etsi-qkd-sdn-node:qkd_node[/<resource>]`` (resolved against that
node's tree like the agent does), ``…/network/link``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Any
from urllib.parse import unquote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from keyplane.api.etsi015.client import Etsi015Driver
from keyplane.api.etsi015.datastore import read_resource
from keyplane.api.etsi015.errors import Etsi015Error, RestconfError
from keyplane.api.etsi015.model import ROOT_MEMBER, identity, identity_name, qkdn_id
from keyplane.api.etsi015.restconf import YANG_DATA_JSON, restconf_error_handlers
from keyplane.bus import Bus, Message, Subscription, topics
from keyplane.clock import Clock

__all__ = ["NETWORK_MEMBER", "NetworkView", "create_northbound_app"]

logger = logging.getLogger(__name__)

NETWORK_MEMBER = "keyplane-network:network"


class NetworkView:
    """Aggregated ``qkd_node`` trees of every node (see the module docstring).

    Args:
        driver: the controller's ETSI 015 driver.
        nodes: node id → agent base URL.
        clock: time for cache freshness.
        bus: if given, ETSI 015 notifications on it invalidate the cache.
        max_age_s: how long a fetched view is served before it is refreshed.
    """

    def __init__(self, driver: Etsi015Driver, nodes: Mapping[str, str], clock: Clock, *,
                 bus: Bus | None = None, max_age_s: float = 5.0) -> None:
        self.driver = driver
        self.nodes = dict(nodes)
        self.clock = clock
        self.bus = bus
        self.max_age_s = max_age_s
        self._document: dict[str, Any] | None = None
        self._fetched_at = -float("inf")
        self._lock = asyncio.Lock()
        self._sub: Subscription | None = None

    async def start(self) -> None:
        """Listen for notifications (if a bus was given)."""
        if self.bus is not None and self._sub is None:
            self._sub = await self.bus.subscribe(topics.sdn_notifications("*"), self._on_note)

    async def close(self) -> None:
        """Stop listening; idempotent (the driver is the caller's to close)."""
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def __aenter__(self) -> NetworkView:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    def set_node(self, node_id: str, url: str | None) -> None:
        """Add or move a node (``url``), or drop it (``None``); the next read refetches."""
        if url:
            self.nodes[node_id] = url
        else:
            self.nodes.pop(node_id, None)
        self.invalidate()

    def invalidate(self) -> None:
        """Make the next read fetch from the nodes."""
        self._fetched_at = -float("inf")

    async def _on_note(self, topic: str, msg: Message) -> None:
        self.invalidate()
        return None

    async def document(self) -> dict[str, Any]:
        """The ``keyplane-network:network`` document, refreshed if stale."""
        async with self._lock:
            if self._document is None or self.clock.now() - self._fetched_at > self.max_age_s:
                await self._refresh()
            assert self._document is not None
            return self._document

    async def refresh(self) -> dict[str, Any]:
        """Fetch every node now and return the new document."""
        async with self._lock:
            await self._refresh()
            assert self._document is not None
            return self._document

    async def _refresh(self) -> None:
        started = self.clock.now()
        ids = sorted(self.nodes)
        trees = await asyncio.gather(*(self._fetch(n) for n in ids))
        entries = []
        for node_id, tree in zip(ids, trees, strict=True):
            reachable = tree is not None
            if tree is None:
                tree = {"qkdn_id": qkdn_id(node_id), "qkdn_status": identity("FAILURE")}
            entries.append({"node-id": node_id, "url": self.nodes[node_id],
                            "reachable": reachable, ROOT_MEMBER: tree})
        self._document = {NETWORK_MEMBER: {"node": entries, "link": _network_links(entries)}}
        self._fetched_at = started

    async def _fetch(self, node_id: str) -> dict[str, Any] | None:
        try:
            return await self.driver.client(self.nodes[node_id]).get_node()
        except Etsi015Error as exc:
            logger.warning("northbound view: node %s not readable: %s", node_id, exc)
            return None


def _network_links(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per ``qkdl_id`` across the network (both ends of a PHYS link merged)."""
    by_uuid = {e[ROOT_MEMBER]["qkdn_id"]: e["node-id"] for e in entries}
    links: dict[str, dict[str, Any]] = {}
    for entry in entries:
        for link in entry[ROOT_MEMBER].get("qkd_links", {}).get("qkd_link", []):
            uid = link["qkdl_id"]
            kind = identity_name(link.get("qkdl_type", ""))
            out = links.setdefault(uid, {"qkdl_id": uid,
                                         "qkdl_type": link.get("qkdl_type"), "nodes": []})
            if kind == "VIRT":
                prev = by_uuid.get(link.get("virt_prev_hop", ""))
                here = entry["node-id"]
                out["virt_bandwidth"] = link.get("virt_bandwidth", 0)
                out.setdefault("_hops", []).append((prev, here))
                continue
            if entry["node-id"] not in out["nodes"]:
                out["nodes"].append(entry["node-id"])
            perf = link.get("qkdl_performance", {})
            if "qkdl_status" in link:
                out["qkdl_status"] = link["qkdl_status"]
            if "skr" in perf:
                out["skr"] = perf["skr"]
            for item in perf.get("phys_perf", []):
                if identity_name(item.get("perf_type", "")) == "QBER":
                    out["qber"] = item.get("value")
    for out in links.values():
        hops = out.pop("_hops", None)
        if hops:
            out["nodes"] = _order_path(hops)
        else:
            out["nodes"].sort()
    return sorted(links.values(), key=lambda x: (str(x["qkdl_type"]), x["qkdl_id"]))


def _order_path(hops: list[tuple[str | None, str]]) -> list[str]:
    """Order a VIRT link's nodes from the (prev, here) pairs each node reported."""
    nxt = {prev: here for prev, here in hops if prev is not None and prev != here}
    here_nodes = [here for _, here in hops]
    starts = [h for h in here_nodes if h not in nxt.values()]
    path = [starts[0] if starts else here_nodes[0]]
    while path[-1] in nxt and nxt[path[-1]] not in path:
        path.append(nxt[path[-1]])
    path += [h for h in here_nodes if h not in path]
    return path


def create_northbound_app(view: NetworkView) -> FastAPI:
    """The read-only northbound RESTCONF application of ``view``."""
    app = FastAPI(title="keyplane SDN controller northbound (network view)",
                  docs_url=None, redoc_url=None, openapi_url=None)
    restconf_error_handlers(app)

    @app.api_route("/restconf/data/{path:path}",
                   methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
    async def data(request: Request, path: str) -> Response:
        if request.method not in ("GET", "HEAD"):
            raise RestconfError(405, "operation-not-supported", "the network view is read-only")
        parts = path.strip("/").split("/", 2)
        if parts[0] != NETWORK_MEMBER:
            raise RestconfError(404, "invalid-value", f"no resource {parts[0]!r}")
        doc = (await view.document())[NETWORK_MEMBER]
        if len(parts) == 1:
            body: dict[str, Any] = {NETWORK_MEMBER: doc}
        elif parts[1] == "link":
            body = {"keyplane-network:link": doc["link"]}
        elif parts[1].startswith("node="):
            node_id = unquote(parts[1].removeprefix("node="))
            entry = next((n for n in doc["node"] if n["node-id"] == node_id), None)
            if entry is None:
                raise RestconfError(404, "invalid-value", f"no node {node_id!r}")
            if len(parts) == 2:
                body = {"keyplane-network:node": [entry]}
            elif parts[2].split("/", 1)[0] == ROOT_MEMBER:
                body = read_resource({ROOT_MEMBER: entry[ROOT_MEMBER]}, parts[2])
            else:
                raise RestconfError(404, "invalid-value", f"no resource {parts[2]!r}")
        else:
            raise RestconfError(404, "invalid-value", f"no resource {parts[1]!r}")
        if request.method == "HEAD":
            return Response(status_code=200, media_type=YANG_DATA_JSON)
        return JSONResponse(body, media_type=YANG_DATA_JSON)

    return app

