"""SQLAlchemy tables: the paper's two databases and what key managers persist.

* user/SLA database: :class:`UserRow`, :class:`ApplicationRow`
* topology database: :class:`NodeRow`, :class:`LinkRow`, :class:`LinkMetricRow`
* control-plane state: :class:`AdmittedSessionRow` (Admission Control's live sessions and
  the capacity they hold, so a restarted controller neither forgets nor double-books them)
* key manager state: :class:`LinkKeyBlockRow` (link key stores), :class:`SessionRow`,
  :class:`KeyBatchRow` (end-to-end keys a KM holds, one row per batch) and
  :class:`KeyStreamRow` (which indexes of a stream were handed out), so a restart neither
  loses a key nor delivers one twice

Key material is *sealed* (AES-GCM under the node's key-encryption key, kept outside the
database: :mod:`keyplane.store.sealing`) in ``LinkKeyBlockRow.material`` and
``KeyBatchRow.material``. Consumed link key bytes are zeroed before the block is sealed
again, in the transaction that marks them consumed; a used-up block's row is deleted.
A batch row holds only its keys not yet handed out and is deleted when none is left.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AdmittedSessionRow",
    "ApplicationRow",
    "Base",
    "KeyBatchRow",
    "KeyStreamRow",
    "LinkKeyBlockRow",
    "LinkMetricRow",
    "LinkRow",
    "NodeRow",
    "SessionRow",
    "UserRow",
]


class Base(DeclarativeBase):
    """Declarative base of every keyplane table."""


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    certificate_subject: Mapped[str | None] = mapped_column(String(512), unique=True)
    token_sha256: Mapped[str | None] = mapped_column(String(64), unique=True)
    sla: Mapped[dict[str, Any]] = mapped_column(JSON)


class ApplicationRow(Base):
    __tablename__ = "applications"

    sae_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    node: Mapped[str] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))


class NodeRow(Base):
    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(256), default="")
    address: Mapped[str] = mapped_column(String(256), default="127.0.0.1")
    endpoints: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    """Interface URLs the node's process last announced (name → URL): the SDN Controller's
    registry, kept so a restarted controller can drive the nodes before they re-announce."""


class LinkRow(Base):
    __tablename__ = "links"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    node_a: Mapped[str] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    node_b: Mapped[str] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(8), default="PHYS")  # PHYS | VIRT
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class LinkMetricRow(Base):
    """Latest figures per link, written by the Monitoring Element, read by Routing."""

    __tablename__ = "link_metrics"

    link_id: Mapped[str] = mapped_column(ForeignKey("links.id", ondelete="CASCADE"),
                                         primary_key=True)
    t: Mapped[float] = mapped_column(Float, default=0.0)
    state: Mapped[str] = mapped_column(String(16), default="up")
    skr_bps: Mapped[float | None] = mapped_column(Float, nullable=True)
    qber: Mapped[float | None] = mapped_column(Float, nullable=True)
    sessions: Mapped[int] = mapped_column(Integer, default=0)
    buffer_bits: Mapped[int] = mapped_column(Integer, default=0)
    reserved_bps: Mapped[float] = mapped_column(Float, default=0.0)


class AdmittedSessionRow(Base):
    """A session Admission Control admitted (paper Fig. 2b ``active``), with what it holds.

    Written when the session becomes operative, rewritten when it moves to a new path
    (``epoch`` / ``route_epoch`` / ``path``), marked ``terminated`` while its deletions are
    out and deleted once they are confirmed. ``initiator`` / ``responder`` are the two
    endpoints' open requests (node, user, SAE, peer SAE, QoS, the user's SLA, the id the
    request carried); the other figures are the configuration pushed to the path.
    Times are wall-clock seconds (the clock's monotonic time means nothing to another
    process).
    """

    __tablename__ = "admitted_sessions"

    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default="active")  # active | terminated
    interface: Mapped[str] = mapped_column(String(8))
    source_sae: Mapped[str] = mapped_column(String(64))
    destination_sae: Mapped[str] = mapped_column(String(64))
    source_node: Mapped[str] = mapped_column(String(64))
    destination_node: Mapped[str] = mapped_column(String(64))
    initiator: Mapped[dict[str, Any]] = mapped_column(JSON)
    responder: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    path: Mapped[list[str]] = mapped_column(JSON)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    route_epoch: Mapped[int] = mapped_column(Integer, default=0)
    min_bps: Mapped[float] = mapped_column(Float, default=0.0)
    rate_bps: Mapped[float] = mapped_column(Float, default=0.0)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    idle_timeout_s: Mapped[float] = mapped_column(Float, default=60.0)
    key_chunk_size: Mapped[int] = mapped_column(Integer, default=32)
    bucket_size_bits: Mapped[int] = mapped_column(Integer, default=256)
    hybrid_policy: Mapped[str] = mapped_column(String(16), default="qkd-only")
    created_wall: Mapped[float] = mapped_column(Float, default=0.0)
    updated_wall: Mapped[float] = mapped_column(Float, default=0.0)
    last_keepalive_wall: Mapped[float] = mapped_column(Float, default=0.0)


class LinkKeyBlockRow(Base):
    """A block of link key one KM holds for one neighbour (one end of a QKD link).

    Each block is split in two halves, one per direction (see keyplane.keymanager.keystore):
    ``tx_reserved_bytes`` counts the bytes of this node's send half already taken (from the
    half's start); ``rx_consumed`` lists the [start, end) byte ranges of the peer's half
    that frames have named and this node consumed. ``material`` is sealed (``sealed``
    false: a row written before keys were encrypted at rest, rewritten sealed when read).
    """

    __tablename__ = "link_key_blocks"

    node: Mapped[str] = mapped_column(String(64), primary_key=True)
    link_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    block_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    size_bytes: Mapped[int] = mapped_column(Integer)
    tx_reserved_bytes: Mapped[int] = mapped_column(Integer, default=0)
    rx_consumed: Mapped[list[list[int]]] = mapped_column(JSON, default=list)
    material: Mapped[bytes] = mapped_column(LargeBinary)
    created_t: Mapped[float] = mapped_column(Float, default=0.0)
    sealed: Mapped[bool] = mapped_column(Boolean, default=True, server_default=false())


class SessionRow(Base):
    """A KM's session state and configuration (survives a KM restart)."""

    __tablename__ = "sessions"

    node: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(32))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_t: Mapped[float] = mapped_column(Float, default=0.0)


class KeyBatchRow(Base):
    """End-to-end keys of one session that a KM made or received together (one relay
    batch), and still holds.

    Per key, in the same order, packed (issue #15: JSON lists were a large part of a bulk
    request's cost; migration 0003): ``key_ids`` (``u`` and 16 bytes per UUID, or ``t`` and
    the comma-separated ids when one is no UUID), ``indexes`` (stream
    positions, little-endian int64s), ``size_bits`` (int32s), ``states`` (one letter each:
    ``p`` pending, ``r`` ready, ``d`` delivered), ``lengths`` (int32s: bytes of the key held
    in ``material``; 0 when none is) and ``provenance`` (hops and their key sources, as JSON
    runs ``[[count, records], ...]``). ``material`` is the sealed concatenation of the held
    keys' bytes; ``layout`` says what its seal is bound to (1: the JSON lists of ids,
    indexes and lengths, rows from before 0003, rewritten when loaded; 2: the packed
    columns). A key's state change rewrites its batch's row (one row per batch, not per key
    and state); a batch with nothing left to hand out is deleted.
    """

    __tablename__ = "key_batches"

    node: Mapped[str] = mapped_column(String(64), primary_key=True)
    batch_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(64), index=True)
    sae_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    peer_sae: Mapped[str | None] = mapped_column(String(64), nullable=True)
    t: Mapped[float] = mapped_column(Float, default=0.0)
    key_ids: Mapped[bytes] = mapped_column(LargeBinary)
    indexes: Mapped[bytes] = mapped_column(LargeBinary)
    size_bits: Mapped[bytes] = mapped_column(LargeBinary)
    states: Mapped[str] = mapped_column(Text)
    lengths: Mapped[bytes] = mapped_column(LargeBinary)
    provenance: Mapped[list[list[Any]]] = mapped_column(JSON)
    material: Mapped[bytes] = mapped_column(LargeBinary)
    sealed: Mapped[bool] = mapped_column(Boolean, default=True, server_default=false())
    layout: Mapped[int] = mapped_column(SmallInteger, default=2, server_default=text("2"))


class KeyStreamRow(Base):
    """Which indexes of a session's key stream this KM has handed out: merged, sorted
    ``[start, end)`` ranges. Kept while the session lives, so a KM restarted after its
    batches were deleted still neither makes nor hands out an index twice."""

    __tablename__ = "key_streams"

    node: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    delivered: Mapped[list[list[int]]] = mapped_column(JSON)
    updated_t: Mapped[float] = mapped_column(Float, default=0.0)
