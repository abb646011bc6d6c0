"""The SDN Controller's side of ETSI GS QKD 015: a RESTCONF client and a driver over it.

* :class:`Etsi015Client` — one node's RESTCONF API (httpx, mutual TLS with the controller
  certificate): typed GETs of the tree and its parts, and the writes a controller makes.
* :class:`Etsi015Driver` — what the SDN Controller element calls: ``discover`` a node,
  ``register_virtual_link`` / ``remove_virtual_link``, ``register_application`` /
  ``remove_application``, and ``provision_path`` / ``release_path``, which put a relayed
  session's VIRT link on every node of its path (and roll back the nodes already done if one
  fails).

httpx exceptions stop here: a RESTCONF error answer becomes
:class:`~keyplane.api.etsi015.errors.Etsi015ClientError`, no answer (connection, TLS, timeout)
:class:`~keyplane.api.etsi015.errors.Etsi015Unreachable`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

from keyplane.api.etsi015.datastore import QkdApplication, VirtualLink
from keyplane.api.etsi015.errors import Etsi015ClientError, Etsi015Unreachable
from keyplane.api.etsi015.model import MODULE, ROOT_MEMBER, identity_name, qkdl_id
from keyplane.certs import CertPaths, client_ssl_context

__all__ = [
    "Etsi015Client",
    "Etsi015Driver",
    "NodeDescription",
    "PathHop",
]

logger = logging.getLogger(__name__)

_HEADERS = {"Accept": "application/yang-data+json",
            "Content-Type": "application/yang-data+json"}


def _member(body: dict[str, Any], name: str) -> Any:
    """A top-level member, qualified (RFC 7951) or not (lenient agents)."""
    if f"{MODULE}:{name}" in body:
        return body[f"{MODULE}:{name}"]
    return body.get(name)


class Etsi015Client:
    """RESTCONF client of one SDN agent.

    Args:
        base_url: the agent's base URL, e.g. ``https://10.0.0.1:8443``.
        ssl_context: client TLS context presenting the controller certificate
            (:func:`keyplane.certs.client_ssl_context`); None for plain HTTP.
        timeout_s: bound on each request (connect, read, write, pool).
        transport: an httpx transport (tests: ``httpx.ASGITransport`` to an in-process app).
    """

    def __init__(self, base_url: str, *, ssl_context: ssl.SSLContext | None = None,
                 timeout_s: float = 5.0, transport: httpx.AsyncBaseTransport | None = None
                 ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=_HEADERS,
                                       verify=ssl_context if ssl_context is not None else True,
                                       timeout=timeout_s, transport=transport)

    async def close(self) -> None:
        """Close the connection pool; idempotent."""
        await self._http.aclose()

    async def __aenter__(self) -> Etsi015Client:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def request(self, method: str, path: str, body: Any = None,
                      params: dict[str, str] | None = None) -> httpx.Response:
        """One RESTCONF request on ``/restconf/data/<path>``.

        Raises:
            Etsi015ClientError: the agent answered with a status >= 400.
            Etsi015Unreachable: connection, TLS or timeout failure.
        """
        url = "/restconf/data/" + path.strip("/")
        try:
            response = await self._http.request(method, url, json=body, params=params)
        except httpx.HTTPError as exc:
            raise Etsi015Unreachable(f"{method} {self.base_url}{url}: {exc!r}") from exc
        if response.status_code >= 400:
            errors: list[dict[str, Any]] = []
            try:
                errors = response.json()["ietf-restconf:errors"]["error"]
            except (ValueError, KeyError, TypeError):
                pass
            raise Etsi015ClientError(method, self.base_url + url, response.status_code, errors)
        return response

    async def get(self, path: str = ROOT_MEMBER, *, content: str = "all") -> dict[str, Any]:
        """GET a data resource; returns the whole response body."""
        params = None if content == "all" else {"content": content}
        result: dict[str, Any] = (await self.request("GET", path, params=params)).json()
        return result

    async def get_node(self) -> dict[str, Any]:
        """The ``qkd_node`` tree (content of ``etsi-qkd-sdn-node:qkd_node``)."""
        return dict(_member(await self.get(), "qkd_node") or {})

    async def get_capabilities(self) -> dict[str, Any]:
        """``qkdn_capabilities``."""
        body = await self.get(f"{ROOT_MEMBER}/qkdn_capabilities")
        return dict(_member(body, "qkdn_capabilities") or {})

    async def get_interfaces(self) -> list[dict[str, Any]]:
        """``qkd_interface`` entries."""
        body = await self.get(f"{ROOT_MEMBER}/qkd_interfaces")
        return list((_member(body, "qkd_interfaces") or {}).get("qkd_interface", []))

    async def get_links(self) -> list[dict[str, Any]]:
        """``qkd_link`` entries (PHYS and VIRT)."""
        body = await self.get(f"{ROOT_MEMBER}/qkd_links")
        return list((_member(body, "qkd_links") or {}).get("qkd_link", []))

    async def get_applications(self) -> list[dict[str, Any]]:
        """``qkd_app`` entries."""
        body = await self.get(f"{ROOT_MEMBER}/qkd_applications")
        return list((_member(body, "qkd_applications") or {}).get("qkd_app", []))

    async def create_link(self, entry: dict[str, Any]) -> str:
        """POST a ``qkd_link`` entry (strict RFC 8040 form); returns its Location."""
        response = await self.request("POST", f"{ROOT_MEMBER}/qkd_links",
                                      {f"{MODULE}:qkd_link": [entry]})
        return str(response.headers.get("location", ""))

    async def delete_link(self, qkdl_uuid: str) -> None:
        """DELETE a ``qkd_link``."""
        await self.request("DELETE", f"{ROOT_MEMBER}/qkd_links/qkd_link={qkdl_uuid}")

    async def create_application(self, entry: dict[str, Any]) -> str:
        """POST a ``qkd_app`` entry; returns its Location."""
        response = await self.request("POST", f"{ROOT_MEMBER}/qkd_applications",
                                      {f"{MODULE}:qkd_app": [entry]})
        return str(response.headers.get("location", ""))

    async def delete_application(self, app_uuid: str) -> None:
        """DELETE a ``qkd_app``."""
        await self.request("DELETE", f"{ROOT_MEMBER}/qkd_applications/qkd_app={app_uuid}")


@dataclass(frozen=True)
class NodeDescription:
    """What :meth:`Etsi015Driver.discover` learned about one node."""

    url: str
    qkdn_id: str
    status: str
    capabilities: dict[str, Any]
    interfaces: list[dict[str, Any]]
    phys_links: list[dict[str, Any]]
    virt_links: list[dict[str, Any]]
    applications: list[dict[str, Any]]
    tree: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def neighbours(self) -> set[str]:
        """``qkdn_id`` of the nodes at the far end of this node's PHYS links."""
        return {link["qkdl_remote"]["qkdn_id"] for link in self.phys_links
                if "qkdn_id" in link.get("qkdl_remote", {})}


@dataclass(frozen=True)
class PathHop:
    """One node of a relayed session's path: its agent URL and its ``qkdn_id``."""

    url: str
    qkdn_id: str


class Etsi015Driver:
    """How the SDN Controller drives nodes over ETSI GS QKD 015 (one client per node URL).

    Args:
        ssl_context: controller TLS context (:meth:`from_certs` builds it).
        timeout_s: per-request bound.
        transport: one httpx transport for every node (tests); by default each client opens
            its own connections.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None, *, timeout_s: float = 5.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._ssl = ssl_context
        self._timeout_s = timeout_s
        self._transport = transport
        self._clients: dict[str, Etsi015Client] = {}
        self._closed = False

    @classmethod
    def from_certs(cls, controller: CertPaths, ca_file: Any, *, timeout_s: float = 5.0
                   ) -> Etsi015Driver:
        """A driver presenting the controller certificate and trusting only ``ca_file``."""
        return cls(client_ssl_context(controller, ca_file), timeout_s=timeout_s)

    def client(self, node_url: str) -> Etsi015Client:
        """The (cached) client of ``node_url``.

        Raises:
            RuntimeError: the driver is closed.
        """
        if self._closed:
            raise RuntimeError("Etsi015Driver is closed")
        key = node_url.rstrip("/")
        if key not in self._clients:
            self._clients[key] = Etsi015Client(key, ssl_context=self._ssl,
                                               timeout_s=self._timeout_s,
                                               transport=self._transport)
        return self._clients[key]

    async def close(self) -> None:
        """Close every client; idempotent."""
        self._closed = True
        clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            await c.close()

    async def __aenter__(self) -> Etsi015Driver:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def discover(self, node_url: str) -> NodeDescription:
        """Read a node's identity, capabilities, interfaces, links and applications.

        Raises:
            Etsi015ClientError, Etsi015Unreachable: see :meth:`Etsi015Client.request`.
        """
        tree = await self.client(node_url).get_node()
        links = tree.get("qkd_links", {}).get("qkd_link", [])
        return NodeDescription(
            url=node_url, qkdn_id=tree["qkdn_id"],
            status=identity_name(tree.get("qkdn_status", "")),
            capabilities=tree.get("qkdn_capabilities", {}),
            interfaces=tree.get("qkd_interfaces", {}).get("qkd_interface", []),
            phys_links=[x for x in links if identity_name(x.get("qkdl_type", "")) == "PHYS"],
            virt_links=[x for x in links if identity_name(x.get("qkdl_type", "")) == "VIRT"],
            applications=tree.get("qkd_applications", {}).get("qkd_app", []),
            tree=tree)

    async def register_virtual_link(self, node_url: str, link: VirtualLink, *,
                                    local_qkdn_id: str) -> None:
        """Create a VIRT link on one node.

        Raises:
            Etsi015ClientError: e.g. 409 ``data-exists``, 400 a value the model forbids.
            Etsi015Unreachable: no answer.
        """
        await self.client(node_url).create_link(link.to_raw(local_qkdn_id))

    async def remove_virtual_link(self, node_url: str, qkdl_uuid: str) -> None:
        """Delete a VIRT link on one node (404 → :class:`Etsi015ClientError`)."""
        await self.client(node_url).delete_link(qkdl_uuid)

    async def register_application(self, node_url: str, app: QkdApplication) -> None:
        """Create a ``qkd_app`` on one node."""
        await self.client(node_url).create_application(app.to_raw())

    async def remove_application(self, node_url: str, app_uuid: str) -> None:
        """Delete a ``qkd_app`` on one node."""
        await self.client(node_url).delete_application(app_uuid)

    async def provision_path(self, session_id: str, path: Sequence[PathHop],
                             bandwidth_bps: int, *, applications: Sequence[str] = (),
                             replace_existing: bool = False) -> str:
        """Put a relayed session's VIRT link on every node of ``path`` (source first).

        Every node gets an entry with the same ``qkdl_id`` (UUIDv5 of ``session:<id>``),
        ``qkdl_local`` = itself, ``qkdl_remote`` = the far endpoint, ``virt_prev_hop`` = the
        previous node (the node itself at the source) and ``virt_next_hop`` = the next node
        (itself at the destination). If a node refuses or cannot be reached, the entries
        already created are deleted again before the error is raised.

        With ``replace_existing`` a node that already holds the link (409 ``data-exists``,
        e.g. put there by a controller that has since restarted) has it deleted and
        created again as described, so the call is idempotent.

        Returns:
            The ``qkdl_id`` of the virtual link.

        Raises:
            ValueError: fewer than two hops.
            Etsi015ClientError, Etsi015Unreachable: a node failed (after the rollback).
        """
        if len(path) < 2:
            raise ValueError("a virtual link needs at least two nodes")
        uid = qkdl_id(f"session:{session_id}")
        done: list[PathHop] = []
        try:
            for i, hop in enumerate(path):
                far = path[-1] if i < len(path) - 1 else path[0]
                prev = path[i - 1] if i > 0 else hop
                nxt = path[i + 1] if i < len(path) - 1 else hop
                link = VirtualLink(qkdl_id=uid, remote_qkdn_id=far.qkdn_id,
                                   prev_hop=prev.qkdn_id, next_hops=(nxt.qkdn_id,),
                                   bandwidth_bps=bandwidth_bps,
                                   applications=tuple(applications), status="ACTIVE")
                try:
                    await self.register_virtual_link(hop.url, link, local_qkdn_id=hop.qkdn_id)
                except Etsi015ClientError as exc:
                    if not (replace_existing and exc.status == 409):
                        raise
                    await self.remove_virtual_link(hop.url, uid)
                    await self.register_virtual_link(hop.url, link, local_qkdn_id=hop.qkdn_id)
                done.append(hop)
        except BaseException:
            await self._rollback(uid, done)
            raise
        return uid

    async def release_path(self, session_id: str, path: Sequence[PathHop]) -> list[PathHop]:
        """Delete a session's VIRT link from every node of ``path``, best effort.

        Returns:
            The hops where deleting failed (already gone counts as done).
        """
        uid = qkdl_id(f"session:{session_id}")
        results = await asyncio.gather(*(self._delete_quietly(h, uid) for h in path))
        return [h for h, ok in zip(path, results, strict=True) if not ok]

    async def _rollback(self, uid: str, done: Sequence[PathHop]) -> None:
        for hop in reversed(done):
            if not await self._delete_quietly(hop, uid):
                logger.warning("rollback of virtual link %s on %s failed", uid, hop.url)

    async def _delete_quietly(self, hop: PathHop, uid: str) -> bool:
        try:
            await self.remove_virtual_link(hop.url, uid)
        except Etsi015ClientError as exc:
            return exc.status == 404
        except Etsi015Unreachable:
            return False
        return True
