"""Signed HTTP callbacks through the real worker and RabbitMQ: outcome events (written by real
transitions, published by the worker's outbox relay) reach a callback receiver that answers 500 for a while,
each once and verified with the Standard Webhooks reference library; a receiver that never recovers
leaves dead letters that `paw dlq replay` delivers once it does.

Scaled down: the `settings` fixture's retry tiers are 50 ms, 200 ms, 800 ms and 3.2 s (budget 4),
so "500 for a minute" is 500 for 1.5 s here, and dead-lettering takes about 4 s instead of 6 min.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from tests.helpers import (
    RunningWorker,
    Sandbox,
    eventually,
    free_port,
    new_public_token,
    run_paw,
    stored_item,
    submit_http,
)
from worker.callbacks.targets import AMQP_REF, Callback
from worker.items.model import Item, api_key_fingerprint
from worker.items.states import Trigger
from worker.services import Services
from worker.settings import Settings

SECRET = "whsec_" + base64.b64encode(b"paw-callback-test-secret-32bytes").decode()
OTHER_KEY = "another-upstream-app-key"  # configured, but with no callback


@dataclasses.dataclass
class Hook:
    """The upstream app's callback endpoint: answers 500 while ``failing``, verifies every call
    with the reference library, records the event ids it accepted."""

    url: str
    fail_until: float = 0.0  # time.monotonic() until which it answers 500
    always_fail: bool = False
    accepted: Counter[str] = dataclasses.field(default_factory=Counter)
    answered_500: int = 0
    bad_signatures: int = 0
    bodies: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def failing(self) -> bool:
        return self.always_fail or time.monotonic() < self.fail_until


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    port = free_port()
    state = Hook(f"http://127.0.0.1:{port}/paw/events")

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if state.failing:
            state.answered_500 += 1
            return web.Response(status=500)
        try:
            payload = Webhook(SECRET).verify(body, dict(request.headers))
        except WebhookVerificationError:
            state.bad_signatures += 1
            return web.Response(status=400)
        assert request.headers["webhook-id"] == payload["data"]["event_id"]
        state.accepted[payload["data"]["event_id"]] += 1
        state.bodies.append(payload)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/paw/events", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield state
    finally:
        await runner.cleanup()


@pytest.fixture
def settings(settings: Settings, hook: Hook) -> Settings:
    """The test's settings, with callbacks for the first API key and for Items submitted over AMQP
    (the receiver is on 127.0.0.1, so private targets are allowed)."""
    return dataclasses.replace(
        settings,
        api_keys=(*settings.api_keys, OTHER_KEY),
        callbacks=(
            Callback(api_key_fingerprint(settings.api_keys[0]), hook.url, SECRET),
            Callback(AMQP_REF, hook.url, SECRET),
        ),
        callback_allow_private=True,
    )


async def make_item(services: Services, owner: str | None) -> Item:
    return await stored_item(services, f"u-{uuid.uuid4().hex[:6]}", owner=owner)


TO_VERIFIED = [
    Trigger.EXCHANGED,
    Trigger.PROCESSOR_TOKEN_CREATED,
    Trigger.ATOMIC_SUBMITTED,
    Trigger.ATOMIC_VERIFIED,
]


async def advance(services: Services, item: Item, triggers: list[Trigger]) -> list[str]:
    """Moves the Item through ``triggers`` as the pipeline would; returns the ids of every outcome
    event it has (its creation's included), in sequence order."""
    for trigger in triggers:
        moved = await services.store.transition(item, trigger, cause="test")
        assert moved is not None
        item = moved
    return [e["event_id"] for e in await services.store.events(item.id)]


async def dead_callbacks(settings: Settings, code: str) -> list[dict[str, Any]]:
    rc, out, err = await run_paw(settings, "dlq", "list", "--code", code, "--json")
    assert rc == 0, err.decode()[-2000:]
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


async def test_a_receiver_down_for_a_while_gets_every_event_once_verified(
    services: Services, settings: Settings, worker: RunningWorker, hook: Hook
) -> None:
    hook.fail_until = time.monotonic() + 1.5
    key_owner = api_key_fingerprint(settings.api_keys[0])
    expected: list[str] = []
    for i in range(8):
        item = await make_item(services, key_owner if i % 2 else None)  # by API key, or over AMQP
        expected += await advance(services, item, TO_VERIFIED)
    unowned = await make_item(services, api_key_fingerprint(OTHER_KEY))
    await advance(services, unowned, [Trigger.EXCHANGED, Trigger.FAILED])

    await eventually(lambda: _received(hook, expected), timeout=30)
    await asyncio.sleep(0.5)  # nothing more arrives: no duplicate, nothing for the key without callback
    assert len(expected) == 8 * 5
    assert hook.answered_500 > 0 and hook.bad_signatures == 0
    assert sorted(hook.accepted) == sorted(expected) and set(hook.accepted.values()) == {1}
    last = next(b for b in hook.bodies if b["data"]["event_id"] == expected[4])
    assert last["type"] == "item.state.atomic_verified" and last["data"]["sequence"] == 5
    assert last["data"]["from_state"] == "atomic_pending" and last["data"]["trigger"] == "atomic_verified"
    assert await dead_callbacks(settings, "CALLBACK_HTTP_500") == []


async def _received(hook: Hook, expected: list[str]) -> bool:
    return set(expected) <= set(hook.accepted)


async def test_a_receiver_that_never_recovers_leaves_dead_letters_that_replay_cleanly(
    services: Services, settings: Settings, worker: RunningWorker, hook: Hook
) -> None:
    # an upstream app's own queue, bound as the AsyncAPI document says: it must get each event once,
    # replays of the callbacks included
    conn = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await conn.channel()
        exchange = await channel.get_exchange(settings.exchange)
        subscriber = await channel.declare_queue(exclusive=True)
        await subscriber.bind(exchange, "item.state.#")

        hook.always_fail = True
        item = await make_item(services, None)
        expected = await advance(services, item, [Trigger.EXCHANGED, Trigger.FAILED])

        async def all_dead() -> list[dict[str, Any]] | None:
            rows = await dead_callbacks(settings, "CALLBACK_HTTP_500")
            return rows if len(rows) == 3 else None

        rows = await eventually(all_dead, timeout=30, interval=0.5)
        assert {r["message_id"] for r in rows} == set(expected)
        assert {r["queue"] for r in rows} == {services.topo.callbacks_queue}
        assert {r["attempts"] for r in rows} == {settings.retry_budget + 1}
        assert all("answered 500" in r["error"] for r in rows) and hook.accepted == Counter()

        hook.always_fail = False  # the upstream app is fixed
        rc, out, err = await run_paw(settings, "dlq", "replay", "--code", "CALLBACK_HTTP_500")
        assert rc == 0, err.decode()[-2000:]
        assert "replayed 3 " in out.decode()
        await eventually(lambda: _received(hook, expected), timeout=15)
        await asyncio.sleep(0.5)
        assert sorted(hook.accepted) == sorted(expected) and set(hook.accepted.values()) == {1}
        assert hook.bad_signatures == 0
        assert await dead_callbacks(settings, "CALLBACK_HTTP_500") == []

        seen = []
        while (message := await subscriber.get(no_ack=True, fail=False)) is not None:
            seen.append(message.message_id)
        assert sorted(seen) == sorted(expected)  # the replay went to the callbacks queue only
    finally:
        await conn.close()


async def test_post_v1_items_records_the_submitting_keys_fingerprint(
    services: Services, settings: Settings, receiver: str, sandbox: Sandbox
) -> None:
    token = await new_public_token(sandbox)
    status, body = await submit_http(receiver, settings, {"public_token": token, "client_user_id": "u-fp"})
    assert status == 202
    exists, owner = await services.store.owner_of(uuid.UUID(body["id"]))
    assert exists and owner == api_key_fingerprint(settings.api_keys[0])
    row = await services.pool.fetchrow("SELECT * FROM items WHERE id = $1", uuid.UUID(body["id"]))
    assert settings.api_keys[0] not in {str(v) for v in dict(row).values()}
    assert await services.store.owner_of(uuid.uuid4()) == (False, None)
