"""What a Plaid webhook does to an Item (worker/items/rules.py on_plaid_webhook), over every state. Pure."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.helpers import (
    LOGIN_ERROR,
    plaid_hook,
)
from worker.errors import EventTooEarly
from worker.items.model import Item
from worker.items.rules import on_plaid_webhook
from worker.items.states import LINKED, TRANSITIONS, State, Trigger, next_state

NOW = 1_800_000_000


def item_in(state: State, **kw: Any) -> Item:
    now = datetime.now(UTC)
    base: dict[str, Any] = dict(
        id=uuid.uuid4(),
        client_user_id="u",
        state=state,
        resume_state=None,
        requested_account_id=None,
        plaid_item_id="pi",
        account_id="acc",
        access_token=None,
        processor_token=None,
        atomic_funding_source_id="fs",
        error_code=None,
        error_type=None,
        error_message=None,
        plaid_request_id=None,
        created_at=now,
        updated_at=now,
        version=1,
    )
    base.update(kw)
    return Item(**base)


@pytest.mark.parametrize("state", list(State))
def test_login_error_from_every_state(state: State) -> None:
    d = on_plaid_webhook(item_in(state), LOGIN_ERROR, NOW)
    if state in LINKED:
        assert d.trigger is Trigger.LOGIN_REQUIRED and d.login_changed_at == NOW
    else:
        assert d.trigger is None


@pytest.mark.parametrize("state", list(State))
def test_login_repaired_from_every_state(state: State) -> None:
    d = on_plaid_webhook(
        item_in(state, resume_state=State.ATOMIC_VERIFIED), plaid_hook("ITEM", "LOGIN_REPAIRED"), NOW
    )
    assert (d.trigger is Trigger.LOGIN_REPAIRED) == (state is State.LOGIN_REQUIRED)
    assert d.login_changed_at == NOW


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("code", ["USER_PERMISSION_REVOKED", "USER_ACCOUNT_REVOKED"])
def test_revocation_from_every_state(state: State, code: str) -> None:
    d = on_plaid_webhook(item_in(state), plaid_hook("ITEM", code, account_id="acc"), NOW)
    legal = state in TRANSITIONS[Trigger.REVOKED] and state is not State.FAILED
    assert (d.trigger is Trigger.REVOKED) == legal
    if d.trigger:
        assert next_state(state, d.trigger) is State.REVOKED


def test_account_revoked_for_another_account_is_only_recorded() -> None:
    d = on_plaid_webhook(
        item_in(State.ATOMIC_VERIFIED), plaid_hook("ITEM", "USER_ACCOUNT_REVOKED", account_id="other"), NOW
    )
    assert d.trigger is None and d.outcome == "recorded"


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("code", ["AUTOMATICALLY_VERIFIED", "VERIFICATION_EXPIRED"])
def test_micro_deposit_outcome_from_every_state(state: State, code: str) -> None:
    hook = plaid_hook("AUTH", code, account_id="acc")
    if state in (State.LINK, State.EXCHANGED):  # ahead of the Item's account choice: tried again later
        with pytest.raises(EventTooEarly):
            on_plaid_webhook(item_in(state), hook, NOW)
        return
    d = on_plaid_webhook(item_in(state), hook, NOW)
    if state is State.AWAITING_VERIFICATION:
        assert d.trigger is (Trigger.ACCOUNT_VERIFIED if code == "AUTOMATICALLY_VERIFIED" else Trigger.FAILED)
    else:
        assert d.trigger is None


def test_older_event_does_not_undo_a_newer_condition() -> None:
    repaired_later = item_in(State.ATOMIC_VERIFIED, login_changed_at=NOW + 10)
    assert on_plaid_webhook(repaired_later, LOGIN_ERROR, NOW).outcome == "stale"
    broken_later = item_in(
        State.LOGIN_REQUIRED, resume_state=State.ATOMIC_VERIFIED, login_changed_at=NOW + 10
    )
    assert on_plaid_webhook(broken_later, plaid_hook("ITEM", "LOGIN_REPAIRED"), NOW).outcome == "stale"


@pytest.mark.parametrize(
    ("webhook", "outcome"),
    [
        (plaid_hook("ITEM", "NEW_ACCOUNTS_AVAILABLE"), "recorded"),
        (plaid_hook("ITEM", "WEBHOOK_UPDATE_ACKNOWLEDGED", new_webhook_url="https://x"), "recorded"),
        (plaid_hook("ITEM", "SOMETHING_NEW"), "unknown_code"),
        (plaid_hook("TRANSACTIONS", "SYNC_UPDATES_AVAILABLE"), "unknown_type"),
        (
            plaid_hook("AUTH", "DEFAULT_UPDATE", account_ids_with_updated_auth={"acc": ["ACCOUNT_NUMBER"]}),
            "numbers_changed",
        ),
    ],
)
def test_recorded_events(webhook: dict[str, Any], outcome: str) -> None:
    d = on_plaid_webhook(item_in(State.ATOMIC_VERIFIED), webhook, NOW)
    assert d.trigger is None and d.outcome == outcome


def test_pending_expiration_and_disconnect_keep_their_deadline() -> None:
    item = item_in(State.ATOMIC_VERIFIED)
    d = on_plaid_webhook(
        item, plaid_hook("ITEM", "PENDING_EXPIRATION", consent_expiration_time="2030-01-02T03:04:05Z"), NOW
    )
    assert d.consent_expires_at == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    d2 = on_plaid_webhook(item, plaid_hook("ITEM", "PENDING_DISCONNECT", reason="INSTITUTION_MIGRATION"), NOW)
    assert d2.disconnect_at == datetime.fromtimestamp(NOW, UTC) + timedelta(days=7)
    assert d2.disconnect_reason == "INSTITUTION_MIGRATION"


@pytest.mark.parametrize(
    "code",
    [
        "ITEM_LOGIN_REQUIRED",
        "ITEM_LOCKED",
        "ACCESS_NOT_GRANTED",
        "ADDITIONAL_CONSENT_REQUIRED",
        "USER_SETUP_REQUIRED",
    ],
)
def test_an_item_error_update_mode_fixes_waits_for_the_user_keeping_its_code(code: str) -> None:
    hook = plaid_hook("ITEM", "ERROR", error={"error_code": code, "error_type": "ITEM_ERROR"})
    d = on_plaid_webhook(item_in(State.ATOMIC_VERIFIED), hook, NOW)
    assert (d.trigger, d.error_code) == (Trigger.LOGIN_REQUIRED, code)


def test_an_item_error_nobody_can_fix_in_update_mode_is_only_recorded() -> None:
    hook = plaid_hook("ITEM", "ERROR", error={"error_code": "INSTITUTION_NO_LONGER_SUPPORTED"})
    assert on_plaid_webhook(item_in(State.ATOMIC_VERIFIED), hook, NOW).outcome == "recorded"


def test_product_permissions_required_waits_for_the_user() -> None:
    d = on_plaid_webhook(
        item_in(State.ATOMIC_PENDING), plaid_hook("AUTH", "PRODUCT_PERMISSIONS_REQUIRED"), NOW
    )
    assert (d.trigger, d.error_code) == (Trigger.LOGIN_REQUIRED, "PRODUCT_PERMISSIONS_REQUIRED")


@pytest.mark.parametrize(
    ("status", "trigger"),
    [("MANUALLY_VERIFIED", Trigger.ACCOUNT_VERIFIED), ("VERIFICATION_FAILED", Trigger.FAILED)],
)
def test_same_day_micro_deposits_verified_by_text_message(status: str, trigger: Trigger) -> None:
    hook = plaid_hook("AUTH", "SMS_MICRODEPOSITS_VERIFICATION", account_id="acc", status=status)
    d = on_plaid_webhook(item_in(State.AWAITING_VERIFICATION), hook, NOW)
    assert d.trigger is trigger
    if trigger is Trigger.FAILED:
        assert d.error_code == "VERIFICATION_FAILED"


def test_a_revoked_item_keeps_its_tokens_until_it_is_removed_at_plaid() -> None:
    d = on_plaid_webhook(item_in(State.ATOMIC_VERIFIED), plaid_hook("ITEM", "USER_PERMISSION_REVOKED"), NOW)
    assert d.trigger is Trigger.REVOKED and not d.changes().destroy_tokens
