"""The same public token submitted more than once (an upstream app retrying after a timeout, or
publishing twice), concurrently and back to back, over HTTP and AMQP: one Item, one exchange, one
funding source, and the Item verified (issue 13: a second submission used to fail the Item that the
first had already exchanged, and remove it at Plaid)."""

from __future__ import annotations

import asyncio

import pytest

from sandbox.app import SandboxConfig
from tests.helpers import (
    RunningWorker,
    Sandbox,
    eventually,
    new_public_token,
    settled,
    submit_amqp,
    submit_http,
)
from worker.items.model import token_hash
from worker.items.states import State
from worker.services import Services
from worker.settings import Settings


@pytest.fixture
def sandbox_config(sandbox_config_for_receiver: SandboxConfig) -> SandboxConfig:
    return sandbox_config_for_receiver


async def items_for(services: Services, public_token: str) -> int:
    count: int = await services.pool.fetchval(
        "SELECT count(*) FROM items WHERE public_token_sha256 = $1", token_hash(public_token)
    )
    return count


async def test_the_same_public_token_four_times_at_once_and_twice_after_is_one_verified_item(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox, settings: Settings
) -> None:
    token = await new_public_token(sandbox)
    body = {"public_token": token, "client_user_id": "u-twice"}
    answers = await asyncio.gather(
        submit_http(receiver, settings, body),
        submit_http(receiver, settings, body),
        submit_amqp(services, body),
        submit_amqp(services, body),
    )
    http_answers = [a for a in answers if a is not None]
    assert {status for status, _ in http_answers} <= {200, 202}
    assert len({answer["id"] for _, answer in http_answers}) == 1  # the same Item, whoever was first
    item = await settled(services, token, State.ATOMIC_VERIFIED, State.FAILED)
    assert item.state is State.ATOMIC_VERIFIED, item.error_code

    # back to back, after the Item is done: answered with the Item, nothing published or changed
    status, again = await submit_http(receiver, settings, body)
    assert (status, again) == (200, {"id": str(item.id), "state": "atomic_verified", "duplicate": True})
    await submit_amqp(services, body)  # the AMQP twin is taken and changes nothing either

    async def nothing_waiting() -> bool:  # the twin and any deferred copies taken (in flight at most)
        channel = await services.connection.channel()
        try:
            names = [services.topo.items_queue] + [
                services.topo.retry_queue(services.topo.items_queue, d) for d in services.topo.retry_delays_ms
            ]
            for name in names:
                queue = await channel.declare_queue(name, passive=True)
                if queue.declaration_result.message_count:
                    return False
            return True
        finally:
            await channel.close()

    await eventually(nothing_waiting)
    totals = await worker.shutdown()  # drains what is in flight: every message was handled
    assert totals["dead_lettered"] == 0 and totals["acked"] >= 3
    await asyncio.wait_for(sandbox.state.drain(), 10)
    after = await services.store.get(item.id)
    assert after is not None and after.state is State.ATOMIC_VERIFIED
    assert await items_for(services, token) == 1
    assert sandbox.state.calls["/item/public_token/exchange"] == 1
    assert sandbox.state.atomic_funding_sources(str(item.id)) == 1
    assert "/item/remove" not in sandbox.state.calls
    history = [h.to_state for h in await services.store.history(item.id)]
    assert history == ["link", "exchanged", "processor_token_issued", "atomic_pending", "atomic_verified"]
