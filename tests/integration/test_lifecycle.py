"""Webhook-driven Item lifecycle: ITEM, AUTH and Atomic events on the real broker and database.

Webhooks come from the sandbox, signed as Plaid signs them, through the receiver; where a test needs
control over the send time (ordering) it signs bodies itself with the sandbox's key.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from datetime import timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from sandbox.app import SandboxConfig
from tests.helpers import (
    LOGIN_ERROR,
    TOKEN_PATTERNS,
    RunningWorker,
    Sandbox,
    access_token_of,
    all_cells,
    eventually,
    new_public_token,
    post_signed,
    queue_messages,
    settled,
    state_of,
    submit_amqp,
    verified_item,
)
from worker.items.model import Item
from worker.items.states import State, Trigger, next_state
from worker.runner import run_worker
from worker.services import Services
from worker.settings import Settings


@pytest.fixture
def sandbox_config(sandbox_config_for_receiver: SandboxConfig) -> SandboxConfig:
    return sandbox_config_for_receiver


# -- the pure decision, from every state --------------------------------------------------------


# -- end to end ---------------------------------------------------------------------------------


async def inbox(settings: Settings) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return list(await conn.fetch("SELECT * FROM inbox ORDER BY received_at"))
    finally:
        await conn.close()


async def test_login_required_then_repaired_returns_to_verified(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox
) -> None:
    item = await verified_item(services, sandbox, receiver)
    assert item.plaid_item_id
    sandbox.state.plaid.reset_login(access_token_of(sandbox, item.plaid_item_id))
    broken = await state_of(services, item, State.LOGIN_REQUIRED)
    assert broken.resume_state is State.ATOMIC_VERIFIED
    # repaired at the bank, outside this app: Plaid sends LOGIN_REPAIRED (a control lever)
    sandbox.state.plaid.repair_login(access_token_of(sandbox, item.plaid_item_id), elsewhere=True)
    await state_of(services, item, State.ATOMIC_VERIFIED)
    history = [(h.from_state, h.to_state) for h in await services.store.history(item.id)]
    assert history[-2:] == [("atomic_verified", "login_required"), ("login_required", "atomic_verified")]


async def test_login_repair_resumes_an_unfinished_item(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox
) -> None:
    """An Item whose login broke before its processor token was issued goes on once repaired."""
    item = await verified_item(services, sandbox, receiver, "user_automated_microdeposits")
    access = access_token_of(sandbox, item.plaid_item_id or "")
    sandbox.state.plaid.reset_login(access)
    await state_of(services, item, State.LOGIN_REQUIRED)
    sandbox.state.plaid.repair_login(access, elsewhere=True)  # Plaid sends LOGIN_REPAIRED
    back = await state_of(services, item, State.AWAITING_VERIFICATION)
    sandbox.state.plaid.set_verification_status(access, back.account_id or "", "automatically_verified")
    await state_of(services, item, State.ATOMIC_VERIFIED)


async def test_micro_deposits_verified_then_funded(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox
) -> None:
    item = await verified_item(services, sandbox, receiver, "user_automated_microdeposits")
    assert item.account_id and sandbox.state.atomic_submissions(str(item.id)) == 0
    sandbox.state.plaid.set_verification_status(
        access_token_of(sandbox, item.plaid_item_id or ""), item.account_id, "automatically_verified"
    )
    done = await state_of(services, item, State.ATOMIC_VERIFIED)
    assert sandbox.state.atomic_funding_sources(str(done.id)) == 1


async def test_micro_deposits_expired_fails(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox
) -> None:
    item = await verified_item(services, sandbox, receiver, "user_automated_microdeposits")
    sandbox.state.plaid.set_verification_status(
        access_token_of(sandbox, item.plaid_item_id or ""), item.account_id or "", "verification_expired"
    )
    failed = await state_of(services, item, State.FAILED)
    assert failed.error_code == "VERIFICATION_EXPIRED"


@pytest.mark.parametrize("code", ["USER_PERMISSION_REVOKED", "USER_ACCOUNT_REVOKED"])
async def test_revocation_removes_the_item_at_plaid_then_destroys_tokens_and_the_funding_source(
    code: str, services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox, settings: Settings
) -> None:
    item = await verified_item(services, sandbox, receiver)
    access = access_token_of(sandbox, item.plaid_item_id or "")
    if code == "USER_ACCOUNT_REVOKED":  # for the funding account exactly: a control lever
        sandbox.state.plaid.emit_webhook(access, "ITEM", code, item.account_id)
    else:
        sandbox.state.plaid.fire_webhook(access, code, None)
    await state_of(services, item, State.REVOKED)

    async def tokens_gone() -> Item | None:
        got = await services.store.get(item.id)
        return got if got is not None and got.access_token is None and got.processor_token is None else None

    revoked: Item = await eventually(tokens_gone)
    assert revoked.error_code == code
    # removed at Plaid first (Plaid: only /item/remove revokes the processor's access), and marked so
    assert sandbox.state.plaid.items[item.plaid_item_id or ""].removed
    assert revoked.plaid_removed_at is not None
    removed = revoked
    await eventually(lambda: _removed(services, item))
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{settings.atomic_base_url}/v1/funding_sources/{removed.atomic_funding_source_id}",
            headers={"Authorization": f"Bearer {settings.atomic_api_key}"},
        ) as r,
    ):
        assert (await r.json())["status"] == "REMOVED"
    row = next(
        c for c in await all_cells(settings.database_url) if c[0] == "items" and c[1] == "access_token_sealed"
    )
    assert row[2] is None


async def _removed(services: Services, item: Item) -> bool:
    got = await services.store.get(item.id)
    return got is not None and got.atomic_removed_at is not None


async def test_pending_expiration_is_visible_to_on_call(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox
) -> None:
    item = await verified_item(services, sandbox, receiver)
    other = await verified_item(services, sandbox, receiver)
    # Plaid's Sandbox cannot fire PENDING_EXPIRATION (an EU/UK consent webhook): a control lever
    sandbox.state.plaid.emit_webhook(
        access_token_of(sandbox, item.plaid_item_id or ""), "ITEM", "PENDING_EXPIRATION", None
    )
    sandbox.state.plaid.fire_webhook(
        access_token_of(sandbox, other.plaid_item_id or ""), "PENDING_DISCONNECT", None
    )

    async def both() -> bool:
        return {i.id for i in await services.store.expiring(timedelta(days=8))} == {item.id, other.id}

    await eventually(both)
    assert await services.store.expiring(timedelta(days=6)) == []
    shown = await services.store.get(item.id)
    assert shown is not None and shown.state is State.ATOMIC_VERIFIED and shown.consent_expires_at


async def test_same_webhook_five_times_makes_one_transition(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox, settings: Settings
) -> None:
    item = await verified_item(services, sandbox, receiver)
    # the login broken at Plaid without its webhook: the five deliveries below are the only trigger
    sandbox.state.plaid.items[item.plaid_item_id or ""].login_required = True
    body = {**LOGIN_ERROR, "item_id": item.plaid_item_id}
    for _ in range(5):
        assert await post_signed(receiver, sandbox, body) == 200
    await state_of(services, item, State.LOGIN_REQUIRED)
    key = "plaid:" + hashlib.sha256(json.dumps(body, indent=2).encode()).hexdigest()

    async def all_five_consumed() -> bool:
        q = await services.connection.channel()
        try:
            declared = await q.declare_queue(services.topo.webhooks_queue, passive=True)
            return declared.declaration_result.message_count == 0 and worker.task is not None
        finally:
            await q.close()

    await eventually(all_five_consumed)
    history = await services.store.history(item.id)
    assert [h.to_state for h in history].count("login_required") == 1
    assert [r["event_key"] for r in await inbox(settings)].count(key) == 1


@pytest.mark.parametrize("broken_at_plaid", [False, True], ids=["repaired", "broken"])
async def test_repaired_arriving_before_error_ends_where_plaid_says(
    broken_at_plaid: bool,
    services: Services,
    worker: RunningWorker,
    receiver: str,
    sandbox: Sandbox,
    settings: Settings,
) -> None:
    """The bodies and their send times decide nothing: each makes the worker ask /item/get."""
    item = await verified_item(services, sandbox, receiver)
    sandbox.state.plaid.items[item.plaid_item_id or ""].login_required = broken_at_plaid
    now = int(time.time())
    repaired = {"webhook_type": "ITEM", "webhook_code": "LOGIN_REPAIRED", "item_id": item.plaid_item_id}
    error = {**LOGIN_ERROR, "item_id": item.plaid_item_id}
    assert await post_signed(receiver, sandbox, repaired, iat=now) == 200  # sent second, arrives first
    await eventually(lambda: _inbox_has(settings, 1))
    assert await post_signed(receiver, sandbox, error, iat=now - 5) == 200  # sent first, arrives late
    rows = await eventually(lambda: _inbox_has(settings, 2))
    assert [r["outcome"] for r in rows] == ["check", "check"]
    want = State.LOGIN_REQUIRED if broken_at_plaid else State.ATOMIC_VERIFIED
    await state_of(services, item, want)
    await asyncio.sleep(0.3)  # nothing moves it afterwards
    final = await services.store.get(item.id)
    assert final is not None and final.state is want


async def _inbox_has(settings: Settings, n: int) -> list[asyncpg.Record] | None:
    rows = await inbox(settings)
    plaid_rows = [r for r in rows if r["event_key"].startswith("plaid:")]
    return plaid_rows if len(plaid_rows) >= n else None


async def test_fifty_concurrent_events_with_four_consumers_leave_a_legal_history(
    services: Services, receiver: str, sandbox: Sandbox, settings: Settings
) -> None:
    stop, ready = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(run_worker(services, stop, ready=ready))
    await ready.wait()
    item = await verified_item(services, sandbox, receiver)
    stop.set()
    await first
    # queue 50 events while nobody consumes, then let four consumers race through them
    now = int(time.time())
    bodies: list[tuple[dict[str, Any], int]] = []
    for i in range(50):
        kind = i % 5
        if kind in (0, 2):
            body = {**LOGIN_ERROR, "item_id": item.plaid_item_id, "n": i}
        elif kind in (1, 3):
            body = {
                "webhook_type": "ITEM",
                "webhook_code": "LOGIN_REPAIRED",
                "item_id": item.plaid_item_id,
                "n": i,
            }
        else:
            body = {
                "webhook_type": "ITEM",
                "webhook_code": "NEW_ACCOUNTS_AVAILABLE",
                "item_id": item.plaid_item_id,
                "n": i,
            }
        bodies.append((body, now - 50 + i))
    results = await asyncio.gather(*(post_signed(receiver, sandbox, b, iat=t) for b, t in bodies))
    assert results == [200] * 50
    stops = [asyncio.Event() for _ in range(4)]
    readies = [asyncio.Event() for _ in range(4)]
    workers = [
        asyncio.create_task(run_worker(services, s, ready=r)) for s, r in zip(stops, readies, strict=True)
    ]
    try:
        await eventually(lambda: _inbox_has(settings, 50), timeout=30)
    finally:
        for s in stops:
            s.set()
        await asyncio.gather(*workers)
    history = await services.store.history(item.id)
    state: State | None = None
    resume: State | None = None
    for h in history:
        assert (State(h.from_state) if h.from_state else None) == state, "history is not a chain"
        trigger = Trigger(h.trigger) if h.trigger != "submitted" else None
        if trigger is not None:
            assert state is not None
            to = next_state(state, trigger, resume=resume)
            assert to.value == h.to_state
            resume = state if to is State.LOGIN_REQUIRED else None
        state = State(h.to_state)
    # whatever the bodies say, Plaid says the login works: the Item ends where it was
    assert state is State.ATOMIC_VERIFIED


async def test_forged_atomic_webhook_is_refused(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox, settings: Settings
) -> None:
    token = await new_public_token(sandbox)
    await submit_amqp(services, {"public_token": token, "client_user_id": "reject-forgery-target"})
    item_done = await settled(services, token, State.ATOMIC_REJECTED)
    forged = json.dumps(
        {
            "event_id": "evt_forged",
            "type": "funding_source.updated",
            "funding_source_id": item_done.atomic_funding_source_id,
            "account_ref": str(item_done.id),
            "status": "VERIFIED",
            "reason": None,
            "occurred_at": "2026-01-01T00:00:00Z",
        }
    ).encode()
    before = len(await services.store.history(item_done.id))
    async with aiohttp.ClientSession() as http:
        for signature in ("sha256=" + "0" * 64, None, "sha256=" + hashlib.sha256(forged).hexdigest()):
            headers = {"X-Atomic-Signature": signature} if signature else {}
            async with http.post(f"{receiver}/webhooks/atomic", data=forged, headers=headers) as r:
                assert r.status == 401
    again = await services.store.get(item_done.id)
    assert again is not None and again.state is State.ATOMIC_REJECTED
    assert len(await services.store.history(item_done.id)) == before
    assert all("evt_forged" not in str(r["payload"]) for r in await inbox(settings))


async def test_unknown_item_and_unknown_codes_are_recorded_not_dead_lettered(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox, settings: Settings
) -> None:
    bodies = [
        {"webhook_type": "ITEM", "webhook_code": "ERROR", "item_id": "no-such-item", "error": None},
        {"webhook_type": "TRANSACTIONS", "webhook_code": "SYNC_UPDATES_AVAILABLE", "item_id": "no-such-item"},
    ]
    for body in bodies:
        assert await post_signed(receiver, sandbox, body) == 200
    rows = await eventually(lambda: _inbox_has(settings, 2))
    assert sorted(r["outcome"] for r in rows) == ["unknown_item", "unknown_item"]
    assert await queue_messages(settings.amqp_url, services.topo.dead_queue) == []


async def test_no_token_left_in_clear_after_a_full_lifecycle(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox, settings: Settings
) -> None:
    item = await verified_item(services, sandbox, receiver)
    access = access_token_of(sandbox, item.plaid_item_id or "")
    sandbox.state.plaid.reset_login(access)
    await state_of(services, item, State.LOGIN_REQUIRED)
    sandbox.state.plaid.fire_webhook(access, "USER_PERMISSION_REVOKED", None)
    await state_of(services, item, State.REVOKED)
    for table, column, value in await all_cells(settings.database_url):
        raw = value if isinstance(value, bytes) else str(value).encode()
        for pattern in TOKEN_PATTERNS:
            assert pattern not in raw, f"{table}.{column} holds a token in clear"


async def test_default_update_of_the_funding_account_makes_atomic_re_pull_the_numbers(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox
) -> None:
    item = await verified_item(services, sandbox, receiver)
    source = sandbox.state.atomic.sources[item.atomic_funding_source_id or ""]
    assert source.refreshes == 0
    access = access_token_of(sandbox, item.plaid_item_id or "")
    sandbox.state.plaid.fire_webhook(access, "DEFAULT_UPDATE", "AUTH")  # the first Auth account: ours

    async def refreshed() -> bool:
        got = await services.store.get(item.id)
        return source.refreshes == 1 and got is not None and got.atomic_refresh_needed_at is None

    await eventually(refreshed)
    account = sandbox.state.plaid.items[item.plaid_item_id or ""].accounts[item.account_id or ""]
    assert source.account_number == account.account_number  # Atomic saw the new number
    # another account's numbers changing is recorded but Atomic is not bothered
    other = next(
        a for a in sandbox.state.plaid.items[item.plaid_item_id or ""].accounts if a != item.account_id
    )
    sandbox.state.plaid.emit_webhook(access, "AUTH", "DEFAULT_UPDATE", other)  # another account: a lever
    await eventually(lambda: _inbox_outcomes_include(services, "recorded"))
    assert source.refreshes == 1


async def _inbox_outcomes_include(services: Services, outcome: str) -> bool:
    rows = await services.store.pool.fetch("SELECT outcome FROM inbox WHERE event_key LIKE 'plaid:%'")
    return outcome in [r["outcome"] for r in rows]
