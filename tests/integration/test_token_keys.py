"""Token keys: start-up refuses a wrong or missing key; rotation re-seals every row online."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os

import pytest

from sandbox.app import SandboxConfig
from tests.helpers import Sandbox, new_public_token, run_paw, settled, submit_amqp
from worker.errors import TokenSealError
from worker.items.sealing import Sealer, aad, check_keys, remaining, rotate
from worker.items.states import State
from worker.runner import run_worker
from worker.services import Services, open_services
from worker.settings import Settings


@pytest.fixture
def sandbox_config(sandbox_config_for_receiver: SandboxConfig) -> SandboxConfig:
    return sandbox_config_for_receiver


def new_key(kid: str) -> tuple[str, bytes]:
    return kid, os.urandom(32)


async def funded(services: Services, sandbox: Sandbox, n: int, prefix: str) -> list[str]:
    tokens = [await new_public_token(sandbox) for _ in range(n)]
    for i, t in enumerate(tokens):
        await submit_amqp(services, {"public_token": t, "client_user_id": f"{prefix}-{i}"})
    return tokens


async def all_open_with(services: Services, sealer: Sealer) -> int:
    opened = 0
    async with services.pool.acquire() as conn:
        for r in await conn.fetch("SELECT * FROM items WHERE access_token_sealed IS NOT NULL"):
            from worker.items.model import Sealed

            sealer.open(
                Sealed(r["access_token_key_id"], bytes(r["access_token_sealed"])),
                aad=aad(r["id"], "access_token"),
            )
            if r["processor_token_sealed"] is not None:
                sealer.open(
                    Sealed(r["processor_token_key_id"], bytes(r["processor_token_sealed"])),
                    aad=aad(r["id"], "processor_token"),
                )
            opened += 1
    return opened


async def test_rotation_with_items_mid_flight_loses_nothing_and_leaves_no_old_key(
    settings: Settings, services: Services, receiver: str, sandbox: Sandbox
) -> None:
    # phase 1: Items sealed with the old key
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_worker(services, stop, ready=ready))
    await ready.wait()
    first = await funded(services, sandbox, 5, "old")
    for t in first:
        await settled(services, t, State.ATOMIC_VERIFIED)
    stop.set()
    await task
    old_kid = settings.active_key_id
    # phase 2: the new key is deployed first; a worker keeps funding Items while rotation runs
    rotated_settings = dataclasses.replace(settings, token_keys=(new_key("k2"), *settings.token_keys))
    sealer = Sealer(rotated_settings.token_keys)
    async with open_services(rotated_settings, "paw-test-rotated") as svc2:
        stop2, ready2 = asyncio.Event(), asyncio.Event()
        task2 = asyncio.create_task(run_worker(svc2, stop2, ready=ready2))
        await ready2.wait()
        second = await funded(svc2, sandbox, 20, "mid")
        resealed = await rotate(svc2.pool, sealer, batch=3)
        for t in first + second:
            await settled(svc2, t, State.ATOMIC_VERIFIED)
        stop2.set()
        await task2
        assert resealed >= 5  # the old Items were re-sealed by the rotation
        assert await remaining(svc2.pool, sealer) == 0
        keys_in_use = await svc2.pool.fetch(
            "SELECT DISTINCT access_token_key_id AS k FROM items UNION SELECT DISTINCT processor_token_key_id FROM items"
        )
        assert {r["k"] for r in keys_in_use} - {None} == {"k2"}
        only_new = Sealer(rotated_settings.token_keys[:1])
        assert await all_open_with(svc2, only_new) == 25
        assert await check_keys(svc2.pool, only_new) == {"k2": True}
    assert old_kid != "k2"


async def test_start_up_refuses_a_missing_or_wrong_key(
    settings: Settings, services: Services, worker: object, sandbox: Sandbox
) -> None:
    for t in await funded(services, sandbox, 1, "k"):
        await settled(services, t, State.ATOMIC_VERIFIED)
    missing = dataclasses.replace(settings, token_keys=(new_key("other"),))
    with pytest.raises(TokenSealError, match="dev1"):
        async with open_services(missing, "paw-test-missing-key"):
            pass
    wrong = dataclasses.replace(settings, token_keys=(new_key(settings.active_key_id),))
    with pytest.raises(TokenSealError, match="does not open"):
        async with open_services(wrong, "paw-test-wrong-key"):
            pass


async def test_paw_keys_rotate_command(
    settings: Settings, services: Services, worker: object, sandbox: Sandbox
) -> None:
    for t in await funded(services, sandbox, 3, "cli"):
        await settled(services, t, State.ATOMIC_VERIFIED)
    kid, key = new_key("k3")
    keys = (
        f"{kid}:{base64.urlsafe_b64encode(key).decode()},dev1:"
        + base64.urlsafe_b64encode(settings.token_keys[0][1]).decode()
    )
    code, out, err = await run_paw(settings, "keys", "rotate", "--batch", "2", PAW_TOKEN_KEYS=keys)
    assert code == 0, err.decode()
    assert "re-sealed 3 rows" in out.decode()
    assert await remaining(services.pool, Sealer(((kid, key),))) == 0
