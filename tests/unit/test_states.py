"""The transition table, exhaustively: every (state, trigger) pair is either the one legal target or refused."""

from __future__ import annotations

import itertools

import pytest

from worker.errors import IllegalTransition
from worker.items.states import LINKED, TERMINAL, TRANSITIONS, State, Trigger, allowed_from, next_state

S, T = State, Trigger

# The whole table, written out independently of the code's comprehensions.
EXPECTED: dict[tuple[State, Trigger], State] = {
    (S.LINK, T.EXCHANGED): S.EXCHANGED,
    (S.EXCHANGED, T.AWAITING_VERIFICATION): S.AWAITING_VERIFICATION,
    (S.AWAITING_VERIFICATION, T.ACCOUNT_VERIFIED): S.EXCHANGED,
    (S.EXCHANGED, T.PROCESSOR_TOKEN_CREATED): S.PROCESSOR_TOKEN_ISSUED,
    (S.PROCESSOR_TOKEN_ISSUED, T.ATOMIC_SUBMITTED): S.ATOMIC_PENDING,
    (S.ATOMIC_PENDING, T.ATOMIC_VERIFIED): S.ATOMIC_VERIFIED,
    (S.ATOMIC_PENDING, T.ATOMIC_REJECTED): S.ATOMIC_REJECTED,
    **{
        (s, T.LOGIN_REQUIRED): S.LOGIN_REQUIRED
        for s in (
            S.EXCHANGED,
            S.AWAITING_VERIFICATION,
            S.PROCESSOR_TOKEN_ISSUED,
            S.ATOMIC_PENDING,
            S.ATOMIC_VERIFIED,
        )
    },
    **{
        (s, T.FAILED): S.FAILED
        for s in (S.LINK, S.EXCHANGED, S.AWAITING_VERIFICATION, S.PROCESSOR_TOKEN_ISSUED, S.LOGIN_REQUIRED)
    },
    **{
        (s, T.REVOKED): S.REVOKED
        for s in (
            S.EXCHANGED,
            S.AWAITING_VERIFICATION,
            S.PROCESSOR_TOKEN_ISSUED,
            S.ATOMIC_PENDING,
            S.ATOMIC_VERIFIED,
            S.LOGIN_REQUIRED,
            S.ATOMIC_REJECTED,
        )
    },
    # paw item forget: from anywhere but revoked
    **{
        (s, T.FORGOTTEN): S.REVOKED
        for s in (
            S.LINK,
            S.EXCHANGED,
            S.AWAITING_VERIFICATION,
            S.PROCESSOR_TOKEN_ISSUED,
            S.ATOMIC_PENDING,
            S.ATOMIC_VERIFIED,
            S.ATOMIC_REJECTED,
            S.LOGIN_REQUIRED,
            S.FAILED,
        )
    },
}


@pytest.mark.parametrize(("state", "trigger"), list(itertools.product(State, Trigger)))
def test_every_pair(state: State, trigger: Trigger) -> None:
    if trigger is T.LOGIN_REPAIRED:
        return  # covered below: its target depends on the resume state
    if (state, trigger) in EXPECTED:
        assert next_state(state, trigger) is EXPECTED[(state, trigger)]
        assert state in allowed_from(trigger)
    else:
        with pytest.raises(IllegalTransition):
            next_state(state, trigger)
        assert state not in allowed_from(trigger)


@pytest.mark.parametrize("resume", list(State))
@pytest.mark.parametrize("state", list(State))
def test_login_repaired_returns_to_where_it_was(state: State, resume: State) -> None:
    if state is S.LOGIN_REQUIRED and resume in LINKED:
        assert next_state(state, T.LOGIN_REPAIRED, resume=resume) is resume
    else:
        with pytest.raises(IllegalTransition):
            next_state(state, T.LOGIN_REPAIRED, resume=resume)


def test_login_repaired_without_resume_state_is_refused() -> None:
    with pytest.raises(IllegalTransition):
        next_state(S.LOGIN_REQUIRED, T.LOGIN_REPAIRED)


def test_terminal_states_only_leave_by_revocation() -> None:
    for state in TERMINAL:
        leaving = [t for t in Trigger if state in TRANSITIONS[t]]
        assert set(leaving) <= {T.REVOKED, T.FORGOTTEN}


def test_every_state_is_reachable_from_link() -> None:
    seen, frontier = {S.LINK}, [S.LINK]
    while frontier:
        state = frontier.pop()
        for trigger, table in TRANSITIONS.items():
            if state in table:
                targets = LINKED if trigger is T.LOGIN_REPAIRED else {table[state]}
                for t in targets - seen:
                    seen.add(t)
                    frontier.append(t)
    assert seen == set(State)
