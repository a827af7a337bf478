"""Plaid's retries end to end: a webhook the receiver refuses (503) while RabbitMQ is stopped is
sent again by the emulator on Plaid's schedule, and applied exactly once when the broker is back."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import uuid

import asyncpg
import pytest

from sandbox.app import SandboxConfig
from sandbox.retry_schedule import scheduled_delay_s
from sandbox.webhook_log import DELIVERED
from tests.helpers import (
    BrokerControl,
    RunningWorker,
    Rx,
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

SCALE = 1 / 120  # Plaid's 30 s → 0.25 s: attempts at 0, 0.25, 1.25, 5.25, 21.25, 85.25 s
SLACK_S = 0.5  # how late a retry may come on a loaded machine


@pytest.fixture
def sandbox_config(sandbox_config_for_receiver: SandboxConfig) -> SandboxConfig:
    return dataclasses.replace(sandbox_config_for_receiver, webhook_retry_time_scale=SCALE)


async def verified_item(services: Services, sandbox: Sandbox, receiver_url: str) -> Item:
    token = await new_public_token(sandbox, webhook=f"{receiver_url}/webhooks/plaid")
    await submit_amqp(services, {"public_token": token, "client_user_id": f"u-{uuid.uuid4().hex[:6]}"})
    return await settled(services, token, State.ATOMIC_VERIFIED)


async def plaid_inbox(settings: Settings) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return list(await conn.fetch("SELECT * FROM inbox WHERE event_key LIKE 'plaid:%'"))
    finally:
        await conn.close()


async def webhooks_queue_empty(services: Services) -> bool:
    channel = await services.connection.channel()
    try:
        queue = await channel.declare_queue(services.topo.webhooks_queue, passive=True)
        return queue.declaration_result.message_count == 0
    finally:
        await channel.close()


async def readyz_is(rx: Rx, status: int) -> bool:
    got, _ = await rx.get("/readyz")
    return got == status


@pytest.mark.chaos
async def test_webhook_refused_during_a_broker_outage_is_retried_and_applied_exactly_once(
    rx: Rx,
    services: Services,
    worker: RunningWorker,
    sandbox: Sandbox,
    settings: Settings,
    broker: BrokerControl,
) -> None:
    item = await verified_item(services, sandbox, rx.url)
    await asyncio.wait_for(sandbox.state.drain(), 10)  # Atomic's webhook is in, nothing is pending
    await broker.stop()

    await eventually(lambda: readyz_is(rx, 503), timeout=20)

    sandbox.state.plaid.reset_login(access_token_of(sandbox, item.plaid_item_id or ""))
    record = list(sandbox.state.webhooks)[-1]
    assert record.source == "plaid"

    async def refused_twice() -> bool:
        return len(record.attempts) >= 2

    await eventually(refused_twice, timeout=10)
    await broker.start()
    await eventually(lambda: readyz_is(rx, 200), timeout=30)  # the connection is back
    # the same worker that ran through the outage consumes again: its consumers are restored

    async def login_required() -> bool:
        got = await services.store.get(item.id)
        return got is not None and got.state is State.LOGIN_REQUIRED

    await eventually(login_required, timeout=60)
    await asyncio.wait_for(sandbox.state.drain(), 10)
    await eventually(lambda: webhooks_queue_empty(services))

    # the emulator: refused while the broker was away, retried on schedule, then one 2xx
    statuses = [a.status for a in record.attempts]
    assert record.outcome == DELIVERED
    assert statuses == [503] * (len(statuses) - 1) + [200] and len(statuses) >= 3, statuses
    for number, (before, after) in enumerate(itertools.pairwise(record.attempts), start=1):
        waited = after.elapsed_s - (before.elapsed_s + before.took_s)
        delay = scheduled_delay_s(number) * SCALE
        assert delay - 0.001 <= waited <= delay + SLACK_S, record.attempts
    stats = sandbox.state.stats()
    assert stats["webhooks"]["pending"] == stats["webhooks"]["given_up"] == 0
    assert stats["webhooks"]["retries"] == len(statuses) - 1  # Atomic's webhook went through at once
    assert stats["webhook_statuses"]["503"] == len(statuses) - 1

    # the receiver: every refusal was the broker's absence, and it accepted the webhook once
    assert rx.receiver.metrics["publish_failed"] == len(statuses) - 1
    assert rx.receiver.metrics["plaid_accepted"] == 1

    # the worker: one inbox row, one transition to login_required
    (row,) = await plaid_inbox(settings)
    body = sandbox.state.webhook_deliveries[-1].body
    assert row["event_key"] == "plaid:" + hashlib.sha256(body).hexdigest()
    assert row["outcome"] == "check"  # a login webhook is a trigger: the worker asked Plaid (/item/get)
    history = await services.store.history(item.id)
    assert [h.to_state for h in history].count("login_required") == 1
