"""What Atomic's answer about a funding source does to an Item, from every state."""

from __future__ import annotations

import dataclasses

import pytest

from tests.fakes import new_item
from worker.items.rules import on_atomic_status
from worker.items.states import State, Trigger


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize(
    ("status", "trigger"), [("VERIFIED", Trigger.ATOMIC_VERIFIED), ("REJECTED", Trigger.ATOMIC_REJECTED)]
)
def test_a_final_answer_from_every_state(state: State, status: str, trigger: Trigger) -> None:
    item = dataclasses.replace(
        new_item(state), atomic_funding_source_id=None if state is State.PROCESSOR_TOKEN_ISSUED else "fs-1"
    )
    d = on_atomic_status(item, status, "fs-1")
    if state is State.PROCESSOR_TOKEN_ISSUED:  # Atomic answered before the submission committed
        assert d.outcome == "held" and d.trigger is None
    elif state is State.ATOMIC_PENDING:
        assert d.outcome == "applied" and d.trigger is trigger
    else:
        assert d.outcome == "ignored" and d.trigger is None


def test_another_funding_source_or_a_status_on_the_way_is_ignored() -> None:
    pending = dataclasses.replace(new_item(State.ATOMIC_PENDING), atomic_funding_source_id="fs-1")
    assert on_atomic_status(pending, "VERIFIED", "fs-2").outcome == "ignored"
    assert on_atomic_status(pending, "PENDING", "fs-1").outcome == "ignored"
    assert on_atomic_status(new_item(State.PROCESSOR_TOKEN_ISSUED), "PENDING", "fs-1").outcome == "ignored"
    assert on_atomic_status(None, "VERIFIED", "fs-1").outcome == "unknown_item"
