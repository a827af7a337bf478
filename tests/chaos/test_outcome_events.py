"""Outcome events under faults: 1,000 Items driven to their ends while RabbitMQ is stopped for 10 s and
the worker is SIGKILLed twice. Every Item's events arrive in its history's order, numbered 1..n with
no gap; a duplicate (the relay published, then died or lost the confirm, before marking it sent)
carries the same event id and body.

Run alone with ``.venv/bin/pytest -m chaos``: the test stops the local RabbitMQ application.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from sandbox.app import SandboxConfig
from tests.chaos.test_chaos import (
    TERMINAL,
    WorkerProcess,
    all_terminal,
    delete_retry_queues,
    start_worker,
    submit,
)
from tests.helpers import BrokerControl, Sandbox, eventually, new_public_token
from worker.services import Services
from worker.settings import Settings

pytestmark = pytest.mark.chaos

OUTAGE_S = 10.0


@pytest.fixture
def sandbox_config(sandbox_config_for_receiver: SandboxConfig) -> SandboxConfig:
    return sandbox_config_for_receiver


async def terminal_count(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        n: int = await conn.fetchval(
            "SELECT count(*) FROM items WHERE state = ANY($1::text[])", list(TERMINAL)
        )
        return n
    finally:
        await conn.close()


async def reached(database_url: str, n: int) -> bool:
    try:
        return await terminal_count(database_url) >= n
    except (OSError, asyncpg.PostgresError):
        return False


async def histories(database_url: str) -> dict[str, list[tuple[str | None, str, str]]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT item_id, from_state, to_state, trigger FROM item_history ORDER BY id")
        unsent = await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
    finally:
        await conn.close()
    assert unsent == 0
    out: dict[str, list[tuple[str | None, str, str]]] = {}
    for r in rows:
        out.setdefault(str(r["item_id"]), []).append((r["from_state"], r["to_state"], r["trigger"]))
    return out


@pytest.mark.timeout(360)
async def test_1000_items_events_match_their_histories_across_a_broker_outage_and_two_sigkills(
    settings: Settings,
    services: Services,
    sandbox: Sandbox,
    receiver: str,
    broker: BrokerControl,
    tmp_path: Path,
) -> None:
    s = dataclasses.replace(settings, retry_base_ms=100, retry_budget=6, item_lease_s=1.0)
    n = 1000
    sandbox.state.set_latency(None, 5)  # Items are in flight when the faults land
    tokens = [await new_public_token(sandbox) for _ in range(n)]

    # the upstream app's queue: durable (a quorum queue), so it keeps what arrived across the outage
    channel = await services.connection.channel()
    exchange = await channel.get_exchange(services.topo.exchange)
    subscriber_name = f"{services.topo.prefix}.subscriber"
    subscriber = await channel.declare_queue(
        subscriber_name, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await subscriber.bind(exchange, "item.state.#")

    workers: list[WorkerProcess] = []
    try:
        # All queued before a worker starts: submitting while one ran let it finish ~870 of the 1000
        # before the first check, so the outage and the kills found nothing in flight (a CI failure).
        for i, token in enumerate(tokens):
            await submit(services, token, f"u-ev-{i}")
        workers.append(await start_worker(s, tmp_path / "worker-0.log"))

        await eventually(lambda: reached(s.database_url, 150), timeout=120, interval=0.05)
        await broker.stop()
        await asyncio.sleep(OUTAGE_S)  # the fault's length, not a wait for something
        await broker.start()

        for k, at in enumerate((450, 700), start=1):
            await eventually(lambda at=at: reached(s.database_url, at), timeout=180, interval=0.02)
            in_flight = n - await terminal_count(s.database_url)
            workers[-1].proc.send_signal(signal.SIGKILL)
            await workers[-1].proc.wait()
            assert in_flight > 0
            workers.append(await start_worker(s, tmp_path / f"worker-{k}.log"))

        await all_terminal(s.database_url, n, timeout=240)

        async def outbox_drained() -> bool:
            unsent, _ = await services.store.outbox_backlog()
            return unsent == 0

        await eventually(outbox_drained, timeout=60, interval=0.1)
        expected = await histories(s.database_url)
        assert len(expected) == n
        total = sum(len(h) for h in expected.values())

        received: list[dict[str, Any]] = []
        ids: set[str] = set()
        deadline = time.monotonic() + 60
        async with subscriber.iterator() as messages:
            async for message in messages:
                event = json.loads(message.body)
                assert message.message_id == event["event_id"]
                received.append(event)
                ids.add(event["event_id"])
                await message.ack()
                if len(ids) == total:
                    break
                assert time.monotonic() < deadline, f"{len(ids)} of {total} events arrived"
    finally:
        for w in workers:
            if w.proc.returncode is None:
                w.proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(w.proc.wait(), 40)
        await broker.start()
        cleanup = await services.connection.channel()
        await cleanup.queue_delete(subscriber_name)
        await cleanup.close()
        await delete_retry_queues(services, s)

    # exactly the history, in order, no gap; duplicates repeat an earlier event byte for byte
    first: dict[str, dict[str, Any]] = {}
    per_item: dict[str, list[dict[str, Any]]] = {}
    duplicates = 0
    for event in received:
        seen = first.get(event["event_id"])
        if seen is not None:
            assert seen == event
            duplicates += 1
            continue
        first[event["event_id"]] = event
        per_item.setdefault(event["item_id"], []).append(event)
    assert set(per_item) == set(expected)
    for item_id, events in per_item.items():
        assert [e["sequence"] for e in events] == list(range(1, len(expected[item_id]) + 1)), item_id
        assert [(e["from_state"], e["to_state"], e["trigger"]) for e in events] == expected[item_id]
    print(f"{total} events for {n} Items, {duplicates} duplicates")
