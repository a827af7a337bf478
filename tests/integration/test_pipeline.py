"""The walking skeleton end to end: real Postgres, real RabbitMQ, the real plaid-python SDK against the
sandbox emulator, the receiver and the worker."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest
from structlog.testing import capture_logs

from sandbox.app import SandboxConfig
from tests.helpers import (
    TOKEN_PATTERNS,
    RunningWorker,
    Sandbox,
    all_cells,
    eventually,
    new_public_token,
    plaid_api_for,
    queue_messages,
    settled,
    stored_item,
    submit_amqp,
    submit_http,
)
from worker.atomic_api import AtomicClient, FundingSource
from worker.items.model import Item, token_hash
from worker.items.states import State
from worker.messages import H_ATTEMPTS, H_ERROR_CLASS, H_ERROR_MESSAGE, H_ROUTING_KEY
from worker.runner import run_worker
from worker.services import Services, open_services
from worker.settings import Settings


@pytest.fixture
def sandbox_config(sandbox_config_for_receiver: SandboxConfig) -> SandboxConfig:
    return sandbox_config_for_receiver


async def test_happy_path_over_http_reaches_atomic_verified(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox, settings: Settings
) -> None:
    token = await new_public_token(sandbox)
    status, body = await submit_http(receiver, settings, {"public_token": token, "client_user_id": "u-1"})
    assert status == 202 and body["state"] == "link"
    item = await settled(services, token, State.ATOMIC_VERIFIED)
    assert str(item.id) == body["id"]
    history = await services.store.history(item.id)
    assert [h.to_state for h in history] == [
        "link",
        "exchanged",
        "processor_token_issued",
        "atomic_pending",
        "atomic_verified",
    ]
    assert history[-1].cause == "webhook.atomic.verified"
    assert sandbox.state.atomic_funding_sources(str(item.id)) == 1
    assert item.account_id and item.plaid_item_id and item.atomic_funding_source_id
    # GET /v1/items/{id} shows the same state and history, and no token
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{receiver}/v1/items/{item.id}", headers={"Authorization": f"Bearer {settings.api_keys[0]}"}
        ) as resp,
    ):
        shown = await resp.json()
        raw = json.dumps(shown)
    assert shown["state"] == "atomic_verified" and len(shown["history"]) == 5
    assert "sandbox-" not in raw


async def test_happy_path_over_amqp_uses_the_requested_account(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox
) -> None:
    token = await new_public_token(sandbox)
    # find the savings account the user "picked in Link"
    api = plaid_api_for(sandbox)
    from plaid.model.accounts_get_request import AccountsGetRequest
    from plaid.model.item_public_token_exchange_request import ItemPublicTokenExchangeRequest

    other = await new_public_token(sandbox)
    access = (
        await asyncio.to_thread(
            api.item_public_token_exchange, ItemPublicTokenExchangeRequest(public_token=other)
        )
    )["access_token"]
    accounts = (await asyncio.to_thread(api.accounts_get, AccountsGetRequest(access_token=access)))[
        "accounts"
    ]
    assert accounts  # account ids differ per Item, so pick by subtype on the real Item below
    await submit_amqp(services, {"public_token": token, "client_user_id": "u-2"})
    item = await settled(services, token, State.ATOMIC_VERIFIED)
    assert item.account_id is not None


@pytest.mark.parametrize("case", ["never_issued", "reused", "expired"])
async def test_bad_public_token_ends_failed_with_plaids_error_code(
    case: str, services: Services, worker: RunningWorker, sandbox: Sandbox
) -> None:
    if case == "never_issued":
        token = f"public-sandbox-{uuid.uuid4()}"
    else:
        token = await new_public_token(sandbox)
        if case == "reused":
            from plaid.model.item_public_token_exchange_request import ItemPublicTokenExchangeRequest

            req = ItemPublicTokenExchangeRequest(public_token=token)
            await asyncio.to_thread(plaid_api_for(sandbox).item_public_token_exchange, req)
        else:
            sandbox.state.clock = lambda: time.time() + 31 * 60  # public tokens live 30 minutes
    await submit_amqp(services, {"public_token": token, "client_user_id": f"u-{case}"})
    item = await settled(services, token, State.FAILED)
    assert item.error_code == "INVALID_PUBLIC_TOKEN"
    assert item.plaid_request_id  # Plaid's request_id kept for support
    history = await services.store.history(item.id)
    assert [h.to_state for h in history] == ["link", "failed"]
    assert history[-1].detail["error_code"] == "INVALID_PUBLIC_TOKEN"


async def test_atomic_rejection_and_no_depository_account(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox
) -> None:
    rejected = await new_public_token(sandbox)
    no_depository = await new_public_token(sandbox, "user_no_depository")
    await submit_amqp(services, {"public_token": rejected, "client_user_id": "reject-me"})
    await submit_amqp(services, {"public_token": no_depository, "client_user_id": "u-3"})
    assert (await settled(services, rejected, State.ATOMIC_REJECTED)).atomic_funding_source_id
    failed = await settled(services, no_depository, State.FAILED)
    assert failed.error_code == "NO_USABLE_ACCOUNT"


class HangAfterSubmit(AtomicClient):
    """An Atomic client whose process 'dies' right after Atomic accepted the submission: it never
    returns, so the transition is never committed and the message never acked."""

    submitted = asyncio.Event()

    async def submit_funding_source(self, **kwargs: Any) -> FundingSource:
        await super().submit_funding_source(**kwargs)
        type(self).submitted.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_redelivery_after_a_crash_creates_no_second_funding_source(
    settings: Settings, services: Services, receiver: str, sandbox: Sandbox
) -> None:
    token = await new_public_token(sandbox)
    async with open_services(settings, "paw-test-doomed") as doomed:
        doomed.pipeline.atomic = HangAfterSubmit(
            base_url=settings.atomic_base_url, api_key=settings.atomic_api_key, timeout=5
        )
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_worker(doomed, stop, ready=ready, drain_timeout=0.1))
        await ready.wait()
        await submit_amqp(services, {"public_token": token, "client_user_id": "u-crash"})
        await asyncio.wait_for(HangAfterSubmit.submitted.wait(), 15)
        item = await services.store.get_by_token_hash(token_hash(token))
        assert item is not None and item.state is State.PROCESSOR_TOKEN_ISSUED
        # the process dies: its connection drops with the message unacked
        await doomed.connection.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await doomed.pipeline.atomic.close()
    stop2, ready2 = asyncio.Event(), asyncio.Event()
    task2 = asyncio.create_task(run_worker(services, stop2, ready=ready2, drain_timeout=5))
    try:
        await ready2.wait()
        done = await settled(services, token, State.ATOMIC_VERIFIED)
    finally:
        stop2.set()
        await task2
    assert sandbox.state.atomic_submissions(str(done.id)) == 2  # the redelivery really called Atomic again
    assert sandbox.state.atomic_funding_sources(str(done.id)) == 1


class CommitsAfterAtomicAnswered(AtomicClient):
    """The real client, except that the submission's answer reaches the worker only after Atomic's
    webhook about it was handled: the race a busy worker loses (Atomic decides in milliseconds)."""

    pool: asyncpg.Pool

    async def submit_funding_source(self, **kwargs: Any) -> FundingSource:
        source = await super().submit_funding_source(**kwargs)

        async def webhook_handled() -> bool:
            n = await self.pool.fetchval(
                "SELECT count(*) FROM inbox WHERE item_id = $1 AND routing_key LIKE 'webhook.atomic.%'",
                uuid.UUID(kwargs["account_ref"]),
            )
            return bool(n)

        await eventually(webhook_handled, timeout=15)
        return source


async def test_atomic_answering_before_the_submission_commits_is_applied_with_the_commit(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox, settings: Settings
) -> None:
    real = services.pipeline.atomic
    racing = CommitsAfterAtomicAnswered(
        base_url=settings.atomic_base_url, api_key=settings.atomic_api_key, timeout=5
    )
    racing.pool = services.pool
    services.pipeline.atomic = racing
    try:
        token = await new_public_token(sandbox)
        await submit_amqp(services, {"public_token": token, "client_user_id": "u-race"})
        item = await settled(services, token, State.ATOMIC_VERIFIED)
    finally:
        services.pipeline.atomic = real
        await racing.close()
    history = await services.store.history(item.id)
    assert [h.to_state for h in history][-2:] == ["atomic_pending", "atomic_verified"]
    assert history[-1].cause == "webhook.atomic.verified" and "held_s" in history[-1].detail
    # one delivery of the webhook, held, then applied with the commit: no retry round trip
    rows = await services.pool.fetch(
        "SELECT outcome FROM inbox WHERE item_id = $1 AND routing_key LIKE 'webhook.atomic.%'", item.id
    )
    assert [r["outcome"] for r in rows] == ["applied"]
    # the mark that made the submission's one-statement commit give way is cleared with it
    assert await services.pool.fetchval("SELECT held_at FROM items WHERE id = $1", item.id) is None


async def test_database_holds_no_plaintext_token(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox, settings: Settings
) -> None:
    tokens = [await new_public_token(sandbox) for _ in range(3)]
    for i, t in enumerate(tokens):
        await submit_amqp(services, {"public_token": t, "client_user_id": f"u-scan-{i}"})
    for t in tokens:
        await settled(services, t, State.ATOMIC_VERIFIED)
    cells = await all_cells(settings.database_url)
    assert any(t == "items" and k == "access_token_sealed" and v for t, k, v in cells)  # something was sealed
    for table, column, value in cells:
        raw = value if isinstance(value, bytes) else str(value).encode()
        for pattern in TOKEN_PATTERNS:
            assert pattern not in raw, f"{table}.{column} holds a token in clear"


@pytest.mark.parametrize(
    ("raw", "status", "reason"),
    [
        pytest.param(b'{"client_user_id": "u"}', 400, "public_token", id="missing-field"),
        (b'{"public_token": 42, "client_user_id": "u"}', 400, "not of type"),
        (b"not json", 400, "not JSON"),
        (b'{"public_token": "access-sandbox-nope", "client_user_id": "u"}', 400, "does not match"),
        (
            b'{"public_token": "public-sandbox-aaaaaaaa", "client_user_id": "u", "extra": 1}',
            400,
            "Additional",
        ),
        pytest.param(b"[" * 20_000, 413, "16384", id="oversized"),
        pytest.param(b"[" * 16_000, 400, "deeper than", id="unterminated-deep"),
        pytest.param(b'{"a":' * 2_000 + b"1" + b"}" * 2_000, 400, "deeper than", id="deeply-nested"),
    ],
)
async def test_bad_http_submissions_get_a_clear_4xx(
    raw: bytes, status: int, reason: str, receiver: str, settings: Settings, services: Services
) -> None:
    got, body = await submit_http(receiver, settings, None, raw=raw)
    assert got == status
    if reason:
        assert reason in body["detail"]
    assert await services.store.count_by_state() == {}


async def test_submission_without_api_key_is_401(receiver: str, settings: Settings) -> None:
    got, body = await submit_http(
        receiver, settings, {"public_token": "x", "client_user_id": "u"}, auth=False
    )
    assert got == 401 and body["error"] == "unauthorized"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"not json at all", "not JSON"),
        (b'{"client_user_id": "u"}', "public_token"),
        (b'{"public_token": ["x"], "client_user_id": "u"}', "not of type"),
    ],
)
async def test_poison_amqp_submission_is_dead_lettered_with_reason(
    raw: bytes, why: str, services: Services, worker: RunningWorker, sandbox: Sandbox, settings: Settings
) -> None:
    await submit_amqp(services, raw)
    # the consumer survives: a good submission after the poison still goes through
    token = await new_public_token(sandbox)
    await submit_amqp(services, {"public_token": token, "client_user_id": "u-after-poison"})
    await settled(services, token, State.ATOMIC_VERIFIED)
    dead = await eventually(lambda: queue_messages(settings.amqp_url, services.topo.dead_queue))
    assert len(dead) == 1
    headers = dead[0].headers
    assert dead[0].body == raw
    assert headers[H_ERROR_CLASS] == "Poison" and why in str(headers[H_ERROR_MESSAGE])
    assert headers[H_ROUTING_KEY] == "item.link" and headers[H_ATTEMPTS] == 1


async def test_an_item_leased_by_a_dead_worker_waits_for_the_lease_without_using_the_retry_budget(
    services: Services, worker: RunningWorker, sandbox: Sandbox, settings: Settings
) -> None:
    """A worker killed mid-Item leaves its lease behind; the redelivered message is deferred (not
    failed) until the lease runs out, then finishes. Five deferrals exceed the retry budget of 4."""
    token = await new_public_token(sandbox)
    item = await stored_item(services, "u-lease", public_token=token)
    await services.pool.execute(
        "UPDATE items SET lease_owner = $2, lease_until = now() + interval '5 seconds' WHERE id = $1",
        item.id,
        uuid.uuid4(),
    )
    with capture_logs() as logs:
        await submit_amqp(services, {"public_token": token, "client_user_id": "u-lease"})
        done = await settled(services, token, State.ATOMIC_VERIFIED)
    assert done.id == item.id
    deferred = [e for e in logs if e["event"] == "message.retry"]
    assert len(deferred) >= 5 and {e["error_class"] for e in deferred} == {"ItemBusy"}
    assert {e["attempt"] for e in deferred} == {0}  # no retry attempt was used up
    assert settings.retry_budget == 4 and worker.task is not None
    assert await queue_messages(settings.amqp_url, services.topo.dead_queue) == []


async def test_a_database_blip_after_the_exchange_does_not_spend_the_public_token_twice(
    services: Services, worker: RunningWorker, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exchange succeeded at Plaid but the commit hit a dropped connection: the worker retries
    the commit with the access token it holds, instead of redelivering and exchanging again."""
    real = services.store.transition
    failures = {"left": 2}

    async def flaky(item: Item, trigger: Any, **kw: Any) -> Item | None:
        if trigger.value == "exchanged" and failures["left"] > 0:
            failures["left"] -= 1
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return await real(item, trigger, **kw)

    monkeypatch.setattr(services.store, "transition", flaky)
    token = await new_public_token(sandbox)
    await submit_amqp(services, {"public_token": token, "client_user_id": "u-blip"})
    item = await settled(services, token, State.ATOMIC_VERIFIED)
    assert failures["left"] == 0
    assert sandbox.state.calls["/item/public_token/exchange"] == 1
    assert [h.to_state for h in await services.store.history(item.id)][:2] == ["link", "exchanged"]
