"""SQLAlchemy tables: the paper's two databases and what key managers persist.

* user/SLA database: :class:`UserRow`, :class:`ApplicationRow`
* topology database: :class:`NodeRow`, :class:`LinkRow`, :class:`LinkMetricRow`
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
