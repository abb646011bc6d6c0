"""What the key manager's pure core asks its shell to do (:class:`~.core.KmCore`).

Each effect is plain data; the shell (:meth:`KmShellBase._run
<keyplane.keymanager.shell.KmShellBase._run>`) carries them out in order.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any, Literal

from keyplane.events import EventType
from keyplane.messages import KeepAlive, Qos, SessionClose

__all__ = [
    "ArmIdle",
    "Decide",
    "Effect",
    "Emit",
    "FreeStream",
    "KeepAliveAt",
    "PersistRow",
    "ProbePeer",
    "Renamed",
    "SendAdmission",
    "digest",
]


@functools.lru_cache(maxsize=4096)
def digest(identity: str) -> str:
    """How an owner identity is kept (never in clear, in memory or in the store).

    Cached: every key request compares its caller's digest with the session owner's, and
    a KM sees few distinct identities.
    """
    return hashlib.sha256(identity.encode()).hexdigest()


@dataclass(frozen=True)
class ArmIdle:
    """(Re)arm the stream's idle timer for ``deadline``."""

    session_id: str
    deadline: float


@dataclass(frozen=True)
class KeepAliveAt:
    """Call :meth:`KmCore.keepalive_due` for the stream at ``at`` (a trailing KeepAlive)."""

    session_id: str
    at: float


@dataclass(frozen=True)
class SendAdmission:
    """Publish ``msg`` (KeepAlive, SessionClose) to Admission Control."""

    msg: KeepAlive | SessionClose


@dataclass(frozen=True)
class PersistRow:
    """Write a session row (state + JSON data) through the journal."""

    session_id: str
    state: str
    data: dict[str, Any]


@dataclass(frozen=True)
class ProbePeer:
    """The stream's idle deadline passed: ask the other endpoint, through ``hop`` on the
    path of ``epoch``, how long its end has been idle; the answer (or none) goes to
    :meth:`KmCore.probe_result` with ``seq`` (keymanager/liveness.py)."""

    session_id: str
    seq: int
    hop: str
    epoch: int
    peer_sae: str


@dataclass(frozen=True)
class FreeStream:
    """Release what the shell holds for a terminated stream: its waits and tasks, its keys
    in the vault (their bits go to :meth:`KmCore.freed`)."""

    session_id: str


@dataclass(frozen=True)
class Decide:
    """Settle the opener's wait: configured (``error`` None) or refused/ended."""

    session_id: str
    error: Literal["refused", "ended"] | None = None
    reason: str = ""
    offer: Qos | None = None  # refused: Admission Control's counter-proposal (status 7)


@dataclass(frozen=True)
class Renamed:
    """The stream ``old`` is now ``new`` (it took the peer's Key_stream_ID)."""

    old: str
    new: str


@dataclass(frozen=True)
class Emit:
    """An event for the event stream (paper Fig. 4)."""

    type: EventType
    data: dict[str, Any]


Effect = (ArmIdle | KeepAliveAt | SendAdmission | PersistRow | FreeStream | Decide | Renamed
          | Emit | ProbePeer)
