"""The bank login, from Plaid's truth (issue 13): webhooks only make the worker ask /item/get; a
repair in the upstream app's own Link update mode (which sends no webhook) is reported with
``POST /v1/items/{id}/repaired``, found by ``item.drive``, or by the periodic check.

Real path: Postgres, RabbitMQ, the sandbox (Plaid and Atomic), the receiver and the worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
import uuid
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from sandbox import webhook_bodies
from sandbox.app import SandboxConfig
from tests.helpers import (
    RunningWorker,
    Sandbox,
    access_token_of,
    eventually,
    post_signed,
    state_of,
    verified_item,
)
from worker.items.model import Item
from worker.items.states import State
from worker.services import Services
from worker.settings import Settings


@pytest.fixture
def sandbox_config(sandbox_config_for_receiver: SandboxConfig) -> SandboxConfig:
    return sandbox_config_for_receiver


@pytest.fixture
def settings(settings: Settings, receiver_port: int, request: pytest.FixtureRequest) -> Settings:
    """paw's public webhook URL is the test receiver; the periodic check looks after 1 s where a
    test is marked ``quick_login_check``."""
    quick = request.node.get_closest_marker("quick_login_check") is not None
    return dataclasses.replace(
        settings,
        public_webhook_url=f"http://127.0.0.1:{receiver_port}/webhooks/plaid",
        login_check_s=1 if quick else settings.login_check_s,
    )


async def call(settings: Settings, method: str, url: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {settings.api_keys[0]}"}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, json=body, headers=headers) as r,
    ):
        return r.status, await r.json(content_type=None)


def login_broken_at_plaid(sandbox: Sandbox, item: Item) -> bool:
    return sandbox.state.plaid.items[item.plaid_item_id or ""].login_required


def plaid_state(sandbox: Sandbox, item: Item, working: State) -> State:
    """Where Plaid's /item/get says the Item should be: login_required while its login is broken."""
    return State.LOGIN_REQUIRED if login_broken_at_plaid(sandbox, item) else working


def login_repaired_sent(sandbox: Sandbox) -> bool:
    return any(b"LOGIN_REPAIRED" in d.body for d in sandbox.state.webhook_deliveries)


async def test_login_broken_before_the_processor_token_repaired_in_update_mode_reaches_verified(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox, settings: Settings
) -> None:
    """Done when: link token from paw, update mode in the app, `repaired` call, atomic_verified, and
    no LOGIN_REPAIRED webhook at all."""
    item = await verified_item(services, sandbox, receiver, "user_automated_microdeposits")
    assert item.processor_token is None and sandbox.state.atomic_submissions(str(item.id)) == 0
    access = access_token_of(sandbox, item.plaid_item_id or "")
    sandbox.state.plaid.reset_login(access)  # /sandbox/item/reset_login: ITEM ERROR webhook
    broken = await state_of(services, item, State.LOGIN_REQUIRED)
    assert broken.resume_state is State.AWAITING_VERIFICATION
    assert broken.error_code == "ITEM_LOGIN_REQUIRED"

    status, token = await call(settings, "POST", f"{receiver}/v1/items/{item.id}/link_token")
    assert status == 200, token
    assert token["link_token"].startswith("link-sandbox-") and token["expiration"] and token["request_id"]
    session = sandbox.state.plaid.link_session(token["link_token"])
    assert session.access_token == access and session.products == ()  # update mode
    assert session.webhook == settings.public_webhook_url
    assert session.client_user_id == item.client_user_id

    # the user's update-mode session in the upstream app (Link in a browser; here the sandbox lever)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{sandbox.url}/sandbox/control/link/complete", json={"link_token": token["link_token"]}
        ) as r,
    ):
        assert r.status == 200 and (await r.json())["public_token"] is None
    assert not login_broken_at_plaid(sandbox, item)
    await asyncio.wait_for(sandbox.state.drain(), 10)
    assert not login_repaired_sent(sandbox)  # a repair in the app: Plaid sends nothing
    still = await services.store.get(item.id)  # so nobody has told paw yet
    assert still is not None and still.state is State.LOGIN_REQUIRED

    status, answer = await call(
        settings, "POST", f"{receiver}/v1/items/{item.id}/repaired", {"request_id": "onsuccess-1"}
    )
    assert (status, answer) == (202, {"id": str(item.id), "state": "login_required"})
    back = await state_of(services, item, State.AWAITING_VERIFICATION)
    sandbox.state.plaid.set_verification_status(access, back.account_id or "", "automatically_verified")
    done = await state_of(services, item, State.ATOMIC_VERIFIED)
    assert done.error_code is None  # the repair cleared ITEM_LOGIN_REQUIRED
    assert sandbox.state.atomic_funding_sources(str(done.id)) == 1
    assert not login_repaired_sent(sandbox)
    history = await services.store.history(item.id)
    repaired = [h for h in history if h.trigger == "login_repaired"]
    assert [(h.cause, h.event_id) for h in repaired] == [("item.repaired", "onsuccess-1")]


async def test_break_repair_break_repair_follows_plaid_after_each_step(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox, settings: Settings
) -> None:
    """The second break sends the very same ITEM ERROR body as the first (the inbox's 24 h
    body-hash window holds it): it must still take effect."""
    item = await verified_item(services, sandbox, receiver)
    access = access_token_of(sandbox, item.plaid_item_id or "")
    for step in range(4):
        if step % 2 == 0:
            sandbox.state.plaid.reset_login(access)  # ITEM ERROR ITEM_LOGIN_REQUIRED
        else:
            sandbox.state.plaid.repair_login(access, elsewhere=True)  # LOGIN_REPAIRED
        want = plaid_state(sandbox, item, State.ATOMIC_VERIFIED)
        assert want is (State.LOGIN_REQUIRED if step % 2 == 0 else State.ATOMIC_VERIFIED)
        await state_of(services, item, want)
    await _queues_idle(services)
    final = await services.store.get(item.id)
    assert final is not None and final.state is State.ATOMIC_VERIFIED
    moves = [(h.from_state, h.to_state) for h in await services.store.history(item.id)][-4:]
    assert moves == [("atomic_verified", "login_required"), ("login_required", "atomic_verified")] * 2
    error_keys = await services.store.pool.fetch(
        "SELECT event_key FROM inbox WHERE routing_key = 'webhook.plaid.ITEM.ERROR'"
    )
    assert len(error_keys) == 1  # both breaks share one body: the second was a "duplicate"


@pytest.mark.parametrize("ends_broken", [False, True], ids=["ends_repaired", "ends_broken"])
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_shuffled_and_duplicated_deliveries_end_where_plaid_says(
    ends_broken: bool,
    seed: int,
    services: Services,
    worker: RunningWorker,
    receiver: str,
    sandbox: Sandbox,
    settings: Settings,
) -> None:
    item = await verified_item(services, sandbox, receiver)
    plaid_item = sandbox.state.plaid.items[item.plaid_item_id or ""]
    # break, repair, break, repair (and a last break) happened at Plaid; their webhooks come late,
    # out of order, each two or three times, with send times out of order too
    steps = ["break", "repair", "break", "repair"] + (["break"] if ends_broken else [])
    plaid_item.login_required = steps[-1] == "break"
    rng = random.Random(seed)
    bodies = [
        webhook_bodies.item_error(plaid_item.item_id)
        if s == "break"
        else webhook_bodies.login_repaired(plaid_item.item_id)
        for s in steps
    ]
    deliveries = [(b, i) for i, b in enumerate(bodies) for _ in range(rng.choice((2, 3)))]
    rng.shuffle(deliveries)
    sent = int(time.time()) - 60
    for body, i in deliveries:
        assert await post_signed(receiver, sandbox, body, iat=sent + i * 10) == 200
    want = State.LOGIN_REQUIRED if ends_broken else State.ATOMIC_VERIFIED

    async def settled() -> bool:
        got = await services.store.get(item.id)
        busy = await services.store.pool.fetchval(
            "SELECT lease_until IS NOT NULL AND lease_until > now() FROM items WHERE id = $1", item.id
        )
        return got is not None and got.state is want and not busy

    await eventually(settled, timeout=30)
    await _queues_idle(services)
    final = await services.store.get(item.id)
    assert final is not None and final.state is want


async def _queues_idle(services: Services) -> None:
    """Nothing left to do: every work and delay queue empty (a deferred check comes back through a
    delay queue) and no Item leased (a message in hand holds its Item's lease)."""
    topo = services.topo
    names = [*topo.work_queues] + [
        topo.retry_queue(q, d) for q in topo.work_queues for d in topo.retry_delays_ms
    ]

    async def idle() -> bool:
        leased = await services.store.pool.fetchval("SELECT count(*) FROM items WHERE lease_until > now()")
        if leased:
            return False
        channel = await services.connection.channel()
        try:
            for name in names:
                q = await channel.declare_queue(name, passive=True)
                if q.declaration_result.message_count:
                    return False
            return True
        finally:
            await channel.close()

    await eventually(idle, timeout=30)


@pytest.mark.quick_login_check
async def test_the_periodic_check_finds_a_repair_nobody_reported(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox
) -> None:
    item = await verified_item(services, sandbox, receiver)
    access = access_token_of(sandbox, item.plaid_item_id or "")
    sandbox.state.plaid.reset_login(access)
    await state_of(services, item, State.LOGIN_REQUIRED)
    with capture_logs() as logs:  # the periodic check looks: Plaid still says broken, it stays
        await eventually(lambda: checked(logs, item), timeout=15)
    still = await services.store.get(item.id)
    assert still is not None and still.state is State.LOGIN_REQUIRED
    sandbox.state.plaid.repair_login(access, elsewhere=False)  # update mode in the app; no webhook
    await state_of(services, item, State.ATOMIC_VERIFIED)
    history = await services.store.history(item.id)
    assert history[-1].trigger == "login_repaired" and history[-1].cause == "login_check"
    assert not login_repaired_sent(sandbox)


async def test_item_drive_of_a_login_required_item_confirms_with_plaid(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox
) -> None:
    """`paw item retry` publishes item.drive: it resumes a repaired Item, and leaves a broken one."""
    item = await verified_item(services, sandbox, receiver)
    access = access_token_of(sandbox, item.plaid_item_id or "")
    sandbox.state.plaid.reset_login(access)
    await state_of(services, item, State.LOGIN_REQUIRED)
    body = json.dumps({"item_id": str(item.id), "reason": "test"}).encode()
    with capture_logs() as logs:
        await services.publisher.publish("item.drive", body, message_id=str(uuid.uuid4()))
        await eventually(lambda: checked(logs, item))
    still = await services.store.get(item.id)
    assert still is not None and still.state is State.LOGIN_REQUIRED
    sandbox.state.plaid.repair_login(access, elsewhere=False)
    await services.publisher.publish("item.drive", body, message_id=str(uuid.uuid4()))
    await state_of(services, item, State.ATOMIC_VERIFIED)


async def test_repaired_when_plaid_still_says_broken_changes_nothing(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox, settings: Settings
) -> None:
    item = await verified_item(services, sandbox, receiver)
    sandbox.state.plaid.reset_login(access_token_of(sandbox, item.plaid_item_id or ""))
    await state_of(services, item, State.LOGIN_REQUIRED)
    with capture_logs() as logs:
        status, _ = await call(settings, "POST", f"{receiver}/v1/items/{item.id}/repaired")
        assert status == 202
        await eventually(lambda: checked(logs, item))
    still = await services.store.get(item.id)
    assert still is not None and still.state is State.LOGIN_REQUIRED


async def test_link_token_and_repaired_refusals(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox, settings: Settings
) -> None:
    for path in ("link_token", "repaired"):
        assert (await call(settings, "POST", f"{receiver}/v1/items/{uuid.uuid4()}/{path}"))[0] == 404
        assert (await call(settings, "POST", f"{receiver}/v1/items/not-a-uuid/{path}"))[0] == 404
    item = await verified_item(services, sandbox, receiver)
    status, answer = await call(
        settings, "POST", f"{receiver}/v1/items/{item.id}/link_token", {"products": ["auth"]}
    )
    assert status == 400 and answer["error"] == "invalid_request"
    # Plaid's own errors come back with its error_code and request_id
    sandbox.state.set_fault(
        "/link/token/create", status=400, error_code="INVALID_API_KEYS", error_type="INVALID_INPUT", times=1
    )
    status, answer = await call(settings, "POST", f"{receiver}/v1/items/{item.id}/link_token")
    assert status == 502 and answer["error"] == "plaid_error"
    assert answer["error_code"] == "INVALID_API_KEYS" and answer["request_id"]
    sandbox.state.set_fault(
        "/link/token/create", status=500, error_code="INTERNAL_SERVER_ERROR", error_type="API_ERROR", times=1
    )
    status, answer = await call(settings, "POST", f"{receiver}/v1/items/{item.id}/link_token")
    assert status == 503 and answer["error_code"] == "INTERNAL_SERVER_ERROR"
    # an Item with no bank link left cannot be repaired
    sandbox.state.plaid.fire_webhook(
        access_token_of(sandbox, item.plaid_item_id or ""), "USER_PERMISSION_REVOKED", None
    )
    await state_of(services, item, State.REVOKED)
    for path in ("link_token", "repaired"):
        status, answer = await call(settings, "POST", f"{receiver}/v1/items/{item.id}/{path}")
        assert (status, answer["error"]) == (409, "not_repairable")


async def checked(logs: list[dict[str, Any]], item: Item) -> bool:
    """The worker asked Plaid about ``item``'s login (its ``item.login_checked`` line)."""
    return any(e["event"] == "item.login_checked" and e.get("item_id") == str(item.id) for e in logs)
