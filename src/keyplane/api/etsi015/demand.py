"""Running sums behind each link's ``expected_consumption`` and ``eskr`` (docs/api/etsi015.md).

``expected_consumption`` of a link = Σ ``app_qos/max_bandwidth`` of the applications it backs
(the link lists them in ``qkdl_applications``, or they list it in ``backing_qkdl_id``; an
application counts once per link) + for a PHYS link, Σ ``virt_bandwidth`` of the VIRT links
whose previous or next hop is that link's remote node. ``eskr`` = ``skr`` minus the VIRT part.

Recomputing those sums from the whole tree made every write and every telemetry sample cost
time in proportion to the live sessions. Here each committed entry adds its contribution and
removes the one it replaces, so a write costs what it changes and a lookup is O(1).
Bandwidths are integers (YANG ``uint32``), so the sums are exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keyplane.api.etsi015.model import identity_name

__all__ = ["Demand"]


class Demand:
    """Expected consumption per link, kept up to date entry by entry.

    Args:
        local_qkdn_id: this node (a VIRT hop equal to it is not a PHYS neighbour).
        phys_by_peer: remote ``qkdn_id`` → ``qkdl_id`` of this node's PHYS link to it.
    """

    def __init__(self, local_qkdn_id: str, phys_by_peer: Mapping[str, str]) -> None:
        self._local = local_qkdn_id
        self._phys_by_peer = dict(phys_by_peer)
        self._peer_of = {uid: peer for peer, uid in self._phys_by_peer.items()}
        self._app_bw: dict[str, int] = {}
        self._refs: dict[tuple[str, str], int] = {}  # (qkdl_id, app_id) -> references
        self._links_of_app: dict[str, set[str]] = {}
        self._app_sum: dict[str, int] = {}  # qkdl_id -> Σ bandwidth of the apps it backs
        self._virt_sum: dict[str, int] = {}  # peer qkdn_id -> Σ virt_bandwidth through it

    # ------------------------------------------------------------------ lookups

    def total(self, uid: str) -> int:
        """``expected_consumption`` of link ``uid`` (bits/s)."""
        return self._app_sum.get(uid, 0) + self.virtual(uid)

    def virtual(self, uid: str) -> int:
        """The VIRT part of a PHYS link's consumption (0 for other links)."""
        peer = self._peer_of.get(uid)
        return self._virt_sum.get(peer, 0) if peer is not None else 0

    # ------------------------------------------------------------------ updates

    def replace_link(self, uid: str, old: Mapping[str, Any] | None,
                     new: Mapping[str, Any] | None) -> set[str]:
        """Swap a ``qkd_link`` entry's contribution; returns the PHYS links whose total moved."""
        touched: set[str] = set()
        for entry, sign in ((old, -1), (new, 1)):
            if entry is None:
                continue
            for app in set(entry.get("qkdl_applications", [])):
                touched |= self._ref(uid, str(app), sign)
            if identity_name(str(entry.get("qkdl_type", ""))) == "VIRT":
                bandwidth = int(entry.get("virt_bandwidth", 0))
                hops = {entry.get("virt_prev_hop"), *entry.get("virt_next_hop", [])}
                for hop in hops - {self._local, None}:
                    self._virt_sum[hop] = self._virt_sum.get(hop, 0) + sign * bandwidth
                    if hop in self._phys_by_peer:
                        touched.add(self._phys_by_peer[hop])
        return touched

    def replace_app(self, aid: str, old: Mapping[str, Any] | None,
                    new: Mapping[str, Any] | None) -> set[str]:
        """Swap a ``qkd_app`` entry's contribution; returns the PHYS links whose total moved."""
        touched: set[str] = set()
        if old is not None:
            for uid in set(old.get("backing_qkdl_id", [])):
                touched |= self._ref(str(uid), aid, -1)
        bandwidth = int(new.get("app_qos", {}).get("max_bandwidth", 0)) if new else 0
        before = self._app_bw.get(aid, 0)
        if bandwidth != before:
            for uid in self._links_of_app.get(aid, ()):
                self._app_sum[uid] = self._app_sum.get(uid, 0) + bandwidth - before
                touched |= self._phys(uid)
        if new is None:
            self._app_bw.pop(aid, None)
        else:
            self._app_bw[aid] = bandwidth
            for uid in set(new.get("backing_qkdl_id", [])):
                touched |= self._ref(str(uid), aid, 1)
        return touched

    def _ref(self, uid: str, aid: str, sign: int) -> set[str]:
        """Add or drop one reference between a link and an application."""
        count = self._refs.get((uid, aid), 0) + sign
        if count:
            self._refs[(uid, aid)] = count
        else:
            self._refs.pop((uid, aid), None)
        if count == 1 and sign > 0:  # the pair appears
            self._links_of_app.setdefault(aid, set()).add(uid)
            delta = self._app_bw.get(aid, 0)
        elif count == 0:  # the pair goes
            links = self._links_of_app.get(aid, set())
            links.discard(uid)
            if not links:
                self._links_of_app.pop(aid, None)
            delta = -self._app_bw.get(aid, 0)
        else:
            return set()
        self._app_sum[uid] = self._app_sum.get(uid, 0) + delta
        if not self._app_sum[uid]:
            del self._app_sum[uid]
        return self._phys(uid)

    def _phys(self, uid: str) -> set[str]:
        return {uid} if uid in self._peer_of else set()
