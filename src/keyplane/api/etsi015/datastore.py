"""One SD-QKD node's ``etsi-qkd-sdn-node:qkd_node`` datastore: pure, validated on every write.

Layout (NMDA-like split; GET returns the merge):

* **configuration** (``config true`` nodes): ``qkdn_id``, version, location, capabilities,
  ``qkd_interfaces`` and the PHYS ``qkd_links`` derived from the topology, plus whatever the
  SDN Controller writes (``qkd_app`` entries, VIRT links). Stored as the node's small
  top-level part plus one dictionary per big list (``qkd_link`` by ``qkdl_id``, ``qkd_app``
  by ``app_id``), so an entry is found, replaced or removed in O(1).
* **operational state** kept by the node itself (:mod:`keyplane.api.etsi015.operations`):
  ``qkdn_status``, per-link status and performance (skr, QBER from
  :class:`~keyplane.messages.LinkTelemetry`), ``qkdi_status``, ``app_status``,
  ``creation_time``, per-period ``app_statistics``, and keyplane's
  ``keyplane-qkd-provenance:provenance`` augment (per session, by ``app_id`` / ``qkdl_id``:
  counted from the session's first delivery even before the controller creates its
  ``qkd_app``, and kept across a reroute until :meth:`NodeDatastore.forget_provenance`).

**Writes** (a RESTCONF POST/PUT/PATCH/DELETE, or a Python call such as
:meth:`NodeDatastore.add_virtual_link`) run the generic RESTCONF operation
(:mod:`keyplane.api.etsi015.tree`) on a *candidate* tree, validate it against the YANG model
(``config`` content only: a client cannot write state), check the rules of the physical
network (the topology's ``qkdn_id``, interfaces and PHYS links are read-only; a PHYS link
exists only as the topology reports it), validate the candidate with its state (``all``
content), and only then commit. A refused write raises
:class:`~keyplane.api.etsi015.errors.RestconfError` and leaves the datastore as it was.

**Validation cost** (issue 15.1). What the candidate holds depends on what the request can
touch (:class:`_Scope`): a write at or below one entry of an entry-local list
(:mod:`keyplane.api.etsi015.partition`: ``qkd_link``, ``qkd_app``), or a POST of new entries
into one, runs on a *skeleton*: the node's top-level part plus those entries only, with key
uniqueness checked against the stored dictionary. Its cost does not depend on the number of
live sessions. Any other write (PATCH of the whole ``qkd_node``, PUT of a whole list) runs on
the whole tree, as does every write if the model ever stops being entry-local.

Pure core (STYLE.md §1): no I/O, time passed in as ``wall_s``; writes return the ETSI 015
notifications they cause (:class:`~keyplane.api.etsi015.entries.Notification`) for the agent
shell to publish. Derived figures: :mod:`keyplane.api.etsi015.demand`.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from yangson.instance import EntryKeys, MemberName

from keyplane.api.etsi015 import tree
from keyplane.api.etsi015.demand import Demand
from keyplane.api.etsi015.entries import (
    AppOps,
    AppProvenance,
    LinkStatus,
    Notification,
    PerfThresholds,
    PhysOps,
    QkdApplication,
    VirtualLink,
    copy_tree,
)
from keyplane.api.etsi015.errors import RestconfError
from keyplane.api.etsi015.model import (
    MODULE,
    PROVENANCE_MEMBER,
    ROOT_MEMBER,
    YangInvalid,
    date_and_time,
    decimal64,
    identity,
    identity_name,
    qkdl_id,
    qkdn_id,
    uint32,
)
from keyplane.api.etsi015.operations import DOWN_STATES, LiveFigures, NodeStatus
from keyplane.api.etsi015.partition import ListPath, ValidationMeter, model_entry_local_lists
from keyplane.api.etsi015.topology_config import interface_ids, node_config
from keyplane.api.etsi015.tree import Content, read_resource
from keyplane.config import Topology

__all__ = [
    "Content",
    "LinkStatus",
    "NodeDatastore",
    "Notification",
    "PerfThresholds",
    "QkdApplication",
    "VirtualLink",
    "read_resource",
]

LINKS: ListPath = ("qkd_links", "qkd_link")
APPS: ListPath = ("qkd_applications", "qkd_app")
_KEYS: dict[ListPath, str] = {LINKS: "qkdl_id", APPS: "app_id"}
"""The lists stored by key, and their (single) key leaf."""

_R = TypeVar("_R")
Entries = dict[ListPath, dict[Any, dict[str, Any]]]


@dataclass(frozen=True)
class _Scope:
    """What one write can touch: one entry of ``lst`` (``key`` set), new entries of ``lst``
    (a POST into it, ``key`` None), or anything (``lst`` None: the whole tree)."""

    lst: ListPath | None = None
    key: Any = None

    @property
    def whole(self) -> bool:
        return self.lst is None


class NodeDatastore(LiveFigures):
    """The ``qkd_node`` of one keyplane node (see the module docstring).

    Args:
        node_id: the topology node this datastore describes.
        topology: the network (PHYS links and interfaces come from its links at ``node_id``).
        version: ``qkdn_version``.
        location_id: ``qkdn_location_id``.
        perf_thresholds: when telemetry triggers ``sdqkdn_link_perf_update``.
        statistics_periods_kept: how many closed ``app_statistics`` periods each app keeps.
        incremental: validate entry writes on a skeleton (the default); False validates the
            whole tree on every write (the reference the tests compare against).

    Attributes:
        validation: validator calls and data nodes handed to yangson so far.

    Raises:
        KeyError: ``node_id`` is not in ``topology``.
    """

    def __init__(self, node_id: str, topology: Topology, *, version: str = "keyplane",
                 location_id: str = "", perf_thresholds: PerfThresholds | None = None,
                 statistics_periods_kept: int = 10, incremental: bool = True) -> None:
        topology.node(node_id)
        self.node_id = node_id
        self.qkdn_id = qkdn_id(node_id)
        self.thresholds = perf_thresholds or PerfThresholds()
        self.statistics_periods_kept = statistics_periods_kept
        self.status: NodeStatus = "NEW"
        self.validation = ValidationMeter()
        self._partitioned = (model_entry_local_lists() & set(_KEYS)) if incremental \
            else frozenset()
        self._phys: dict[str, PhysOps] = {}
        self._by_link_id: dict[str, str] = {}
        self._apps: dict[str, AppOps] = {}
        self._provenance: dict[str, AppProvenance] = {}
        self._virt_sources: dict[str, dict[str, str]] = {}
        config = node_config(node_id, topology, version, location_id)
        for link in sorted(topology.links_of(node_id), key=lambda x: x.link_id):
            uid = qkdl_id(link.link_id)
            self._phys[uid] = PhysOps(link_id=link.link_id,
                                      qkdi_id=interface_ids(topology, node_id)[link.link_id],
                                      enabled=link.enabled,
                                      status="PENDING" if link.enabled else "OFF")
            self._by_link_id[link.link_id] = uid
        self.validation.validate({ROOT_MEMBER: config}, config_only=True)
        self._node, self._entries = _split(config)
        self._topology_links = copy_tree(self._entries[LINKS])
        self._protected = _node_protected(self._node)
        self._demand = Demand(self.qkdn_id, {
            e["qkdl_remote"]["qkdn_id"]: uid for uid, e in self._entries[LINKS].items()})

    @staticmethod
    def interface_ids(topology: Topology, node_id: str) -> dict[str, int]:
        """``qkdi_id`` of each of ``node_id``'s link ends: 1, 2, … by sorted link id."""
        return interface_ids(topology, node_id)

    # ------------------------------------------------------------------ lookups

    def link_uuid(self, link_id: str) -> str | None:
        """``qkdl_id`` of a topology link at this node, or None."""
        return self._by_link_id.get(link_id)

    @property
    def topology_link_ids(self) -> list[str]:
        """Topology ids of this node's PHYS links."""
        return list(self._by_link_id)

    def link_status(self, uid: str) -> str | None:
        """Current ``qkdl_status`` identity name of a link (None if unknown)."""
        if uid in self._phys:
            return self._phys[uid].status
        entry = self._entries[LINKS].get(uid)
        return identity_name(entry["qkdl_status"]) if entry and "qkdl_status" in entry else None

    def application_ids(self) -> list[str]:
        """The ``app_id`` of every registered application."""
        return list(self._entries[APPS])

    # ------------------------------------------------------------------ the merged view

    def document(self, wall_s: float, *, content: Content = "all") -> dict[str, Any]:
        """The whole datastore: ``{"etsi-qkd-sdn-node:qkd_node": {...}}``."""
        return self.get("", wall_s, content=content)

    def get(self, path: str, wall_s: float, *, content: Content = "all",
            depth: int | None = None, fields: str | None = None) -> dict[str, Any]:
        """RFC 8040 GET of a data resource (``path`` is what follows ``/restconf/data/``).

        A resource at or below one ``qkd_link``/``qkd_app`` entry is read from a tree holding
        that entry alone (O(1) in the number of entries).

        Returns:
            The response body: ``{"<module>:<name>": value}`` (a one-entry array for a list
            entry or leaf-list entry).

        Raises:
            RestconfError: 400 for a malformed path or key, 404 for an unknown resource.
        """
        scope = self._scope(tree.route(path), post=False, stored=set(_KEYS))
        if scope.whole:
            config = self._tree()
        else:
            assert scope.lst is not None
            entry = self._entries[scope.lst].get(scope.key)
            config = self._tree({scope.lst: [entry] if entry is not None else []})
        return read_resource({ROOT_MEMBER: self._view(config, wall_s)}, path, content=content,
                             depth=depth, fields=fields)

    def _view(self, config: dict[str, Any], wall_s: float) -> dict[str, Any]:
        """Configuration plus operational state (the ``content=all`` tree) of ``config``,
        which may be the whole configuration or a part of it."""
        view: dict[str, Any] = copy_tree(config)
        view["qkdn_status"] = identity(self.status)
        ops_by_qkdi = {ops.qkdi_id: ops for ops in self._phys.values()}
        for iface in view["qkd_interfaces"].get("qkd_interface", []):
            ops = ops_by_qkdi.get(iface["qkdi_id"])
            status = "ENABLED"
            if ops is None or not ops.enabled:
                status = "DISABLED"
            elif ops.status in DOWN_STATES and ops.alarmed:
                status = "FAILED"
            iface["qkdi_status"] = identity(status)
        for app in view["qkd_applications"].get("qkd_app", []):
            self._app_state(app, wall_s)
        for link in view["qkd_links"].get("qkd_link", []):
            uid = link["qkdl_id"]
            link["qkdl_performance"] = {**link.get("qkdl_performance", {}),
                                        **self._link_performance(uid)}
            ops = self._phys.get(uid)
            if ops is not None:
                link["qkdl_status"] = identity(ops.status)
            elif (sent := self._virt_sources.get(uid)) and \
                    identity_name(link.get("qkdl_type", "")) == "VIRT":
                link[PROVENANCE_MEMBER] = {"hop": [{"hop": hop, "last_source": source}
                                                   for hop, source in sent.items()]}
        return view

    def _link_performance(self, uid: str) -> dict[str, Any]:
        """``qkdl_performance`` of one link from the running sums and its latest sample."""
        perf: dict[str, Any] = {"expected_consumption": uint32(self._demand.total(uid))}
        ops = self._phys.get(uid)
        if ops is not None and ops.skr_bps is not None:
            perf["skr"] = uint32(ops.skr_bps)
            perf["eskr"] = uint32(max(0.0, ops.skr_bps - self._demand.virtual(uid)))
        if ops is not None and ops.qber is not None:
            perf["phys_perf"] = [{"perf_type": identity("QBER"), "value": decimal64(ops.qber)}]
        return perf

    def _app_state(self, app: dict[str, Any], wall_s: float) -> None:
        ops = self._apps.get(app["app_id"])
        status = "ON"
        expiry = app.get("expiration_time")
        if expiry is not None and _parse_date_and_time(expiry) <= wall_s:
            status = "OUT-OF-TIME"
        app["app_status"] = identity(status)
        provenance = self._provenance.get(app["app_id"])
        if provenance is not None and (raw := provenance.to_raw()):
            app[PROVENANCE_MEMBER] = raw
        if ops is None:
            return
        app["creation_time"] = date_and_time(ops.creation_wall_s)
        if ops.statistics:
            app.setdefault("app_statistics", {})["statistics"] = [
                {"end_time": date_and_time(end), "start_time": date_and_time(start),
                 "consumed_bits": uint32(bits)} for start, end, bits in ops.statistics]

    # ------------------------------------------------------------------ RESTCONF writes

    def create(self, path: str, body: Any, wall_s: float) -> tuple[str, list[Notification]]:
        """RFC 8040 POST: create the child resource(s) in ``body`` under ``path`` (strict or
        TeraFlowSDN form, see :func:`keyplane.api.etsi015.tree.post`).

        Returns:
            (path of the created resource, notifications caused).

        Raises:
            RestconfError: 400 malformed/invalid body (a PHYS link that is not in the
                topology included), 404 unknown target, 405 read-only target, 409 data-exists.
        """
        return self._write(path, lambda root, steps: tree.post(root, steps, path, body),
                           wall_s, post=True)

    def replace(self, path: str, body: Any, wall_s: float) -> tuple[bool, list[Notification]]:
        """RFC 8040 PUT: create or replace the target resource.

        Returns:
            (True if the resource was created, notifications caused).

        Raises:
            RestconfError: 400 malformed/invalid body or key mismatch, 404 missing parent,
                405 read-only target or the datastore root.
        """
        return self._write(path, lambda root, steps: tree.put(root, steps, path, body), wall_s)

    def merge(self, path: str, body: Any, wall_s: float) -> list[Notification]:
        """RFC 8040 plain PATCH: merge ``body`` into the existing target resource.

        Raises:
            RestconfError: 400 malformed/invalid body, 404 target missing, 405 read-only.
        """
        return self._write(path, lambda root, steps: tree.patch(root, steps, path, body),
                           wall_s)[1]

    def delete(self, path: str, wall_s: float) -> list[Notification]:
        """RFC 8040 DELETE of the target resource.

        Raises:
            RestconfError: 404 target missing, 405 read-only target or the datastore root.
        """
        return self._write(path, lambda root, steps: tree.delete(root, steps, path),
                           wall_s)[1]

    # ------------------------------------------------------------------ Python API (embedded)

    def add_virtual_link(self, link: VirtualLink, wall_s: float) -> list[Notification]:
        """Register a VIRT link (what the controller's POST does), validated the same way.

        Raises:
            RestconfError: 409 the qkdl_id exists, 400 a value the model forbids.
        """
        body = {f"{MODULE}:qkd_link": [link.to_raw(self.qkdn_id)]}
        return self.create(f"{ROOT_MEMBER}/qkd_links", body, wall_s)[1]

    def remove_virtual_link(self, qkdl_uuid: str, wall_s: float) -> list[Notification]:
        """Remove a VIRT link.

        Raises:
            RestconfError: 404 no such link, 405 it is a topology PHYS link.
        """
        return self.delete(f"{ROOT_MEMBER}/qkd_links/qkd_link={qkdl_uuid}", wall_s)

    def add_application(self, app: QkdApplication, wall_s: float) -> list[Notification]:
        """Register a ``qkd_app`` (one per session at this node).

        Raises:
            RestconfError: 409 the app_id exists, 400 a value the model forbids.
        """
        raw = app.to_raw()
        raw.setdefault("local_qkdn_id", self.qkdn_id)
        body = {f"{MODULE}:qkd_app": [raw]}
        return self.create(f"{ROOT_MEMBER}/qkd_applications", body, wall_s)[1]

    def remove_application(self, app_uuid: str, wall_s: float) -> list[Notification]:
        """Remove a ``qkd_app`` (``sdqkdn_application_disconnected`` follows).

        Raises:
            RestconfError: 404 no such application.
        """
        return self.delete(f"{ROOT_MEMBER}/qkd_applications/qkd_app={app_uuid}", wall_s)

    # ------------------------------------------------------------------ the write pipeline

    def _scope(self, steps: list[Any], *, post: bool, stored: set[ListPath] | None = None
               ) -> _Scope:
        """The part of the tree a request at ``steps`` can touch (see :class:`_Scope`)."""
        lists = self._partitioned if stored is None else stored
        names: list[str] = []
        for step in steps:
            if isinstance(step, MemberName):
                names.append(step.name)
            elif isinstance(step, EntryKeys):
                lst = tuple(names[1:])
                if lst in lists and names[:1] == ["qkd_node"]:
                    return _Scope(lst, next(iter(step.keys.values())))
                return _Scope()
        target = tuple(names[1:])
        if post and names[:1] == ["qkd_node"]:
            for lst in lists:
                if lst[:-1] == target:
                    return _Scope(lst)
        return _Scope()

    def _write(self, path: str, operation: Callable[[dict[str, Any], list[Any]], _R],
               wall_s: float, *, post: bool = False) -> tuple[_R, list[Notification]]:
        """Run one RESTCONF write on a candidate, check it, commit it (module docstring)."""
        steps = tree.route(path)
        scope = self._scope(steps, post=post)
        if scope.whole:
            candidate = copy_tree(self._tree())
        else:
            assert scope.lst is not None
            old = self._entries[scope.lst].get(scope.key) if scope.key is not None else None
            candidate = self._tree({lst: [copy_tree(old)] if lst == scope.lst and old
                                    else [] for lst in self._partitioned})
        result = operation({ROOT_MEMBER: candidate}, steps)
        node, entries = _split(candidate)
        if not scope.whole:
            self._check_keys(scope, entries)
        self._validate({ROOT_MEMBER: candidate}, config_only=True)
        changes = self._changes(scope, node, entries)
        self._check_physical(node, changes)
        self._validate({ROOT_MEMBER: self._view(candidate, wall_s)})
        return result, self._commit(node if scope.whole else None, changes, wall_s)

    def _tree(self, only: Mapping[ListPath, Iterable[dict[str, Any]]] | None = None
              ) -> dict[str, Any]:
        """The configuration tree, sharing the stored entries (copy before changing it).
        ``only``: the entries to put in those lists instead of the stored ones."""
        node = dict(self._node)
        for lst in _KEYS:
            chosen = only[lst] if only is not None and lst in only else \
                self._entries[lst].values()
            container = dict(node.get(lst[0], {}))
            items = list(chosen)
            if items:
                container[lst[1]] = items
            node[lst[0]] = container
        return node

    def _check_keys(self, scope: _Scope, entries: Entries) -> None:
        """A skeleton write's entries must not collide with stored ones (the skeleton does not
        hold them, so yangson cannot see the clash).

        Raises:
            RestconfError: 409 a POST of an existing entry; 400 a key changed to one in use.
        """
        assert scope.lst is not None
        stored = self._entries[scope.lst]
        for key in entries[scope.lst]:
            if key == scope.key or key not in stored:
                continue
            member = scope.lst[-1]
            if scope.key is None:
                raise RestconfError(409, "data-exists", f"{member}={key} already exists",
                                    error_type="application", path=tree.error_path(
                                        f"{ROOT_MEMBER}/{'/'.join(scope.lst)}={key}"))
            raise RestconfError(400, "invalid-value", f"non-unique key: {member}={key} exists",
                                error_type="application")

    def _changes(self, scope: _Scope, node: dict[str, Any], entries: Entries
                 ) -> dict[ListPath, dict[Any, dict[str, Any] | None]]:
        """Per stored list: key → new entry (None: removed), for the entries that differ."""
        changes: dict[ListPath, dict[Any, dict[str, Any] | None]] = {lst: {} for lst in _KEYS}
        for lst, stored in self._entries.items():
            if scope.whole:
                for key in stored.keys() - entries[lst].keys():
                    changes[lst][key] = None
                candidates: Iterable[Any] = entries[lst]
            elif lst == scope.lst:
                if scope.key is not None and scope.key not in entries[lst]:
                    changes[lst][scope.key] = None
                candidates = entries[lst]
            else:
                continue
            for key in candidates:
                if stored.get(key) != entries[lst][key]:
                    changes[lst][key] = entries[lst][key]
        return changes

    def _check_physical(self, node: dict[str, Any],
                        changes: Mapping[ListPath, Mapping[Any, dict[str, Any] | None]]
                        ) -> None:
        """The physical network is read-only: ``qkdn_id``, interfaces and the topology's PHYS
        links stay as they are, and no other PHYS link can be created (ETSI 015 PHYS links
        exist only as the physical layer reports them).

        Raises:
            RestconfError: 405 a change to topology-derived data; 400 a new PHYS link.
        """
        if _node_protected(node) != self._protected:
            raise _read_only()
        for uid, entry in changes[LINKS].items():
            if uid in self._topology_links:
                raise _read_only()
            if entry is not None and identity_name(str(entry.get("qkdl_type", ""))) == "PHYS":
                raise RestconfError(
                    400, "invalid-value", f"qkd_link {uid} is PHYS and not a quantum link of "
                    "this node: PHYS links exist only as the physical layer reports them "
                    "(create VIRT links)", error_type="application",
                    path=tree.error_path(f"{ROOT_MEMBER}/qkd_links/qkd_link={uid}"))

    def _validate(self, document: dict[str, Any], *, config_only: bool = False) -> None:
        try:
            self.validation.validate(document, config_only=config_only)
        except YangInvalid as exc:
            raise RestconfError(400, exc.tag, str(exc), error_type="application",
                                path=exc.path) from exc

    def _commit(self, node: dict[str, Any] | None,
                changes: Mapping[ListPath, Mapping[Any, dict[str, Any] | None]],
                wall_s: float) -> list[Notification]:
        """Store a checked write and return the notifications it causes."""
        if node is not None:
            self._node = node
        touched: set[str] = set()
        notes: list[Notification] = []
        for uid, link in changes[LINKS].items():
            touched |= self._demand.replace_link(uid, self._entries[LINKS].get(uid), link)
            _store(self._entries[LINKS], uid, link)
        for aid, app in changes[APPS].items():
            before = self._entries[APPS].get(aid)
            touched |= self._demand.replace_app(aid, before, app)
            _store(self._entries[APPS], aid, app)
            notes += self._app_notifications(aid, before, app, wall_s)
        for uid in sorted(touched):
            notes += self._overload_check(uid, self._phys[uid], wall_s)
        return notes

    def _app_notifications(self, aid: str, before: dict[str, Any] | None,
                           app: dict[str, Any] | None, wall_s: float) -> list[Notification]:
        if app is None:
            self._apps.pop(aid, None)
            return [Notification("sdqkdn_application_disconnected",
                                 {"qkd_application": {"app_id": aid}}, wall_s)]
        if before is None:
            self._apps[aid] = AppOps(creation_wall_s=wall_s, period_start_s=wall_s)
            return [Notification("sdqkdn_application_new",
                                 {"qkd_application": _app_new_content(app)}, wall_s)]
        if (app.get("app_qos"), app.get("app_priority")) == \
                (before.get("app_qos"), before.get("app_priority")):
            return []
        content: dict[str, Any] = {"app_id": aid, "app_qos": app.get("app_qos", {})}
        if "app_priority" in app:
            content["app_priority"] = app["app_priority"]
        return [Notification("sdqkdn_application_qos_update", {"qkd_application": content},
                             wall_s)]


# ---------------------------------------------------------------------- helpers


def _split(config: dict[str, Any]) -> tuple[dict[str, Any], Entries]:
    """(top-level part without the stored lists, the stored lists' entries by key).

    A candidate may hold entries whose key is missing or not a scalar; each gets a key of its
    own that no stored entry has (validation refuses them right after).
    """
    node = dict(config)
    entries: Entries = {}
    for lst, key in _KEYS.items():
        container = dict(node.get(lst[0], {}))
        items = container.pop(lst[1], [])
        node[lst[0]] = container
        entries[lst] = {_key_of(e, key): e for e in items}
    return node, entries


def _key_of(entry: Any, key: str) -> Any:
    value = entry.get(key) if isinstance(entry, dict) else None
    if isinstance(value, str | int | float | bool):
        return value
    return ("<invalid key>", id(entry))


def _store(table: dict[Any, dict[str, Any]], key: Any, entry: dict[str, Any] | None) -> None:
    if entry is None:
        table.pop(key, None)
    else:
        table[key] = entry


def _node_protected(node: Mapping[str, Any]) -> tuple[Any, Any]:
    return node.get("qkdn_id"), node.get("qkd_interfaces")


def _read_only() -> RestconfError:
    return RestconfError(405, "operation-not-supported",
                         "qkdn_id, qkd_interfaces and the topology's PHYS links mirror the "
                         "physical network and are read-only")


def _parse_date_and_time(text: str) -> float:
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return math.inf


def _app_new_content(app: dict[str, Any]) -> dict[str, Any]:
    """``sdqkdn_application_new`` content from a ``qkd_app`` entry."""
    wanted = ("app_type", "server_app_id", "client_app_id", "app_priority", "local_qkdn_id",
              "app_qos")
    return {k: app[k] for k in wanted if k in app}

