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
from worker.items.rules import on_item_health, on_plaid_webhook, redelivery_worth_checking
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


LOGIN_CHECKED = LINKED | {State.LOGIN_REQUIRED}
REPAIRED = plaid_hook("ITEM", "LOGIN_REPAIRED")


@pytest.mark.parametrize("hook", [LOGIN_ERROR, REPAIRED], ids=["ERROR", "LOGIN_REPAIRED"])
@pytest.mark.parametrize("state", list(State))
def test_a_login_webhook_decides_nothing_itself_it_makes_the_worker_ask_plaid(
    state: State, hook: dict[str, Any]
) -> None:
    d = on_plaid_webhook(item_in(state, resume_state=State.ATOMIC_VERIFIED), hook, NOW)
    assert d.trigger is None
    assert d.check_login == (state in LOGIN_CHECKED)
    assert d.outcome == ("check" if state in LOGIN_CHECKED else "ignored")


def test_the_send_time_no_longer_matters() -> None:
    """Before, an event older than the last login change was stale; now every one asks Plaid."""
    for sent_at in (NOW - 3600, NOW, NOW + 3600):
        assert on_plaid_webhook(item_in(State.ATOMIC_VERIFIED), LOGIN_ERROR, sent_at).check_login


# -- what Plaid's /item/get answer does (on_item_health) -----------------------------------------


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("code", ["ITEM_LOGIN_REQUIRED", "ITEM_LOCKED", "USER_SETUP_REQUIRED"])
def test_plaid_says_the_login_is_broken(state: State, code: str) -> None:
    d = on_item_health(item_in(state, resume_state=State.EXCHANGED), code)
    if state in LINKED:
        assert (d.trigger, d.error_code) == (Trigger.LOGIN_REQUIRED, code)
        assert d.changes().error_code == code  # login_required keeps the code
        assert next_state(state, Trigger.LOGIN_REQUIRED) is State.LOGIN_REQUIRED
    else:
        assert d.trigger is None
        assert d.outcome == ("still_required" if state is State.LOGIN_REQUIRED else "ignored")


@pytest.mark.parametrize("state", list(State))
def test_plaid_says_the_login_works(state: State) -> None:
    d = on_item_health(item_in(state, resume_state=State.EXCHANGED), None)
    if state is State.LOGIN_REQUIRED:
        assert d.trigger is Trigger.LOGIN_REPAIRED
        assert next_state(state, Trigger.LOGIN_REPAIRED, resume=State.EXCHANGED) is State.EXCHANGED
    else:
        assert d.trigger is None
        assert d.outcome == ("healthy" if state in LINKED else "ignored")


def test_an_item_error_the_user_cannot_fix_changes_nothing() -> None:
    for state in LOGIN_CHECKED:
        d = on_item_health(item_in(state, resume_state=State.EXCHANGED), "INSTITUTION_DOWN")
        assert d.trigger is None and d.outcome == "recorded"


def test_any_sequence_of_answers_ends_where_the_last_one_says() -> None:
    """break, repair, break, repair in any order, repeated: the Item follows the last answer."""
    import itertools

    answers = ["ITEM_LOGIN_REQUIRED", None, "ITEM_LOGIN_REQUIRED", None]
    for order in itertools.permutations(answers + answers[:2]):
        item = item_in(State.ATOMIC_VERIFIED)
        for answer in order:
            d = on_item_health(item, answer)
            if d.trigger is not None:
                to = next_state(item.state, d.trigger, resume=item.resume_state)
                resume = item.state if to is State.LOGIN_REQUIRED else None
                item = item_in(to, resume_state=resume, error_code=d.error_code or item.error_code)
        want = State.LOGIN_REQUIRED if order[-1] else State.ATOMIC_VERIFIED
        assert item.state is want, order


@pytest.mark.parametrize(
    ("state", "hook", "error_code", "worth"),
    [
        # the same ITEM ERROR body again while the Item works: a second break; ask Plaid
        (State.ATOMIC_VERIFIED, LOGIN_ERROR, None, True),
        # ... while the Item already waits for its user with that code: a redelivery; nothing to learn
        (State.LOGIN_REQUIRED, LOGIN_ERROR, "ITEM_LOGIN_REQUIRED", False),
        (State.LOGIN_REQUIRED, LOGIN_ERROR, "ITEM_LOCKED", True),
        (State.LOGIN_REQUIRED, REPAIRED, "ITEM_LOGIN_REQUIRED", True),
        (State.ATOMIC_VERIFIED, REPAIRED, None, False),
        (State.FAILED, LOGIN_ERROR, None, False),
    ],
)
def test_a_redelivered_login_webhook_is_suppressed_only_where_the_item_already_agrees(
    state: State, hook: dict[str, Any], error_code: str | None, worth: bool
) -> None:
    item = item_in(state, resume_state=State.ATOMIC_VERIFIED, error_code=error_code)
    assert redelivery_worth_checking(item, hook) is worth


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
    """The webhook only asks; Plaid's answer with that code moves the Item and keeps the code."""
    hook = plaid_hook("ITEM", "ERROR", error={"error_code": code, "error_type": "ITEM_ERROR"})
    assert on_plaid_webhook(item_in(State.ATOMIC_VERIFIED), hook, NOW).check_login
    d = on_item_health(item_in(State.ATOMIC_VERIFIED), code)
    assert (d.trigger, d.error_code) == (Trigger.LOGIN_REQUIRED, code)


def test_an_item_error_nobody_can_fix_in_update_mode_is_only_recorded() -> None:
    assert (
        on_item_health(item_in(State.ATOMIC_VERIFIED), "INSTITUTION_NO_LONGER_SUPPORTED").outcome
        == "recorded"
    )


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
