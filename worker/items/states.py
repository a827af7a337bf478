"""The per-Item state machine, as data. Pure: no I/O, no clock.

``TRANSITIONS[trigger]`` maps each state the trigger may fire from to the state it leads to. The
store turns the same table into a guarded ``UPDATE ... WHERE state = ANY($allowed)``, so the database
refuses an illegal transition even if two workers race.

``LOGIN_REPAIRED`` is the one trigger whose target is not fixed: it returns the Item to the state it
was in when ``LOGIN_REQUIRED`` fired (kept in ``items.resume_state``).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from worker.errors import IllegalTransition


class State(StrEnum):
    LINK = "link"
    EXCHANGED = "exchanged"
    AWAITING_VERIFICATION = "awaiting_verification"
    PROCESSOR_TOKEN_ISSUED = "processor_token_issued"
    ATOMIC_PENDING = "atomic_pending"
    ATOMIC_VERIFIED = "atomic_verified"
    ATOMIC_REJECTED = "atomic_rejected"
    LOGIN_REQUIRED = "login_required"
    FAILED = "failed"
    REVOKED = "revoked"


class Trigger(StrEnum):
    EXCHANGED = "exchanged"
    AWAITING_VERIFICATION = "awaiting_verification"
    ACCOUNT_VERIFIED = "account_verified"
    PROCESSOR_TOKEN_CREATED = "processor_token_created"
    ATOMIC_SUBMITTED = "atomic_submitted"
    ATOMIC_VERIFIED = "atomic_verified"
    ATOMIC_REJECTED = "atomic_rejected"
    LOGIN_REQUIRED = "login_required"
    LOGIN_REPAIRED = "login_repaired"
    FAILED = "failed"
    REVOKED = "revoked"
    FORGOTTEN = "forgotten"


S = State

# Where the Item has a live access token and the user's bank login matters.
LINKED = frozenset(
    {S.EXCHANGED, S.AWAITING_VERIFICATION, S.PROCESSOR_TOKEN_ISSUED, S.ATOMIC_PENDING, S.ATOMIC_VERIFIED}
)
# Nothing more happens on its own from these.
TERMINAL = frozenset({S.ATOMIC_REJECTED, S.FAILED, S.REVOKED})

TRANSITIONS: Mapping[Trigger, Mapping[State, State]] = {
    Trigger.EXCHANGED: {S.LINK: S.EXCHANGED},
    Trigger.AWAITING_VERIFICATION: {S.EXCHANGED: S.AWAITING_VERIFICATION},
    Trigger.ACCOUNT_VERIFIED: {S.AWAITING_VERIFICATION: S.EXCHANGED},
    Trigger.PROCESSOR_TOKEN_CREATED: {S.EXCHANGED: S.PROCESSOR_TOKEN_ISSUED},
    Trigger.ATOMIC_SUBMITTED: {S.PROCESSOR_TOKEN_ISSUED: S.ATOMIC_PENDING},
    Trigger.ATOMIC_VERIFIED: {S.ATOMIC_PENDING: S.ATOMIC_VERIFIED},
    Trigger.ATOMIC_REJECTED: {S.ATOMIC_PENDING: S.ATOMIC_REJECTED},
    Trigger.LOGIN_REQUIRED: {s: S.LOGIN_REQUIRED for s in LINKED},
    Trigger.LOGIN_REPAIRED: {S.LOGIN_REQUIRED: S.LOGIN_REQUIRED},  # target is the resume state
    Trigger.FAILED: {
        s: S.FAILED
        for s in (S.LINK, S.EXCHANGED, S.AWAITING_VERIFICATION, S.PROCESSOR_TOKEN_ISSUED, S.LOGIN_REQUIRED)
    },
    Trigger.REVOKED: {s: S.REVOKED for s in (*LINKED, S.LOGIN_REQUIRED, S.ATOMIC_REJECTED)},
    # `paw item forget`: an operator removes the Item at Plaid and Atomic and destroys its tokens.
    Trigger.FORGOTTEN: {s: S.REVOKED for s in State if s is not S.REVOKED},
}


def allowed_from(trigger: Trigger) -> frozenset[State]:
    """The states ``trigger`` may fire from."""
    return frozenset(TRANSITIONS[trigger])


def next_state(state: State, trigger: Trigger, *, resume: State | None = None) -> State:
    """The state ``trigger`` leads to from ``state``; :class:`IllegalTransition` if it may not fire."""
    targets = TRANSITIONS[trigger]
    if state not in targets:
        raise IllegalTransition(f"{trigger.value} is not allowed from {state.value}")
    if trigger is Trigger.LOGIN_REPAIRED:
        if resume is None or resume not in LINKED:
            raise IllegalTransition(f"login_repaired needs a linked state to resume, got {resume}")
        return resume
    return targets[state]
