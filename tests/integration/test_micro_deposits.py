"""Micro-deposits and Database Insights end to end (real Postgres, RabbitMQ, sandbox, worker): each
Item ends where the README's state table says, and no processor token is ever made for an account
that is not verified or was refused.

The verification reconciler runs every second here (``PAW_VERIFICATION_RECONCILE_S=1``) unless a
test needs the webhook alone to decide; Plaid's 7 days for automated micro-deposits are scaled to
3 seconds where a test waits them out. Same-Day and Database Insights Items come from the emulator's
control levers (Plaid's Sandbox makes them only through Link).
"""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest

from tests.helpers import (
    RunningWorker,
    Sandbox,
    access_token_of,
    eventually,
    new_public_token,
    settled,
    submit_amqp,
)
from worker.items.model import Item
from worker.items.states import State
from worker.services import Services
from worker.settings import Settings

PROCESSOR_TOKEN = "/processor/token/create"
WEEK_S = 7 * 86400


@pytest.fixture
def reconcile_s() -> int:
    return 1


@pytest.fixture
def expiry_s() -> int:
    return WEEK_S


@pytest.fixture
def settings(settings: Settings, reconcile_s: int, expiry_s: int) -> Settings:
    return dataclasses.replace(
        settings, verification_reconcile_s=reconcile_s, automated_microdeposits_expiry_s=expiry_s
    )


async def submit(services: Services, token: str, *states: State) -> Item:
    await submit_amqp(services, {"public_token": token, "client_user_id": f"u-{uuid.uuid4().hex[:6]}"})
    return await settled(services, token, *states)


async def reaches(services: Services, item: Item, *states: State, timeout: float = 20) -> Item:
    async def check() -> Item | None:
        got = await services.store.get(item.id)
        return got if got is not None and got.state in states else None

    result: Item = await eventually(check, timeout=timeout)
    return result


async def waiting(services: Services, sandbox: Sandbox, token: str) -> tuple[Item, str]:
    """The Item of ``token``, waiting in awaiting_verification with no processor token made; and its
    access token at the sandbox."""
    item = await submit(services, token, State.AWAITING_VERIFICATION)
    assert item.account_id and item.processor_token is None
    assert sandbox.state.calls[PROCESSOR_TOKEN] == 0
    return item, access_token_of(sandbox, item.plaid_item_id or "")


async def same_day_token(sandbox: Sandbox, webhook: str | None) -> str:
    return sandbox.state.plaid.create_same_day_public_token(["auth"], webhook)


def transitions(history: list[object]) -> list[tuple[str | None, str, str]]:
    return [(h.from_state, h.to_state, h.cause) for h in history]  # type: ignore[attr-defined]


# -- automated micro-deposits -----------------------------------------------------------------


async def test_automated_verified_with_its_webhook_lost_is_finished_by_the_reconciler(
    services: Services, worker: RunningWorker, sandbox: Sandbox
) -> None:
    # the Item's webhook URL refuses connections: AUTOMATICALLY_VERIFIED never arrives
    token = await new_public_token(sandbox, "user_automated_microdeposits", webhook="http://127.0.0.1:9/lost")
    item, access = await waiting(services, sandbox, token)
    sandbox.state.plaid.set_verification_status(access, item.account_id or "", "automatically_verified")
    done = await reaches(services, item, State.ATOMIC_VERIFIED)
    assert sandbox.state.calls[PROCESSOR_TOKEN] == 1
    assert sandbox.state.atomic_funding_sources(str(done.id)) == 1
    history = await services.store.history(item.id)
    verified = next(h for h in history if h.from_state == "awaiting_verification")
    assert (verified.to_state, verified.cause) == ("exchanged", "item.drive")  # the reconciler's drive
    assert verified.detail["verification_status"] == "automatically_verified"
    sent = [w for w in sandbox.state.webhooks if w.source == "plaid"]
    assert sent and not any(w.outcome == "delivered" for w in sent)  # lost: Plaid's webhook told nobody


@pytest.mark.parametrize("expiry_s", [3])
async def test_automated_still_pending_past_seven_days_fails_expired_and_is_removed_at_plaid(
    services: Services, worker: RunningWorker, sandbox: Sandbox
) -> None:
    token = await new_public_token(sandbox, "user_automated_microdeposits")
    item, _ = await waiting(services, sandbox, token)
    failed = await reaches(services, item, State.FAILED)
    assert failed.error_code == "VERIFICATION_EXPIRED"
    assert sandbox.state.calls[PROCESSOR_TOKEN] == 0
    history = await services.store.history(item.id)
    # asked (and found pending) at least once before the 3 "days" were up
    assert [(h.from_state, h.to_state) for h in history][-1] == ("awaiting_verification", "failed")
    assert (
        history[-1].at - next(h.at for h in history if h.to_state == "awaiting_verification")
    ).total_seconds() >= 3

    async def removed() -> bool:
        got = await services.store.get(item.id)
        return (
            got is not None
            and got.access_token is None
            and sandbox.state.plaid.items[item.plaid_item_id or ""].removed
        )

    await eventually(removed)


@pytest.mark.parametrize("reconcile_s", [3600])
async def test_item_drive_re_reads_plaid_for_an_item_awaiting_verification(
    services: Services, worker: RunningWorker, sandbox: Sandbox
) -> None:
    """``paw item retry`` (an item.drive message) asks Plaid again; no reconciler here."""
    token = await new_public_token(sandbox, "user_automated_microdeposits")
    item, access = await waiting(services, sandbox, token)
    sandbox.state.plaid.set_verification_status(access, item.account_id or "", "automatically_verified")
    body = json.dumps({"item_id": str(item.id), "reason": "test: resume"}).encode()
    await services.publisher.publish("item.drive", body, message_id=str(uuid.uuid4()))
    await reaches(services, item, State.ATOMIC_VERIFIED)
    assert sandbox.state.calls[PROCESSOR_TOKEN] == 1


# -- Same-Day micro-deposits ------------------------------------------------------------------


@pytest.mark.parametrize("reconcile_s", [3600])
async def test_same_day_verified_by_text_message_is_funded(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox
) -> None:
    token = await same_day_token(sandbox, f"{receiver}/webhooks/plaid")
    item, access = await waiting(services, sandbox, token)
    sandbox.state.plaid.fire_webhook(access, "SMS_MICRODEPOSITS_VERIFICATION", None)  # the real endpoint
    await reaches(services, item, State.ATOMIC_VERIFIED)
    assert sandbox.state.calls[PROCESSOR_TOKEN] == 1
    history = await services.store.history(item.id)
    verified = next(h for h in history if h.from_state == "awaiting_verification")
    assert verified.cause.startswith("webhook.plaid.AUTH.SMS_MICRODEPOSITS_VERIFICATION")


@pytest.mark.parametrize("reconcile_s", [3600])
async def test_same_day_text_message_verification_failed_fails_without_a_processor_token(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox
) -> None:
    token = await same_day_token(sandbox, f"{receiver}/webhooks/plaid")
    item, access = await waiting(services, sandbox, token)
    # Plaid's fire_webhook sends only MANUALLY_VERIFIED: the failed status through a control lever
    sandbox.state.plaid.emit_webhook(
        access, "AUTH", "SMS_MICRODEPOSITS_VERIFICATION", None, "VERIFICATION_FAILED"
    )
    failed = await reaches(services, item, State.FAILED)
    assert failed.error_code == "VERIFICATION_FAILED"
    assert sandbox.state.calls[PROCESSOR_TOKEN] == 0


async def test_same_day_verified_in_link_sends_no_webhook_and_the_reconciler_finds_it(
    services: Services, worker: RunningWorker, sandbox: Sandbox
) -> None:
    token = await same_day_token(sandbox, None)  # no webhook at all
    item, access = await waiting(services, sandbox, token)
    await eventually(lambda: _looked_at(services, item))  # still pending: asked, touched, left waiting
    assert (await services.store.get(item.id)).state is State.AWAITING_VERIFICATION  # type: ignore[union-attr]
    # the user typed the micro-deposit code in Link: manually_verified, and Plaid sends nothing
    sandbox.state.plaid.set_any_verification_status(access, item.account_id, "manually_verified")
    await reaches(services, item, State.ATOMIC_VERIFIED)
    assert sandbox.state.calls[PROCESSOR_TOKEN] == 1


async def _looked_at(services: Services, item: Item) -> bool:
    got = await services.store.get(item.id)
    return got is not None and got.updated_at > item.updated_at and got.state is State.AWAITING_VERIFICATION


# -- Database Insights ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "state", "code", "tokens"),
    [
        ("database_insights_pass", State.ATOMIC_VERIFIED, None, 1),
        ("database_insights_fail", State.FAILED, "ACCOUNT_NOT_VERIFIED", 0),
        ("database_insights_pass_with_caution", State.FAILED, "ACCOUNT_NOT_VERIFIED", 0),
    ],
)
async def test_database_insights_outcomes(
    status: str,
    state: State,
    code: str | None,
    tokens: int,
    services: Services,
    worker: RunningWorker,
    sandbox: Sandbox,
) -> None:
    token = sandbox.state.plaid.create_database_insights_public_token(status, None)
    item = await submit(services, token, State.ATOMIC_VERIFIED, State.FAILED)
    assert (item.state, item.error_code) == (state, code)
    assert sandbox.state.calls[PROCESSOR_TOKEN] == tokens


async def test_database_insights_pending_waits_then_goes_on_once_plaid_has_the_answer(
    services: Services, worker: RunningWorker, sandbox: Sandbox
) -> None:
    token = sandbox.state.plaid.create_database_insights_public_token("database_insights_pending", None)
    item, access = await waiting(services, sandbox, token)
    await eventually(lambda: _looked_at(services, item))
    assert sandbox.state.calls[PROCESSOR_TOKEN] == 0
    sandbox.state.plaid.set_any_verification_status(access, item.account_id, "database_insights_pass")
    await reaches(services, item, State.ATOMIC_VERIFIED)
    assert sandbox.state.calls[PROCESSOR_TOKEN] == 1


async def test_database_insights_pending_then_fail_fails_without_a_processor_token(
    services: Services, worker: RunningWorker, sandbox: Sandbox
) -> None:
    token = sandbox.state.plaid.create_database_insights_public_token("database_insights_pending", None)
    item, access = await waiting(services, sandbox, token)
    sandbox.state.plaid.set_any_verification_status(access, item.account_id, "database_insights_fail")
    failed = await reaches(services, item, State.FAILED)
    assert failed.error_code == "ACCOUNT_NOT_VERIFIED"
    assert sandbox.state.calls[PROCESSOR_TOKEN] == 0
