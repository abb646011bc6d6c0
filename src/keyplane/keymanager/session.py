"""The key manager's per-session cycle (paper Fig. 2a) as a pure state machine.

States use DESIGN.md's names verbatim::

    authenticating ──auth_ok──▶ user_accepted ──config_received──▶ operative ◀──┐
          │                          │                               │  key_request  │ key_done
          │ auth_refused             │ admission_refused             ▼               │
          │                          │ config_timeout, close     key_exchanging ─────┘
          ▼                          ▼                               │
      terminated ◀───────────────────┴── close / deleted / idle_expired (operative only)

* ``key_request`` in ``key_exchanging`` keeps the state and counts one more exchange in
  flight; ``key_done`` returns to ``operative`` when the last one finishes.
* ``reconfigured`` (a new SessionConfig: token bucket, priority, reroute) is allowed in
  ``operative`` and ``key_exchanging`` and keeps the state.
* ``idle_expired`` is legal only in ``operative``: a session with an exchange in flight is
  not idle (the shell re-arms the timer instead).
* Every other (state, event) pair raises :class:`~keyplane.errors.IllegalTransition`.

The core takes ``(event, now)`` and returns the :class:`Action` list the I/O shell performs
(:mod:`keyplane.keymanager.km`): arm the idle timer, signal Admission Control, free
resources. It never touches the bus, the clock or the store.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from keyplane.errors import IllegalTransition

__all__ = [
    "HISTORY_MAX",
    "Action",
    "ArmIdleTimer",
    "ConfirmDelete",
    "FreeResources",
    "SendKeepAlive",
    "SendSessionClose",
    "SessionEvent",
    "SessionMachine",
    "SessionState",
]

logger = logging.getLogger(__name__)


class SessionState(StrEnum):
    """Paper Fig. 2a states (DESIGN.md §2)."""

    authenticating = "authenticating"
    user_accepted = "user_accepted"
    operative = "operative"
    key_exchanging = "key_exchanging"
    terminated = "terminated"


class SessionEvent(StrEnum):
    """What can happen to a session."""

    auth_ok = "auth_ok"
    auth_refused = "auth_refused"
    admission_refused = "admission_refused"
    config_received = "config_received"
    config_timeout = "config_timeout"
    reconfigured = "reconfigured"
    key_request = "key_request"
    key_done = "key_done"
    close = "close"
    deleted = "deleted"
    idle_expired = "idle_expired"


@dataclass(frozen=True)
class ArmIdleTimer:
    """(Re)start the idle timer: the session ends at ``deadline`` unless used again."""

    deadline: float


@dataclass(frozen=True)
class SendKeepAlive:
    """Tell Admission Control the session is in use (it resets its own session timer)."""


@dataclass(frozen=True)
class SendSessionClose:
    """Tell Admission Control this endpoint ended the session."""

    reason: Literal["close", "idle_timeout", "error"]


@dataclass(frozen=True)
class FreeResources:
    """Drop the forwarding entry, token bucket, queued requests and held keys."""


@dataclass(frozen=True)
class ConfirmDelete:
    """Reply DeleteConfirm to Admission Control's deletion."""


Action = ArmIdleTimer | SendKeepAlive | SendSessionClose | FreeResources | ConfirmDelete

S, E = SessionState, SessionEvent

# (state, event) -> next state; the action lists are built in SessionMachine.handle.
_TRANSITIONS: dict[tuple[SessionState, SessionEvent], SessionState] = {
    (S.authenticating, E.auth_ok): S.user_accepted,
    (S.authenticating, E.auth_refused): S.terminated,
    (S.authenticating, E.close): S.terminated,
    (S.user_accepted, E.config_received): S.operative,
    (S.user_accepted, E.admission_refused): S.terminated,
    (S.user_accepted, E.config_timeout): S.terminated,
    (S.user_accepted, E.close): S.terminated,
    (S.user_accepted, E.deleted): S.terminated,
    (S.operative, E.reconfigured): S.operative,
    (S.operative, E.key_request): S.key_exchanging,
    (S.operative, E.close): S.terminated,
    (S.operative, E.deleted): S.terminated,
    (S.operative, E.idle_expired): S.terminated,
    (S.key_exchanging, E.reconfigured): S.key_exchanging,
    (S.key_exchanging, E.key_request): S.key_exchanging,
    (S.key_exchanging, E.key_done): S.key_exchanging,  # refined by the in-flight count
    (S.key_exchanging, E.close): S.terminated,
    (S.key_exchanging, E.deleted): S.terminated,
}


HISTORY_MAX = 64
"""Transitions a session machine remembers (its newest)."""


@dataclass
class SessionMachine:
    """One session's Fig. 2a cycle at one endpoint KM.

    Args:
        session_id: the Key_stream_ID.
        state: start state (``authenticating`` for an application's OPEN; ``user_accepted``
            for the destination side of an implicit ETSI 014 session, which Admission
            Control configured on the slave's behalf; any state when restored from the store).
        idle_timeout_s: from SessionConfig; set when the configuration arrives.
    """

    session_id: str
    state: SessionState = SessionState.authenticating
    idle_timeout_s: float = 60.0
    in_flight: int = 0
    history: deque[tuple[float, SessionState, SessionEvent, SessionState]] = field(
        default_factory=lambda: deque(maxlen=HISTORY_MAX), repr=False)
    """The last :data:`HISTORY_MAX` transitions (every key request adds two: a list grew
    without bound for as long as a busy session lived, #15)."""

    @property
    def live(self) -> bool:
        """Not yet terminated."""
        return self.state is not SessionState.terminated

    def can(self, event: SessionEvent) -> bool:
        """Whether ``event`` is legal now."""
        return (self.state, event) in _TRANSITIONS

    def handle(self, event: SessionEvent, now: float, *, idle_timeout_s: float | None = None
               ) -> list[Action]:
        """Apply ``event`` at time ``now`` and return what the shell must do.

        Args:
            event: what happened.
            now: the clock's time.
            idle_timeout_s: with ``config_received``/``reconfigured``, the configured idle
                timeout.

        Raises:
            IllegalTransition: Fig. 2a forbids ``event`` in the current state (logged).
        """
        before = self.state
        target = _TRANSITIONS.get((before, event))
        if target is None:
            logger.warning("session %s: illegal event %s in state %s",
                           self.session_id, event.value, before.value)
            raise IllegalTransition("km-session", before.value, event.value)
        if idle_timeout_s is not None:
            self.idle_timeout_s = idle_timeout_s
        actions: list[Action] = []
        if event is E.config_received:
            actions.append(ArmIdleTimer(now + self.idle_timeout_s))
        elif event is E.reconfigured:
            actions.append(ArmIdleTimer(now + self.idle_timeout_s))
        elif event is E.key_request:
            self.in_flight += 1
            actions += [SendKeepAlive(), ArmIdleTimer(now + self.idle_timeout_s)]
        elif event is E.key_done:
            self.in_flight = max(0, self.in_flight - 1)
            if self.in_flight == 0:
                target = S.operative
        elif target is S.terminated:
            self.in_flight = 0
            if event is E.close and before in (S.operative, S.key_exchanging, S.user_accepted):
                actions.append(SendSessionClose("close"))
            elif event is E.idle_expired:
                actions.append(SendSessionClose("idle_timeout"))
            elif event is E.config_timeout:
                actions.append(SendSessionClose("error"))
            actions.append(FreeResources())
            if event is E.deleted:
                actions.append(ConfirmDelete())
        self.state = target
        self.history.append((now, before, event, target))
        return actions
