"""An operator's mistake does not cost users their bank links (issue 13): with the Atomic integration
turned off in the Plaid Dashboard (a sandbox lever: Plaid's own Sandbox has no such switch),
``/processor/token/create`` answers INVALID_PRODUCT. No Item fails and none is removed at Plaid; the
messages wait in the dead-letter queue; the worker's /readyz and ``paw status`` say what is wrong;
once the integration is on again, ``paw dlq replay --code INVALID_PRODUCT`` finishes every Item
without a new public token."""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from sandbox.app import SandboxConfig
from tests.helpers import (
    RunningWorker,
    Sandbox,
    eventually,
    new_public_token,
    run_paw,
    settled,
    submit_amqp,
)
from worker.admin import create_admin_app, operator_problems, service_checks
from worker.items.states import State
from worker.services import Services
from worker.settings import Settings

ITEMS = 20


@pytest.fixture
def sandbox_config(sandbox_config_for_receiver: SandboxConfig) -> SandboxConfig:
    return sandbox_config_for_receiver


async def atomic_integration(sandbox: Sandbox, *, enabled: bool) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{sandbox.url}/sandbox/control/processors", json={"processor": "atomic", "enabled": enabled}
        ) as resp,
    ):
        assert resp.status == 200


async def test_the_atomic_integration_off_parks_items_and_a_replay_finishes_them(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox, settings: Settings
) -> None:
    await atomic_integration(sandbox, enabled=False)
    tokens = [await new_public_token(sandbox) for _ in range(ITEMS)]
    for i, token in enumerate(tokens):
        await submit_amqp(services, {"public_token": token, "client_user_id": f"u-op-{i}"})

    async def all_parked() -> bool:
        channel = await services.connection.channel()
        try:
            dead = await channel.declare_queue(services.topo.dead_queue, passive=True)
            return dead.declaration_result.message_count == ITEMS
        finally:
            await channel.close()

    await eventually(all_parked, timeout=30)
    for token in tokens:  # exchanged, and there they wait: not failed, not removed
        item = await settled(services, token, State.EXCHANGED)
        assert item.error_code is None and item.access_token is not None
    assert "/item/remove" not in sandbox.state.calls

    # the worker's /readyz names the cause in one line
    admin = create_admin_app(service_checks(services), problems=operator_problems(services))
    async with TestClient(TestServer(admin)) as client:
        resp = await client.get("/readyz")
        ready = await resp.json()
    assert resp.status == 503 and ready["checks"] == {"broker": True, "database": True}
    (problem,) = ready["problems"]
    assert "Dashboard" in problem and "INVALID_PRODUCT" in problem and "paw dlq replay" in problem

    # so does paw status
    code, out, err = await run_paw(settings, "status", "--json")
    shown = json.loads(out)
    assert code == 1 and "1 setup problem(s)" in shown["check"]["line"], err  # a warning, and why
    (line,) = shown["setup_problems"]
    assert "INVALID_PRODUCT" in line

    # the integration is turned on again: a replay finishes every Item, with no new public token
    await atomic_integration(sandbox, enabled=True)
    code, out, err = await run_paw(
        settings, "dlq", "replay", "--code", "INVALID_PRODUCT", "--actor", "oncall"
    )
    assert code == 0, err
    assert f"replayed {ITEMS} " in out.decode()
    for token in tokens:
        await settled(services, token, State.ATOMIC_VERIFIED)
    assert sandbox.state.calls["/item/public_token/exchange"] == ITEMS  # each token exchanged once
    assert "/item/remove" not in sandbox.state.calls
