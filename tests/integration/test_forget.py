"""Tokens are destroyed when an Item is forgotten or fails for good; only the audit trail stays."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import plaid
import pytest
from plaid.model.accounts_get_request import AccountsGetRequest

from sandbox.app import SandboxConfig
from tests.helpers import (
    RunningWorker,
    Sandbox,
    access_token_of,
    new_public_token,
    plaid_api_for,
    run_paw,
    settled,
    submit_amqp,
    verified_item,
)
from worker.items.states import State
from worker.services import Services
from worker.settings import Settings


@pytest.fixture
def sandbox_config(sandbox_config_for_receiver: SandboxConfig) -> SandboxConfig:
    return sandbox_config_for_receiver


async def access_revoked_at_plaid(sandbox: Sandbox, access_token: str) -> str:
    with pytest.raises(plaid.ApiException) as caught:
        await asyncio.to_thread(
            plaid_api_for(sandbox).accounts_get, AccountsGetRequest(access_token=access_token)
        )
    return str(caught.value.body)


async def test_paw_item_forget_removes_everywhere_and_keeps_history(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox, settings: Settings
) -> None:
    item = await verified_item(services, sandbox, receiver)
    access = access_token_of(sandbox, item.plaid_item_id or "")
    code, _, err = await run_paw(settings, "item", "forget", str(item.id), "--yes", "--actor", "oncall-test")
    assert code == 0, err.decode()
    gone = await services.store.get(item.id)
    assert gone is not None and gone.state is State.REVOKED
    assert gone.access_token is None and gone.processor_token is None and gone.atomic_removed_at is not None
    assert "ITEM_NOT_FOUND" in await access_revoked_at_plaid(sandbox, access)
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{settings.atomic_base_url}/v1/funding_sources/{gone.atomic_funding_source_id}",
            headers={"Authorization": f"Bearer {settings.atomic_api_key}"},
        ) as r,
    ):
        assert (await r.json())["status"] == "REMOVED"
    history = await services.store.history(item.id)
    assert [h.to_state for h in history][-2:] == ["atomic_verified", "revoked"]
    assert history[-1].trigger == "forgotten" and history[-1].event_id == "oncall-test"


async def test_forget_stops_before_destroying_anything_when_plaid_or_atomic_fail(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox, settings: Settings
) -> None:
    item = await verified_item(services, sandbox, receiver)
    access = access_token_of(sandbox, item.plaid_item_id or "")

    sandbox.state.set_fault(
        "/item/remove", status=500, error_code="INTERNAL_SERVER_ERROR", error_type="API_ERROR"
    )
    code, out, err = await run_paw(settings, "item", "forget", str(item.id), "--yes")
    assert (code, out) == (1, b"")
    verdict = err.decode().splitlines()[-1]  # after the log lines: the verdict, one line
    assert verdict.startswith(
        "paw: not forgotten: Plaid (/item/remove) failed transiently (INTERNAL_SERVER_ERROR"
    )
    kept = await services.store.get(item.id)
    assert kept is not None and kept.state is State.ATOMIC_VERIFIED and kept.plaid_removed_at is None
    assert kept.access_token is not None and kept.processor_token is not None  # its only handle, kept
    sandbox.state.clear_faults()

    # Plaid removes it, then Atomic fails: the tokens still stay, and a second run finishes the job
    sandbox.state.set_fault(
        "/atomic/v1/funding_sources/" + (item.atomic_funding_source_id or ""),
        status=503,
        error_code="SERVICE_UNAVAILABLE",
        error_type="API_ERROR",
    )
    code, _, err = await run_paw(settings, "item", "forget", str(item.id), "--yes")
    assert code == 1 and "atomic (funding source removal) failed transiently" in err.decode(), err
    half = await services.store.get(item.id)
    assert half is not None and half.plaid_removed_at is not None and half.atomic_removed_at is None
    assert half.access_token is not None
    sandbox.state.clear_faults()
    code, out, err = await run_paw(settings, "item", "forget", str(item.id), "--yes", "--json")
    assert code == 0, err.decode()
    assert json.loads(out) == {
        "item_id": str(item.id),
        "forgotten": True,
        "state": "revoked",
        "tokens_destroyed": True,
    }
    gone = await services.store.get(item.id)
    assert gone is not None and gone.state is State.REVOKED and gone.access_token is None
    assert gone.atomic_removed_at is not None
    assert "ITEM_NOT_FOUND" in await access_revoked_at_plaid(sandbox, access)


async def test_an_item_that_fails_after_exchange_keeps_no_live_access(
    services: Services, worker: RunningWorker, sandbox: Sandbox
) -> None:
    token = await new_public_token(sandbox, "user_no_depository")
    await submit_amqp(services, {"public_token": token, "client_user_id": "u-nodep"})
    item = await settled(services, token, State.FAILED)
    assert item.error_code == "NO_USABLE_ACCOUNT"

    async def tokens_gone() -> bool:
        got = await services.store.get(item.id)
        return got is not None and got.access_token is None

    from tests.helpers import eventually

    await eventually(tokens_gone)
    assert "ITEM_NOT_FOUND" in await access_revoked_at_plaid(
        sandbox, access_token_of(sandbox, item.plaid_item_id or "")
    )
