"""A parked result (worker/items/parking.py) comes back from the broker exactly as it went: the
transition, its detail, and the tokens sealed byte for byte. Pure: no broker, no database."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from worker.items.model import Cause, Changes, Sealed
from worker.items.parking import ParkedResult
from worker.items.states import State, Trigger

TOKEN = Sealed(key_id="k1", blob=bytes(range(256)))


def result(**changes: object) -> ParkedResult:
    return ParkedResult(
        item_id=uuid.uuid4(),
        from_state=State.LINK,
        trigger=Trigger.EXCHANGED,
        cause=Cause("item.link", "m-1"),
        detail={"plaid_request_id": "req-1", "accounts": 2},
        changes=Changes(**changes),  # type: ignore[arg-type]
        owner=uuid.uuid4(),
        answered_at=datetime(2026, 12, 4, 12, 0, 0, 123456, tzinfo=UTC),
        parked_at=datetime(2026, 12, 4, 12, 0, 5, tzinfo=UTC),
    )


def test_a_parked_result_round_trips_with_its_sealed_tokens() -> None:
    parked = result(plaid_item_id="pl-1", access_token=TOKEN, plaid_request_id="req-1")
    back = ParkedResult.decode(parked.encode())
    assert back == parked
    assert back.changes.access_token == TOKEN and back.changes.processor_token is None
    body = json.loads(parked.encode())
    assert body["changes"]["access_token"]["key_id"] == "k1" and "access-" not in parked.encode().decode()


def test_what_is_not_a_parked_result_is_refused() -> None:
    for body in (b"{}", b"not json", json.dumps({"format": 2}).encode()):
        with pytest.raises((ValueError, KeyError, TypeError)):
            ParkedResult.decode(body)
    broken = json.loads(result(access_token=TOKEN).encode())
    broken["changes"]["access_token"]["blob"] = "***"
    with pytest.raises(ValueError):
        ParkedResult.decode(json.dumps(broken).encode())


def test_an_access_token_the_item_moved_on_without_is_an_orphan() -> None:
    parked = result(access_token=TOKEN)
    assert parked.orphaned_access_token(TOKEN) is None  # applied already: the Item holds it
    assert parked.orphaned_access_token(None) == TOKEN  # moved on without it: remove it at Plaid
    assert parked.orphaned_access_token(Sealed("k1", b"other")) == TOKEN
    assert result(atomic_funding_source_id="fs-1").orphaned_access_token(None) is None
