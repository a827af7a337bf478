"""An Item in awaiting_verification asked about again: the pure decision over Plaid's
verification_status (rules.on_verification_status), the step a resumed drive takes (next_step), and
the pipeline carrying it out on fakes (verified: on to the processor token; refused or expired:
failed and removed at Plaid, no processor token; pending: touched, nothing else)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.fakes import TEST_SEALER, FakeAtomic, FakePlaid, FakeStore, linked_item, transient
from worker.errors import UpstreamError
from worker.items.model import Cause, Item
from worker.items.pipeline import Pipeline
from worker.items.rules import Step, next_step, on_verification_status
from worker.items.states import State, Trigger
from worker.plaid_api import Account

T0 = datetime(2026, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def decide(status: str | None, *, waited: timedelta = timedelta(hours=4), caution: bool = False) -> object:
    v = on_verification_status(status, waiting_since=T0, now=T0 + waited, accept_caution=caution)
    return v.trigger, v.error_code


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("automatically_verified", (Trigger.ACCOUNT_VERIFIED, None)),
        ("manually_verified", (Trigger.ACCOUNT_VERIFIED, None)),
        ("database_insights_pass", (Trigger.ACCOUNT_VERIFIED, None)),
        ("database_matched", (Trigger.ACCOUNT_VERIFIED, None)),
        (None, (Trigger.ACCOUNT_VERIFIED, None)),
        ("", (Trigger.ACCOUNT_VERIFIED, None)),
        ("verification_expired", (Trigger.FAILED, "VERIFICATION_EXPIRED")),
        ("verification_failed", (Trigger.FAILED, "VERIFICATION_FAILED")),
        ("database_insights_fail", (Trigger.FAILED, "ACCOUNT_NOT_VERIFIED")),
        ("database_insights_pass_with_caution", (Trigger.FAILED, "ACCOUNT_NOT_VERIFIED")),
        ("pending_automatic_verification", (None, None)),
        ("pending_manual_verification", (None, None)),
        ("unsent", (None, None)),
        ("database_insights_pending", (None, None)),
        ("some_status_plaid_adds_later", (None, None)),
    ],
)
def test_what_plaid_says_now_decides(status: str | None, expected: object) -> None:
    assert decide(status) == expected


def test_caution_is_funded_only_when_the_operator_accepts_it() -> None:
    assert decide("database_insights_pass_with_caution", caution=True) == (Trigger.ACCOUNT_VERIFIED, None)


def test_automated_micro_deposits_still_pending_after_seven_days_expire() -> None:
    pending = "pending_automatic_verification"
    assert decide(pending, waited=7 * DAY - timedelta(seconds=1)) == (None, None)
    assert decide(pending, waited=7 * DAY) == (Trigger.FAILED, "VERIFICATION_EXPIRED")


@pytest.mark.parametrize("status", ["pending_manual_verification", "unsent", "database_insights_pending"])
def test_only_automated_micro_deposits_expire_on_paws_clock(status: str) -> None:
    """Same-Day, unsent and Database Insights: Plaid itself says when they expire or fail."""
    assert decide(status, waited=30 * DAY) == (None, None)


def test_a_resumed_drive_checks_verification_a_continuing_one_does_not() -> None:
    s = State.AWAITING_VERIFICATION
    assert next_step(s, has_public_token=False, resuming=True) is Step.CHECK_VERIFICATION
    assert next_step(s, has_public_token=False) is None
    assert next_step(State.EXCHANGED, has_public_token=False, resuming=True) is Step.ISSUE_PROCESSOR_TOKEN


# -- the pipeline ------------------------------------------------------------------------------


class World:
    def __init__(self, status: str | None, *, expiry: timedelta = 7 * DAY) -> None:
        self.store = FakeStore()
        self.plaid = FakePlaid(accounts=[Account("acc-md", "depository", "checking", status, "0000")])
        self.pipeline = Pipeline(
            store=self.store,
            sealer=TEST_SEALER,
            plaid=self.plaid,
            atomic=FakeAtomic(),
            lease_s=30.0,
            automated_expiry=expiry,
            now=self.store.now,
        )
        # exchanged, then waiting for acc-md (history at the store's clock 0)
        item = self.store.add(linked_item(State.EXCHANGED))
        self.item = self.store.move(item.id, State.AWAITING_VERIFICATION, account_id="acc-md")

    async def resume(self) -> Item | None:
        return await self.pipeline.drive(self.item.id, public_token=None, cause=Cause("item.drive", "m1"))


async def test_verified_now_goes_on_to_the_processor_token_and_atomic_in_the_same_drive() -> None:
    w = World("automatically_verified")
    done = await w.resume()
    assert done is not None and done.state is State.ATOMIC_PENDING
    assert w.store.path(w.item.id)[-4:] == [
        "awaiting_verification",
        "exchanged",
        "processor_token_issued",
        "atomic_pending",
    ]
    assert w.plaid.names() == ["accounts", "accounts", "create_processor_token"]
    assert w.store.lease_of(w.item.id) is None


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("verification_expired", "VERIFICATION_EXPIRED"),
        ("verification_failed", "VERIFICATION_FAILED"),
        ("database_insights_fail", "ACCOUNT_NOT_VERIFIED"),
    ],
)
async def test_refused_now_fails_without_a_processor_token_and_removes_the_item(
    status: str, code: str
) -> None:
    w = World(status)
    done = await w.resume()
    assert done is not None and done.state is State.FAILED and done.error_code == code
    assert "create_processor_token" not in w.plaid.names() and "remove_item" in w.plaid.names()
    assert w.store.items[w.item.id].access_token is None


async def test_still_pending_is_touched_and_left_waiting() -> None:
    w = World("pending_manual_verification")
    w.store.clock = 3600
    done = await w.resume()
    assert done is not None and done.state is State.AWAITING_VERIFICATION
    stored = w.store.items[w.item.id]
    assert stored.updated_at == w.store.now() and stored.version == w.item.version
    assert w.plaid.names() == ["accounts"] and w.store.lease_of(w.item.id) is None


async def test_automated_still_pending_past_the_expiry_fails_verification_expired() -> None:
    w = World("pending_automatic_verification", expiry=timedelta(seconds=60))
    w.store.clock = 59
    waiting = await w.resume()
    assert waiting is not None and waiting.state is State.AWAITING_VERIFICATION
    w.store.clock = 61
    done = await w.resume()
    assert done is not None and done.state is State.FAILED and done.error_code == "VERIFICATION_EXPIRED"
    assert "create_processor_token" not in w.plaid.names()


async def test_plaid_away_leaves_the_item_waiting_for_the_broker_retry() -> None:
    w = World("automatically_verified")
    w.plaid.fail_on("accounts", transient())
    with pytest.raises(UpstreamError):
        await w.resume()
    assert w.store.items[w.item.id].state is State.AWAITING_VERIFICATION
    assert w.store.lease_of(w.item.id) is None
