"""SQLAlchemy tables: the paper's two databases and what key managers persist.

* user/SLA database: :class:`UserRow`, :class:`ApplicationRow`
* topology database: :class:`NodeRow`, :class:`LinkRow`, :class:`LinkMetricRow`
* control-plane state: :class:`AdmittedSessionRow` (Admission Control's live sessions and
  the capacity they hold, so a restarted controller neither forgets nor double-books them)
* key manager state: :class:`LinkKeyBlockRow` (link key stores), :class:`SessionRow`,
  :class:`DeliveredKeyRow` (end-to-end keys a KM holds or has handed out, so a restart
  neither loses one nor delivers one twice)

Key material is stored as raw bytes in ``LinkKeyBlockRow.material``; consumed bytes are
overwritten with zeros in the same transaction that marks them consumed (used once, then
destroyed). ``DeliveredKeyRow.material`` is set to NULL in the transaction that marks the
key delivered. Protect the database file like a key store.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Integer, LargeBinary, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AdmittedSessionRow",
    "ApplicationRow",
    "Base",
    "DeliveredKeyRow",
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
    that frames have named and this node consumed.
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


class SessionRow(Base):
    """A KM's session state and configuration (survives a KM restart)."""

    __tablename__ = "sessions"

    node: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(32))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_t: Mapped[float] = mapped_column(Float, default=0.0)


class DeliveredKeyRow(Base):
    """An end-to-end key a KM holds or has handed to an application.

    ``state``: ``pending`` (source: relayed, not yet confirmed), ``ready`` (may be handed
    to ``sae_id``), ``delivered`` (handed out; ``material`` is NULL from then on).
    """

    __tablename__ = "delivered_keys"

    node: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(64), index=True)
    index: Mapped[int] = mapped_column(Integer, default=0)
    delivered: Mapped[bool] = mapped_column(Boolean, default=False)
    t: Mapped[float] = mapped_column(Float, default=0.0)
    state: Mapped[str] = mapped_column(String(16), default="ready")
    size_bits: Mapped[int] = mapped_column(Integer, default=0)
    sae_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    peer_sae: Mapped[str | None] = mapped_column(String(64), nullable=True)
    material: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    provenance: Mapped[list[dict[str, str]] | None] = mapped_column(JSON, nullable=True)
    """Hybrid provisioning: ``[{"hop": "a->b", "source": "qkd"|"pqc"|"combined"}, ...]``."""
