"""The receiver while RabbitMQ is stopped and started again: 503, then recovery without a restart, nothing acknowledged lost."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.helpers import (
    BrokerControl,
    Rx,
    Sandbox,
    eventually,
    item_error_body,
    take_envelopes,
)
from worker.services import Services
from worker.settings import Settings


@pytest.mark.chaos
async def test_broker_outage_answers_503_and_recovers_without_restart_losing_nothing_acknowledged(
    rx: Rx, sandbox: Sandbox, settings: Settings, services: Services, broker: BrokerControl
) -> None:
    accepted: list[str] = []
    refused: list[float] = []
    unexpected: list[Any] = []
    stop = asyncio.Event()

    async def stream() -> None:
        while not stop.is_set():
            body = item_error_body()
            try:
                status, answer, took = await rx.post(body, sandbox.state.sign(body))
            except aiohttp.ClientError as e:  # the receiver must answer every request, outage or not
                unexpected.append(e)
                continue
            if status == 200:
                accepted.append(answer["event_id"])
            elif status == 503 and answer["error"] == "broker_unavailable":
                refused.append(took)
            else:
                unexpected.append((status, answer))
            await asyncio.sleep(0.01)  # pacing: a steady stream, not a flood

    streams = [asyncio.create_task(stream()) for _ in range(4)]
    try:
        await eventually(grown(accepted, 20))
        await broker.stop()
        await eventually(lambda: _status_is(rx, "/readyz", 503), timeout=20)
        # once the receiver knows the broker is gone, it refuses at once instead of hanging
        body = item_error_body()
        status, answer, took = await rx.post(body, sandbox.state.sign(body))
        assert (status, answer["error"]) == (503, "broker_unavailable")
        assert took < 0.5
        await eventually(grown(refused, 20))
        accepted_before_recovery = len(accepted)
        await broker.start()
        await eventually(lambda: _status_is(rx, "/readyz", 200), timeout=30)
        await eventually(grown(accepted, accepted_before_recovery + 20))
    finally:
        stop.set()
        await asyncio.gather(*streams, return_exceptions=True)
    assert unexpected == []
    messages = await take_envelopes(settings, services)
    queued = {json.loads(m.body)["event_id"] for m in messages}
    missing = set(accepted) - queued
    assert missing == set(), f"{len(missing)} of {len(accepted)} acknowledged webhooks were lost"
    assert len(refused) >= 20
    assert max(refused) <= settings.publish_timeout + 1.0  # never hangs beyond the publish bound
    assert rx.receiver.metrics["publish_failed"] == len(refused) + 1


def grown(items: list[Any], size: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(items) >= size

    return check


async def _status_is(rx: Rx, path: str, status: int) -> bool:
    got, _ = await rx.get(path)
    return got == status
