"""Retries through the delay queues and dead letters, end to end on the real broker, database and
sandbox (settings: retry_base_ms=50, retry_budget=4, so the tiers are 50, 200, 800, 3200 ms)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import MutableMapping
from typing import Any

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from sandbox.app import SandboxConfig
from tests.helpers import (
    RunningWorker,
    Sandbox,
    eventually,
    new_public_token,
    queue_messages,
    settled,
    submit_amqp,
)
from worker.bus.dlq import DeadLetter
from worker.items.model import token_hash
from worker.items.states import State
from worker.messages import (
    H_ATTEMPTS,
    H_ERROR_CLASS,
    H_ERROR_CODE,
    H_ERROR_MESSAGE,
    H_FIRST_FAILURE,
    H_LAST_FAILURE,
    H_QUEUE,
    H_REQUEST_ID,
    H_ROUTING_KEY,
)
from worker.services import Services
from worker.settings import Settings

EXCHANGE = "/item/public_token/exchange"


@pytest.fixture
def sandbox_config(sandbox_config_for_receiver: SandboxConfig) -> SandboxConfig:
    return sandbox_config_for_receiver  # Atomic's webhooks reach the receiver


def events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == name]


def counted(metric: str, queue: str, reason: str) -> float:
    return REGISTRY.get_sample_value(metric, {"queue": queue, "reason": reason}) or 0.0


async def transitions(services: Services, public_token: str) -> dict[str, dt.datetime]:
    item = await services.store.get_by_token_hash(token_hash(public_token))
    assert item is not None
    return {h.to_state: h.at for h in await services.store.history(item.id)}


async def test_transient_failures_are_retried_with_backoff_without_delaying_other_items(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox, settings: Settings
) -> None:
    slow, fast = await new_public_token(sandbox), await new_public_token(sandbox)
    sandbox.state.set_fault(
        EXCHANGE, status=500, error_code="INTERNAL_SERVER_ERROR", error_type="API_ERROR", times=3
    )
    with capture_logs() as logs:
        await submit_amqp(services, {"public_token": slow, "client_user_id": "u-slow"})
        # the three faults are spent by the slow Item; it now waits in the 800 ms delay queue
        await eventually(lambda: _calls_at_least(sandbox, 3))
        await submit_amqp(services, {"public_token": fast, "client_user_id": "u-fast"})
        await settled(services, slow, State.ATOMIC_VERIFIED)
        await settled(services, fast, State.ATOMIC_VERIFIED)
    totals = await worker.shutdown()
    assert sandbox.state.calls[EXCHANGE] == 5  # slow: 3 failures + 1 success; fast: 1
    retries = events(logs, "message.retry")
    assert [e["attempt"] for e in retries] == [1, 2, 3]
    assert {e["error_code"] for e in retries} == {"INTERNAL_SERVER_ERROR"}
    tiers = services.topo.retry_delays_ms
    for e, tier in zip(retries, tiers, strict=False):
        assert (
            int(0.75 * tier) <= e["delay_ms"] <= tier
        )  # backoff x4, jitter only shortens (a quarter at most)
    assert totals["retried"] == 3 and totals["dead_lettered"] == 0
    queue = services.topo.items_queue
    assert counted("paw_retries_total", queue, "INTERNAL_SERVER_ERROR") == 3
    slow_at, fast_at = await transitions(services, slow), await transitions(services, fast)
    # the fast Item, submitted after the slow one failed, was done before the slow one even exchanged
    assert fast_at["atomic_verified"] < slow_at["exchanged"]
    assert list(slow_at) == [
        "link",
        "exchanged",
        "processor_token_issued",
        "atomic_pending",
        "atomic_verified",
    ]
    assert await queue_messages(settings.amqp_url, services.topo.dead_queue) == []


async def _calls_at_least(sandbox: Sandbox, n: int) -> bool:
    return sandbox.state.calls[EXCHANGE] >= n


async def test_a_message_failing_past_the_budget_is_dead_lettered_with_its_story(
    services: Services, worker: RunningWorker, sandbox: Sandbox, settings: Settings
) -> None:
    token = await new_public_token(sandbox)
    sandbox.state.set_fault(EXCHANGE, status=500, error_code="INTERNAL_SERVER_ERROR", error_type="API_ERROR")
    message_id = str(uuid.uuid4())
    with capture_logs() as logs:
        await services.publisher.publish(
            "item.link",
            json.dumps({"public_token": token, "client_user_id": "u-doomed"}).encode(),
            message_id=message_id,
        )
        (dead,) = await eventually(lambda: queue_messages(settings.amqp_url, services.topo.dead_queue))
    assert sandbox.state.calls[EXCHANGE] == 5  # the first try and 4 retries (budget 4)
    assert [e["attempt"] for e in events(logs, "message.retry")] == [1, 2, 3, 4]
    assert len(events(logs, "message.dead_lettered")) == 1
    h = dead.headers
    assert h[H_ATTEMPTS] == 5 and h[H_ROUTING_KEY] == "item.link" and h[H_QUEUE] == services.topo.items_queue
    assert h[H_ERROR_CODE] == "INTERNAL_SERVER_ERROR" and h[H_ERROR_CLASS] == "UpstreamError"
    assert h[H_REQUEST_ID] and "sandbox fault" in str(h[H_ERROR_MESSAGE])
    first, last = (
        dt.datetime.fromisoformat(str(h[H_FIRST_FAILURE])),
        dt.datetime.fromisoformat(str(h[H_LAST_FAILURE])),
    )
    # 50 + 200 + 800 + 3200 ms of backoff, each shortened by at most a quarter
    assert dt.timedelta(milliseconds=0.75 * 4250) <= last - first < dt.timedelta(seconds=10)
    # the broker's own record of the four hops through the delay queues
    hops = {d["queue"] for d in h["x-death"]}
    assert hops == {
        services.topo.retry_queue(services.topo.items_queue, t) for t in services.topo.retry_delays_ms
    }
    assert dead.message_id == message_id and token.encode() in dead.body
    letter = DeadLetter.parse(dead.body, dead.headers, dead.message_id)
    assert letter.attempts == 5 and letter.reason == "INTERNAL_SERVER_ERROR" and letter.replays == 0
    item = await services.store.get_by_token_hash(token_hash(token))
    assert item is not None and item.state is State.LINK  # nothing was decided: it waits for on-call
    assert counted("paw_dead_letters_total", services.topo.items_queue, "INTERNAL_SERVER_ERROR") == 1


async def test_a_poison_message_is_dead_lettered_at_once(
    services: Services, worker: RunningWorker, sandbox: Sandbox, settings: Settings
) -> None:
    with capture_logs() as logs:
        await services.publisher.publish(
            "item.drive", json.dumps({"item_id": "not-a-uuid", "reason": "x"}).encode(), message_id="m-poison"
        )
        (dead,) = await eventually(lambda: queue_messages(settings.amqp_url, services.topo.dead_queue))
    totals = await worker.shutdown()
    assert dead.headers[H_ATTEMPTS] == 1 and dead.headers[H_ERROR_CLASS] == "Poison"
    assert "item.drive schema" in str(dead.headers[H_ERROR_MESSAGE])
    assert H_ERROR_CODE not in dead.headers and "x-death" not in dead.headers  # never went to a delay queue
    assert events(logs, "message.retry") == [] and totals["retried"] == 0 and totals["dead_lettered"] == 1
    assert sum(sandbox.state.calls.values()) == 0
