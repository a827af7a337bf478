"""The Atomic emulator: idempotent funding sources, verification through Plaid, signed webhooks."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from sandbox.app import SANDBOX, SandboxConfig, serve
from sandbox.receiver import WebhookReceiver
from sandbox.state import SandboxState

API_KEY = "atomic-test-key"
SECRET = "atomic-test-secret"


class Env:
    def __init__(self, base_url: str, state: SandboxState, http: aiohttp.ClientSession, rx: WebhookReceiver):
        self.base_url = base_url
        self.state = state
        self.http = http
        self.receiver = rx

    async def post(
        self, path: str, body: Any, *, key: str | None = None, token: str = API_KEY
    ) -> tuple[int, dict[str, Any], CIMultiDictProxy[str]]:
        headers = {"Authorization": f"Bearer {token}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        async with self.http.post(self.base_url + path, json=body, headers=headers) as response:
            return response.status, await response.json(), response.headers

    async def get(self, path: str, method: str = "GET") -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with self.http.request(method, self.base_url + path, headers=headers) as response:
            return response.status, await response.json()

    async def plaid(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        config = self.state.config
        payload = {"client_id": config.client_id, "secret": config.secret, **body}
        async with self.http.post(self.base_url + path, json=payload) as response:
            result: dict[str, Any] = await response.json()
            assert response.status == 200, result
            return result

    async def processor_token(self) -> tuple[str, str]:
        """(access_token, processor_token) for a fresh user_good checking account."""
        created = await self.plaid(
            "/sandbox/public_token/create", {"institution_id": "ins_109508", "initial_products": ["auth"]}
        )
        exchanged = await self.plaid("/item/public_token/exchange", {"public_token": created["public_token"]})
        accounts = await self.plaid("/accounts/get", {"access_token": exchanged["access_token"]})
        token = await self.plaid(
            "/processor/token/create",
            {
                "access_token": exchanged["access_token"],
                "account_id": accounts["accounts"][0]["account_id"],
                "processor": "atomic",
            },
        )
        return exchanged["access_token"], token["processor_token"]


async def start_env(delay_s: float = 0.0) -> tuple[Env, Any]:
    rx = WebhookReceiver()
    await rx.start()
    config = SandboxConfig(
        atomic_api_key=API_KEY,
        atomic_webhook_secret=SECRET,
        atomic_webhook_url=rx.base_url + "/atomic",
        atomic_decision_delay_s=delay_s,
    )
    runner, base_url = await serve(config, "127.0.0.1", 0)
    http = aiohttp.ClientSession()

    async def stop() -> None:
        await http.close()
        await runner.cleanup()
        await rx.close()

    return Env(base_url, runner.app[SANDBOX], http, rx), stop


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e, stop = await start_env()
    try:
        yield e
    finally:
        await stop()


@pytest.fixture
async def slow_env() -> AsyncIterator[Env]:
    """Decisions take an hour: only forced decisions happen during a test."""
    e, stop = await start_env(delay_s=3600.0)
    try:
        yield e
    finally:
        await stop()


def submission(
    processor_token: str, account_ref: str = "acct-1", customer_ref: str = "cust-1"
) -> dict[str, str]:
    return {"processor_token": processor_token, "account_ref": account_ref, "customer_ref": customer_ref}


async def next_atomic_webhook(env: Env) -> dict[str, Any]:
    received = await env.receiver.next()
    expected = "sha256=" + hmac.new(SECRET.encode(), received.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(received.headers["x-atomic-signature"], expected)
    body: dict[str, Any] = json.loads(received.body)
    return body


async def test_same_idempotency_key_creates_one_funding_source(env: Env) -> None:
    _, token = await env.processor_token()
    status1, first, _ = await env.post("/atomic/v1/funding_sources", submission(token), key="k-1")
    status2, second, _ = await env.post("/atomic/v1/funding_sources", submission(token), key="k-1")
    assert (status1, status2) == (201, 200)
    assert first["id"].startswith("fs_") and first["status"] == "PENDING"
    assert second == first
    assert env.state.atomic_submissions("acct-1") == 2
    assert env.state.atomic_funding_sources("acct-1") == 1
    assert env.state.calls["/atomic/v1/funding_sources"] == 2


async def test_same_key_other_body_is_409(env: Env) -> None:
    _, token = await env.processor_token()
    await env.post("/atomic/v1/funding_sources", submission(token), key="k-1")
    status, body, _ = await env.post(
        "/atomic/v1/funding_sources", submission(token, customer_ref="cust-2"), key="k-1"
    )
    assert (status, body) == (409, {"error": "idempotency_key_reused"})
    assert env.state.atomic_funding_sources("acct-1") == 1


async def test_new_key_creates_a_second_funding_source(env: Env) -> None:
    _, token = await env.processor_token()
    _, first, _ = await env.post("/atomic/v1/funding_sources", submission(token), key="k-1")
    _, second, _ = await env.post("/atomic/v1/funding_sources", submission(token), key="k-2")
    assert first["id"] != second["id"]
    assert env.state.atomic_funding_sources("acct-1") == 2


@pytest.mark.parametrize("token", ["wrong-key", ""])
async def test_wrong_api_key_is_401(env: Env, token: str) -> None:
    _, processor_token = await env.processor_token()
    status, body, _ = await env.post(
        "/atomic/v1/funding_sources", submission(processor_token), key="k-1", token=token
    )
    assert (status, body) == (401, {"error": "unauthorized"})
    assert env.state.atomic_submissions("acct-1") == 0


async def test_missing_idempotency_key_is_400(env: Env) -> None:
    _, token = await env.processor_token()
    status, body, _ = await env.post("/atomic/v1/funding_sources", submission(token))
    assert status == 400 and body["error"] == "missing_idempotency_key"
    status, body, _ = await env.post("/atomic/v1/funding_sources", {"account_ref": "acct-1"}, key="k")
    assert status == 400 and body["error"] == "invalid_request"
    assert env.state.atomic_funding_sources("acct-1") == 0


async def test_verified_webhook_is_signed_and_pollable(env: Env) -> None:
    _, token = await env.processor_token()
    _, created, _ = await env.post("/atomic/v1/funding_sources", submission(token), key="k-1")
    webhook = await next_atomic_webhook(env)
    assert webhook["type"] == "funding_source.updated"
    assert webhook["event_id"].startswith("evt_")
    assert (webhook["funding_source_id"], webhook["account_ref"]) == (created["id"], "acct-1")
    assert (webhook["status"], webhook["reason"]) == ("VERIFIED", None)
    assert webhook["occurred_at"].endswith("Z")

    status, polled = await env.get(f"/atomic/v1/funding_sources/{created['id']}")
    assert status == 200
    assert (polled["id"], polled["status"], polled["reason"], polled["account_ref"]) == (
        created["id"],
        "VERIFIED",
        None,
        "acct-1",
    )
    assert env.state.webhook_deliveries[-1].status == 200


async def test_invalid_processor_token_is_rejected(env: Env) -> None:
    access_token, token = await env.processor_token()
    await env.plaid("/item/remove", {"access_token": access_token})
    await env.post("/atomic/v1/funding_sources", submission(token), key="k-1")
    webhook = await next_atomic_webhook(env)
    assert (webhook["status"], webhook["reason"]) == ("REJECTED", "account_verification_failed")


async def test_reject_customer_convention(env: Env) -> None:
    _, token = await env.processor_token()
    await env.post("/atomic/v1/funding_sources", submission(token, customer_ref="reject-me"), key="k-1")
    webhook = await next_atomic_webhook(env)
    assert (webhook["status"], webhook["reason"]) == ("REJECTED", "customer_rejected")


async def test_tampered_body_fails_hmac(env: Env) -> None:
    _, token = await env.processor_token()
    await env.post("/atomic/v1/funding_sources", submission(token), key="k-1")
    received = await env.receiver.next()
    tampered = received.body.replace(b"VERIFIED", b"REJECTED")
    forged = "sha256=" + hmac.new(SECRET.encode(), tampered, hashlib.sha256).hexdigest()
    assert not hmac.compare_digest(received.headers["x-atomic-signature"], forged)


async def test_forced_decision_and_delete(slow_env: Env) -> None:
    env = slow_env
    _, token = await env.processor_token()
    _, created, _ = await env.post("/atomic/v1/funding_sources", submission(token), key="k-1")
    fs_id = created["id"]
    assert (await env.get(f"/atomic/v1/funding_sources/{fs_id}"))[1]["status"] == "PENDING"
    assert env.receiver.received.empty()

    status, decided, _ = await env.post(
        f"/atomic/sandbox/funding_sources/{fs_id}/decide", {"status": "REJECTED", "reason": "nsf"}
    )
    assert (status, decided["status"], decided["reason"]) == (200, "REJECTED", "nsf")
    webhook = await next_atomic_webhook(env)
    assert (webhook["funding_source_id"], webhook["status"], webhook["reason"]) == (fs_id, "REJECTED", "nsf")

    status, _, _ = await env.post(f"/atomic/sandbox/funding_sources/{fs_id}/decide", {"status": "MAYBE"})
    assert status == 400
    assert await env.get(f"/atomic/v1/funding_sources/{fs_id}", "DELETE") == (
        200,
        {"id": fs_id, "status": "REMOVED"},
    )
    assert (await env.get(f"/atomic/v1/funding_sources/{fs_id}"))[1]["status"] == "REMOVED"
    assert (await env.get("/atomic/v1/funding_sources/fs_unknown"))[0] == 404


async def test_atomic_fault_then_success(env: Env) -> None:
    _, token = await env.processor_token()
    env.state.set_fault(
        "/atomic/v1/funding_sources",
        status=503,
        error_code="unavailable",
        error_type="",
        times=1,
        retry_after=3,
    )
    status, body, headers = await env.post("/atomic/v1/funding_sources", submission(token), key="k-1")
    assert (status, body, headers["Retry-After"]) == (503, {"error": "unavailable"}, "3")
    assert env.state.atomic_submissions("acct-1") == 0  # a faulted call never reached Atomic
    status, _, _ = await env.post("/atomic/v1/funding_sources", submission(token), key="k-1")
    assert status == 201
    assert env.state.atomic_funding_sources("acct-1") == 1


async def test_atomic_item_path_fault_uses_route_pattern(env: Env) -> None:
    env.state.set_fault(
        "/atomic/v1/funding_sources/{id}", status=500, error_code="boom", error_type="", times=1
    )
    assert await env.get("/atomic/v1/funding_sources/fs_x") == (500, {"error": "boom"})
    assert (await env.get("/atomic/v1/funding_sources/fs_x"))[0] == 404
    assert env.state.calls["/atomic/v1/funding_sources/{id}"] == 2
