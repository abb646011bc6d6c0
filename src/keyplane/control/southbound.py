"""The SDN Controller's southbound: it drives every node's SDN agent over ETSI GS QKD 015.

Two jobs (issue 8, deliverable 2; ETSI GS QKD 015 clause 5, the ``etsi-qkd-sdn-node`` model):

* **Discovery.** When a node announces its agent URL, on a re-announcement, and when one
  of the node's PHYS links changes, read the agent's ``qkd_node`` (status, capabilities,
  interfaces, links, applications). The result is recorded in the controller's
  :class:`~keyplane.control.sdn.SdnModel` as the node's
  :class:`~keyplane.control.sdn.NodeDiscovery`, with the PHYS links the controller knows
  and the agent does not report (and the reverse).
* **Virtual links.** A relayed session's VIRT link goes onto every node of its path
  (``provision_path``: ``virt_prev_hop``, ``virt_next_hop``, ``virt_bandwidth``, the same
  ``qkdl_id`` everywhere), and the session's ``qkd_app`` onto its two endpoint nodes. When
  the session ends or moves, they are removed (``release_path``) before the new path's
  entries are created.

Decisions:

* **Off the critical path.** Every ETSI 015 call runs in a background task. Admission
  Control's session setup never waits on an agent; the SDN Controller's bus answers never
  do either.
* **Reconcile, not replay.** The virtual links are keyed by session. The task for a session
  compares the desired state (the model's VIRT link, if any) with what it has provisioned
  and fixes the difference. At most one task per key (``node:<id>``, ``session:<id>``)
  runs at a time; a request arriving meanwhile makes it run once more. So a burst of
  changes collapses into the last state, and a reroute's release always finishes before
  the new path is provisioned (both use the session's ``qkdl_id``).
* **Idempotent after a restart.** A restarted controller's ``provisioned`` is empty while
  the nodes still hold the previous run's entries: an entry that already exists (409
  ``data-exists``) is replaced by the one the model wants.
* **Failures are reported, never raised.** No answer, a refusal, or a node without a known
  agent is logged and emitted as an ``sdn_agent_failed`` event (``operation``, ``reason``,
  ``unreachable``). There is no retry loop: a node's re-announcement runs discovery again
  and reconciles the sessions through it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from keyplane.api.etsi015 import (
    Etsi015ClientError,
    Etsi015Driver,
    Etsi015Error,
    Etsi015Unreachable,
    PathHop,
    QkdApplication,
    app_id,
)
from keyplane.clock import Clock
from keyplane.control.sdn_model import ELEMENT, NodeDiscovery, SdnLink, SdnModel, qkd_uuid
from keyplane.events import EventStream, EventType

__all__ = ["Etsi015Southbound", "ProvisionedPath", "VirtualPath", "sae_uri"]

logger = logging.getLogger(__name__)


def sae_uri(sae_id: str) -> str:
    """The ``inet:uri`` naming an SAE in ``server_app_id`` / ``client_app_id``."""
    return f"urn:keyplane:sae:{sae_id}"


@dataclass(frozen=True)
class VirtualPath:
    """What a session's VIRT link should look like on the nodes (from the model)."""

    path: tuple[str, ...]
    bandwidth_bps: int  # virt_bandwidth: the admitted rate
    reserved_bps: int = 0  # the qkd_app's min_bandwidth: what Routing reserved
    source_sae: str = ""
    destination_sae: str = ""
    priority: int = 0
    max_bps: int = 0

    @classmethod
    def of(cls, link: SdnLink) -> VirtualPath:
        """The desired state of a VIRT link of the model."""
        return cls(path=link.path, bandwidth_bps=round(link.bandwidth_bps),
                   reserved_bps=round(link.reserved_bps), source_sae=link.source_sae,
                   destination_sae=link.destination_sae,
                   priority=link.priority, max_bps=round(link.max_bps))


@dataclass(frozen=True)
class ProvisionedPath:
    """What the southbound put on the nodes for one session (and where: the URLs used)."""

    want: VirtualPath
    qkdl_id: str
    hops: tuple[PathHop, ...]
    app_nodes: tuple[tuple[str, str], ...] = ()  # (node, url) holding the session's qkd_app

    @property
    def virtual(self) -> bool:
        """Whether a VIRT link was made (False: adjacent endpoints, the ``qkd_app`` is
        backed by the PHYS link between them)."""
        return len(self.want.path) > 2


class Etsi015Southbound:
    """Discovery and VIRT link provisioning over ETSI GS QKD 015 (see the module docstring).

    Args:
        driver: the controller's ETSI 015 driver (the caller closes it).
        model: the SDN Controller's model: node records are written, VIRT links read.
        clock: time of the discovery records.
        events: ``node_discovered``, ``virtual_link_provisioned``, ``virtual_link_released``
            and ``sdn_agent_failed`` events.
    """

    def __init__(self, driver: Etsi015Driver, model: SdnModel, clock: Clock,
                 events: EventStream) -> None:
        self.driver = driver
        self.model = model
        self.clock = clock
        self.events = events
        self.urls: dict[str, str] = {}
        self.provisioned: dict[str, ProvisionedPath] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._closed = False

    # ------------------------------------------------------------------ requests

    def set_url(self, node: str, url: str | None) -> None:
        """Record (or forget, with ``None``) where ``node``'s agent listens."""
        if url:
            self.urls[node] = url.rstrip("/")
        else:
            self.urls.pop(node, None)

    def discover(self, node: str) -> None:
        """Read ``node``'s agent again (in the background; no-op without a known URL)."""
        if node in self.urls:
            self._schedule(f"node:{node}", lambda: self._discover(node))

    def reconcile(self, session_id: str) -> None:
        """Bring the nodes in line with the model's VIRT link of ``session_id``."""
        self._schedule(f"session:{session_id}", lambda: self._reconcile(session_id))

    def reconcile_through(self, node: str) -> None:
        """Reconcile every session whose VIRT link passes through ``node`` and is not
        provisioned as the model wants (after the node (re)announced its agent)."""
        for link in self.model.sessions():
            if link.session_id is None or node not in link.path:
                continue
            have = self.provisioned.get(link.session_id)
            if have is None or have.want != VirtualPath.of(link) or any(
                    h.url != self.urls.get(n) for n, h in zip(link.path, have.hops, strict=True)):
                self.reconcile(link.session_id)

    async def settle(self, timeout_s: float = 30.0) -> None:
        """Wait until no ETSI 015 work is pending (shutdown drain, tests).

        Raises:
            TimeoutError: work was still pending after ``timeout_s`` (real seconds).
        """
        async with asyncio.timeout(timeout_s):
            while self._running:
                await asyncio.gather(*list(self._running.values()), return_exceptions=True)

    async def close(self) -> None:
        """Cancel pending work (idempotent). What is on the nodes stays there."""
        self._closed = True
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ scheduling

    def _schedule(self, key: str, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self._closed:
            return
        if key in self._running:
            self._again.add(key)
            return
        self._running[key] = asyncio.get_running_loop().create_task(self._run(key, job))

    async def _run(self, key: str, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            while True:
                self._again.discard(key)
                try:
                    await job()
                except Exception:
                    logger.exception("ETSI 015 southbound job %s failed", key)
                if key not in self._again:
                    return
        finally:
            self._running.pop(key, None)

    def _failed(self, operation: str, reason: str, *, node: str | None = None,
                session: str | None = None, unreachable: bool = False) -> None:
        logger.warning("ETSI 015 %s failed (node %s, session %s): %s", operation, node,
                       session, reason)
        self.events.emit(EventType.sdn_agent_failed, ELEMENT, node=node, session=session,
                         operation=operation, reason=reason, unreachable=unreachable)

    # ------------------------------------------------------------------ discovery

    async def _discover(self, node: str) -> None:
        url = self.urls.get(node)
        record = self.model.nodes.get(node)
        if url is None or record is None:
            return
        expected = qkd_uuid("node", node)
        now = self.clock.now()
        try:
            desc = await self.driver.discover(url)
        except Etsi015Error as exc:
            record.discovery = NodeDiscovery(url=url, t=now, reachable=False, error=str(exc))
            record.status = "FAILURE"  # etsi-qkd-node-types: not accessible by the controller
            self._failed("discover", str(exc), node=node,
                         unreachable=isinstance(exc, Etsi015Unreachable))
            return
        if desc.qkdn_id != expected:
            reason = f"agent at {url} is qkdn_id {desc.qkdn_id}, expected {expected}"
            record.discovery = NodeDiscovery(url=url, t=now, reachable=True,
                                             qkdn_id=desc.qkdn_id, error=reason)
            self._failed("discover", reason, node=node)
            return
        known = {link.qkdl_id: link.link_id for link in self.model.links.values()
                 if link.type == "PHYS" and node in (link.local, link.remote)}
        reported = {str(x["qkdl_id"]): _status(x) for x in desc.phys_links}
        record.discovery = NodeDiscovery(
            url=url, t=now, reachable=True, qkdn_id=desc.qkdn_id, status=desc.status,
            capabilities=dict(desc.capabilities),
            interfaces=tuple(int(i["qkdi_id"]) for i in desc.interfaces if "qkdi_id" in i),
            phys_links=reported,
            virt_links=tuple(str(x["qkdl_id"]) for x in desc.virt_links),
            applications=tuple(str(a["app_id"]) for a in desc.applications),
            missing_links=tuple(sorted(known[u] for u in set(known) - set(reported))),
            unknown_links=tuple(sorted(set(reported) - set(known))))
        if desc.status:
            record.status = desc.status  # type: ignore[assignment]  # the model's identities
        d = record.discovery
        self.events.emit(EventType.node_discovered, ELEMENT, node=node, qkdn_id=desc.qkdn_id,
                         status=desc.status, interfaces=len(d.interfaces),
                         phys_links=len(d.phys_links), virt_links=len(d.virt_links),
                         applications=len(d.applications),
                         missing_links=list(d.missing_links),
                         unknown_links=list(d.unknown_links))

    # ------------------------------------------------------------------ virtual links

    def _desired(self, session_id: str) -> VirtualPath | None:
        for link in self.model.sessions():
            if link.session_id == session_id and len(link.path) >= 2:
                return VirtualPath.of(link)
        return None

    async def _reconcile(self, session_id: str) -> None:
        want = self._desired(session_id)
        have = self.provisioned.get(session_id)
        if have is not None and (have.want != want or any(
                h.url != self.urls.get(n) for n, h in zip(have.want.path, have.hops,
                                                          strict=True))):
            del self.provisioned[session_id]
            await self._release(session_id, have)
            have = None
        if want is not None and have is None:
            await self._provision(session_id, want)

    async def _provision(self, session_id: str, want: VirtualPath) -> None:
        unknown = [n for n in want.path if n not in self.urls]
        if unknown:
            self._failed("provision_path", f"no ETSI 015 agent known for {unknown}",
                         node=unknown[0], session=session_id)
            return
        hops = tuple(PathHop(self.urls[n], qkd_uuid("node", n)) for n in want.path)
        app = app_id(session_id)
        apps = (app,) if want.source_sae else ()
        virtual = len(want.path) > 2
        if virtual:
            try:
                # replace_existing: after a controller restart the nodes still hold what the
                # previous run put there, while ``provisioned`` starts empty
                uid = await self.driver.provision_path(session_id, hops, want.bandwidth_bps,
                                                       applications=apps,
                                                       replace_existing=True)
            except Etsi015Error as exc:
                self._failed("provision_path", str(exc), node=_node_of(exc, want.path, hops),
                             session=session_id,
                             unreachable=isinstance(exc, Etsi015Unreachable))
                return
        else:
            # adjacent endpoints: the PHYS link is the key association; no VIRT link, the
            # session's qkd_app names the PHYS link as its backing link
            phys = self.model.physical_between(*want.path)
            if phys is None:
                self._failed("register_application", f"no PHYS link joins {list(want.path)}",
                             node=want.path[0], session=session_id)
                return
            uid = phys.qkdl_id
        app_nodes: list[tuple[str, str]] = []
        if apps:
            ends = ((want.path[0], hops[0], hops[-1]), (want.path[-1], hops[-1], hops[0]))
            for node, here, far in ends:
                entry = QkdApplication(
                    app, sae_uri(want.source_sae),
                    (sae_uri(want.destination_sae),) if want.destination_sae else (),
                    priority=want.priority, max_bandwidth_bps=want.max_bps or None,
                    min_bandwidth_bps=want.reserved_bps, backing_qkdl_ids=(uid,),
                    local_qkdn_id=here.qkdn_id, remote_qkdn_id=far.qkdn_id)
                try:
                    await self._put_application(here.url, entry)
                except Etsi015Error as exc:
                    self._failed("register_application", str(exc), node=node,
                                 session=session_id,
                                 unreachable=isinstance(exc, Etsi015Unreachable))
                    continue
                app_nodes.append((node, here.url))
        self.provisioned[session_id] = ProvisionedPath(want, uid, hops, tuple(app_nodes))
        self.events.emit(EventType.virtual_link_provisioned, ELEMENT, session=session_id,
                         qkdl_id=uid, path=list(want.path), bandwidth_bps=want.bandwidth_bps,
                         applications=[n for n, _ in app_nodes], virtual=virtual)

    async def _put_application(self, url: str, entry: QkdApplication) -> None:
        """Create ``entry`` on the node at ``url``, replacing one with its ``app_id`` (left
        by a controller run that has since restarted).

        Raises:
            Etsi015Error: the node refused or did not answer.
        """
        try:
            await self.driver.register_application(url, entry)
        except Etsi015ClientError as exc:
            if exc.status != 409:
                raise
            await self.driver.remove_application(url, entry.app_id)
            await self.driver.register_application(url, entry)

    async def _release(self, session_id: str, have: ProvisionedPath) -> None:
        app = app_id(session_id)
        for node, url in have.app_nodes:
            try:
                await self.driver.remove_application(url, app)
            except Etsi015ClientError as exc:
                if exc.status != 404:
                    self._failed("remove_application", str(exc), node=node, session=session_id)
            except Etsi015Error as exc:
                self._failed("remove_application", str(exc), node=node, session=session_id,
                             unreachable=True)
        nodes: list[str] = []
        if have.virtual:  # an adjacent session's backing PHYS link stays, of course
            left = await self.driver.release_path(session_id, have.hops)
            nodes = [n for n, h in zip(have.want.path, have.hops, strict=True) if h in left]
            if nodes:
                self._failed("release_path",
                             f"VIRT link {have.qkdl_id} not removed from {nodes}",
                             node=nodes[0], session=session_id, unreachable=True)
        self.events.emit(EventType.virtual_link_released, ELEMENT, session=session_id,
                         qkdl_id=have.qkdl_id, path=list(have.want.path), failed=nodes,
                         virtual=have.virtual)


def _status(link: dict[str, Any]) -> str:
    status = str(link.get("qkdl_status", ""))
    return status.rsplit(":", 1)[-1]


def _node_of(exc: Etsi015Error, path: tuple[str, ...], hops: tuple[PathHop, ...]) -> str | None:
    """The path node whose agent an error came from (by URL in the message), if any."""
    text = str(exc)
    for node, hop in zip(path, hops, strict=True):
        if hop.url + "/" in text:
            return node
    return None
