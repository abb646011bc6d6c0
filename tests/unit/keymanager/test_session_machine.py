"""The pure Fig. 2a session machine: every legal transition, and refusals of the rest."""

from __future__ import annotations

import itertools

import pytest

from keyplane.errors import IllegalTransition
from keyplane.keymanager.session import (
    HISTORY_MAX,
    ArmIdleTimer,
    ConfirmDelete,
    FreeResources,
    SendKeepAlive,
    SendSessionClose,
    SessionEvent,
    SessionMachine,
    SessionState,
)

S, E = SessionState, SessionEvent

LEGAL = {
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
    (S.key_exchanging, E.key_done): S.operative,
    (S.key_exchanging, E.close): S.terminated,
    (S.key_exchanging, E.deleted): S.terminated,
}


def machine_in(state: SessionState) -> SessionMachine:
    m = SessionMachine("s", state, idle_timeout_s=10.0)
    if state is S.key_exchanging:
        m.in_flight = 1
    return m


@pytest.mark.parametrize(("state", "event"), sorted(LEGAL, key=str))
def test_session_legal_transition_reaches_its_state(state: SessionState,
                                                     event: SessionEvent) -> None:
    m = machine_in(state)
    m.handle(event, 5.0, idle_timeout_s=10.0)
    assert m.state is LEGAL[(state, event)]
    assert m.history[-1] == (5.0, state, event, LEGAL[(state, event)])


@pytest.mark.parametrize(("state", "event"), [
    (s, e) for s, e in itertools.product(S, E) if (s, e) not in LEGAL])
def test_session_illegal_transition_raises_and_keeps_state(
        state: SessionState, event: SessionEvent, caplog: pytest.LogCaptureFixture) -> None:
    m = machine_in(state)
    with pytest.raises(IllegalTransition) as info:
        m.handle(event, 1.0)
    assert m.state is state
    assert info.value.state == state.value and info.value.event == event.value
    assert "illegal event" in caplog.text


def test_session_config_received_arms_idle_timer_from_configuration() -> None:
    m = machine_in(S.user_accepted)
    actions = m.handle(E.config_received, 100.0, idle_timeout_s=30.0)
    assert actions == [ArmIdleTimer(130.0)]


def test_session_key_request_signals_keepalive_and_resets_timer() -> None:
    m = machine_in(S.operative)
    assert m.handle(E.key_request, 7.0) == [SendKeepAlive(), ArmIdleTimer(17.0)]


def test_session_concurrent_requests_return_to_operative_after_the_last() -> None:
    m = machine_in(S.operative)
    m.handle(E.key_request, 0.0)
    m.handle(E.key_request, 0.0)
    m.handle(E.key_done, 0.0)
    assert m.state is S.key_exchanging
    m.handle(E.key_done, 0.0)
    assert m.state is S.operative


def test_session_idle_expiry_closes_with_idle_timeout_reason() -> None:
    m = machine_in(S.operative)
    assert m.handle(E.idle_expired, 1.0) == [SendSessionClose("idle_timeout"), FreeResources()]


def test_session_deletion_during_key_exchanging_frees_and_confirms() -> None:
    m = machine_in(S.key_exchanging)
    assert m.handle(E.deleted, 1.0) == [FreeResources(), ConfirmDelete()]
    assert m.state is S.terminated and m.in_flight == 0


def test_session_application_close_tells_admission_control() -> None:
    m = machine_in(S.operative)
    assert m.handle(E.close, 1.0) == [SendSessionClose("close"), FreeResources()]


def test_session_idle_expiry_while_exchanging_is_illegal() -> None:
    m = machine_in(S.key_exchanging)
    with pytest.raises(IllegalTransition):
        m.handle(E.idle_expired, 1.0)


def test_session_history_keeps_the_newest_transitions_only() -> None:
    """A busy session's machine does not grow with its requests: it remembers the newest
    HISTORY_MAX transitions."""
    m = machine_in(S.operative)
    for i in range(10 * HISTORY_MAX):
        m.handle(E.key_request, float(i))
        m.handle(E.key_done, float(i))
    assert len(m.history) == HISTORY_MAX
    assert m.history[-1] == (float(10 * HISTORY_MAX - 1), S.key_exchanging, E.key_done,
                             S.operative)
