"""A session at an endpoint KM (:class:`Stream`) and the bookkeeping of its key indexes.

The state :class:`~keyplane.keymanager.core.KmCore` keeps per endpoint session, and the pure
functions that move its indexes: ETSI 004 ``next_index`` (moved only once a delivery is
durable) and the ETSI 014 source's fresh and spare indexes (a failed batch's indexes are
offered again). Like the core, nothing here does I/O; :mod:`keyplane.keymanager.core`
re-exports every name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from keyplane.keymanager.scheduling import TokenBucket
from keyplane.keymanager.session import SessionMachine
from keyplane.keymanager.stock import StockDemand
from keyplane.messages import HopRole, Qos, SessionConfig

__all__ = ["Interface", "KeyState", "Stream", "claim_indexes", "delivered_index",
           "fresh_indexes", "next_get_index", "release_indexes"]

Interface = Literal["etsi004", "etsi014"]
KeyState = Callable[[str, int], tuple[str, int] | None]
"""``(session_id, index) -> (state, size_bits)`` of a key the vault holds, or None."""


@dataclass
class Stream:
    """A session at an endpoint KM (intermediates keep only forwarding entries)."""

    session_id: str
    machine: SessionMachine
    local_sae: str
    peer_sae: str
    interface: Interface = "etsi004"
    qos: Qos = field(default_factory=Qos)
    user_id: str = ""
    owner: str | None = None  # digest of the transport identity that opened it
    implicit: bool = False  # created by Admission Control's configuration (014 slave side)
    config: SessionConfig | None = None
    configs: dict[int, SessionConfig] = field(default_factory=dict)
    bucket: TokenBucket | None = None
    next_index: int = 0  # this end's next index for GET_KEY(index=None)
    next_gen: int = 0  # source: next fresh index for enc_keys
    spare: list[int] = field(default_factory=list)  # source: enc_keys indexes to fill again
    # source (ETSI 014): indexes relayed ahead, ``ready`` at both ends, not yet handed out
    # (memory only: after a restart they are spares, ready ones handed out first)
    stock: list[int] = field(default_factory=list)
    stock_bits: int = 0  # the key size of the stock
    demand: StockDemand = field(default_factory=StockDemand)
    idle_deadline: float = 0.0
    last_active: float = 0.0  # this end's last key request (or its end, or configuration)
    probe_seq: int = 0  # the idle probe in flight (keymanager/liveness.py): a later answer wins
    held_since: float | None = None  # the peer first did not answer an idle probe
    last_keepalive: float = float("-inf")
    keepalive_owed: bool = False  # a coalesced request still awaits its trailing KeepAlive
    # identities (digests) Access Control accepted for dec_keys of this stream's keys, as
    # ``owner`` is for the opener: asked once per stream, not per request
    readers: set[str] = field(default_factory=set)
    freed_bits: int = 0
    # ETSI 004 GET_KEY with acknowledgement (#14.4): indexes handed out and still held,
    # sealed, for the owner until it confirms them (memory only: after a restart every
    # index not confirmed is still held, so the owner can fetch it again)
    unconfirmed: set[int] = field(default_factory=set)
    # ETSI 014 dec_keys with acknowledgement (#14): key_ID -> the wall time its hold ends,
    # for keys handed out and still held for the slave (in the row; keymanager/ack014.py)
    acked014: dict[str, float] = field(default_factory=dict)

    @property
    def role(self) -> HopRole | None:
        """This KM's role on the path (None until configured)."""
        return self.config.role if self.config else None

    @property
    def priority(self) -> int:
        """The configured priority (0 until configured)."""
        return self.config.priority if self.config else 0

    @property
    def live(self) -> bool:
        """Not yet terminated."""
        return self.machine.live

    @property
    def wait_s(self) -> float:
        """A key request's wait bound: the pushed ``timeout_ms``, else the opener's."""
        ms = self.config.timeout_ms if self.config else None
        return (self.qos.timeout_ms if ms is None else ms) / 1000

    def data(self) -> dict[str, Any]:
        """The persisted form (no key material, no identity in clear)."""
        return {
            "local_sae": self.local_sae, "peer_sae": self.peer_sae, "interface": self.interface,
            "qos": self.qos.model_dump(mode="json"), "user_id": self.user_id,
            "owner": self.owner, "implicit": self.implicit, "next_index": self.next_index,
            "next_gen": self.next_gen,
            "configs": {str(e): c.model_dump(mode="json") for e, c in self.configs.items()},
            "acked014": dict(self.acked014),
        }


def next_get_index(s: Stream, index: int | None) -> int:
    """The index a GET_KEY serves (this end's next one when ``index`` is None)."""
    return s.next_index if index is None else index

def delivered_index(s: Stream, index: int) -> None:
    """GET_KEY delivered ``index`` durably: this end's next index moves past it (only
    now, so a delivery that failed leaves it where it was)."""
    if index >= s.next_index:
        s.next_index = index + 1

def claim_indexes(s: Stream, number: int, size_bits: int, key: KeyState,
                  usable: Callable[[int], bool] | None = None) -> list[int]:
    """Source: the indexes an enc_keys batch fills, spare ones first.

    A spare index belongs to a batch that failed before its keys reached the master
    (relay, store or timeout): its key (if made) was never delivered here and the
    master never learned its key_ID, so it is offered again instead of being left
    behind. Spares of another key size wait for a batch of their size; a ``ready`` spare
    (already at the destination, e.g. a stock key after a restart) only when ``usable``
    accepts it (a request whose policy it may not meet relays its own).
    """
    taken: list[int] = []
    keep: list[int] = []
    for i in s.spare:
        k = key(s.session_id, i)
        if k is not None and k[0] == "delivered":
            continue
        if len(taken) < number and (k is None or k[1] == size_bits) and (
                usable is None or k is None or k[0] != "ready" or usable(i)):
            taken.append(i)
        else:
            keep.append(i)
    s.spare = keep
    fresh = number - len(taken)
    taken += range(s.next_gen, s.next_gen + fresh)
    s.next_gen += fresh
    return taken

def fresh_indexes(s: Stream, number: int) -> list[int]:
    """Source: ``number`` indexes never used (a stock refill: spares are left to requests)."""
    taken = list(range(s.next_gen, s.next_gen + number))
    s.next_gen += number
    return taken

def release_indexes(s: Stream, indexes: list[int], key: KeyState) -> None:
    """A batch failed: its undelivered indexes become spares (see claim_indexes)."""
    for i in indexes:
        k = key(s.session_id, i)
        if k is None or k[0] != "delivered":
            s.spare.append(i)
    s.spare.sort()
