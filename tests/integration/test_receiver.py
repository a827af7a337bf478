"""POST /webhooks/plaid against the real broker: what Plaid signs is queued once, durably, and
acknowledged only then; everything else is refused and nothing of it reaches the exchange."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import aio_pika
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

import schemas
from sandbox import webhook_bodies
from sandbox.signing import SigningKey, new_signing_key, plaid_verification_jwt
from tests.helpers import (
    Rx,
    Sandbox,
    eventually,
    item_error_body,
    take_envelopes,
)
from worker.services import Services
from worker.settings import Settings

KEY_PATH = "/webhook_verification_key/get"


async def assert_nothing_published(rx: Rx, sandbox: Sandbox, settings: Settings, services: Services) -> None:
    """A valid webhook sent after the refused one is the only message queued: one channel keeps
    order, so anything the refused request had published would be ahead of it."""
    sentinel = item_error_body()
    status, answer, _ = await rx.post(sentinel, sandbox.state.sign(sentinel))
    assert status == 200, answer
    messages = await eventually(lambda: take_envelopes(settings, services))
    assert [json.loads(m.body)["event_id"] for m in messages] == [answer["event_id"]]


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hand_made_jwt(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


def claims_for(body: bytes, iat: float | None = None) -> dict[str, Any]:
    return {
        "iat": int(iat if iat is not None else time.time()),
        "request_body_sha256": hashlib.sha256(body).hexdigest(),
    }


# -- accepted -----------------------------------------------------------------------------------


async def test_valid_webhook_is_queued_once_persistent_and_schema_valid(
    rx: Rx, sandbox: Sandbox, settings: Settings, services: Services
) -> None:
    body = item_error_body("item-accepted-1")
    iat = int(time.time())
    token = sandbox.state.sign(body, iat=iat)
    async with rx.http.post(
        f"{rx.url}/webhooks/plaid",
        data=body,
        headers={"plaid-verification": token},  # any header case
    ) as resp:
        assert resp.status == 200
        answer = await resp.json()

    messages = await eventually(lambda: take_envelopes(settings, services))
    assert len(messages) == 1
    msg = messages[0]
    assert msg.exchange == settings.exchange
    assert msg.routing_key == "webhook.plaid.ITEM.ERROR"
    assert msg.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert msg.message_id == answer["event_id"]
    envelope = json.loads(msg.body)
    assert list(schemas.validator("webhook.plaid").iter_errors(envelope)) == []
    assert envelope["event_id"] == answer["event_id"]
    assert envelope["webhook"] == json.loads(body)
    assert envelope["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert envelope["kid"] == sandbox.state.current_kid
    assert envelope["sent_at"] == iat
    assert rx.receiver.metrics["plaid_accepted"] == 1
    # and nothing else arrives later
    assert await take_envelopes(settings, services) == []


# -- refused ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Forgery:
    """A request that must be refused: (body sent, token sent, kid the log should name)."""

    body: bytes
    token: str | None
    kid: str | None


def forge(case: str, sandbox: Sandbox) -> Forgery:
    state = sandbox.state
    body = item_error_body(f"item-forged-{case}")
    kid = state.current_kid
    if case == "no_header":
        return Forgery(body, None, None)
    if case == "alg_none":
        token = hand_made_jwt({"alg": "none", "kid": kid, "typ": "JWT"}, claims_for(body), lambda _: b"")
        return Forgery(body, token, None)
    if case == "hs256_with_public_key":
        key = state.key(kid)
        assert key is not None
        pem = key.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        token = hand_made_jwt(
            {"alg": "HS256", "kid": kid, "typ": "JWT"},
            claims_for(body),
            lambda data: hmac.new(pem, data, hashlib.sha256).digest(),
        )
        return Forgery(body, token, None)
    if case == "signature_over_other_body":
        return Forgery(body, state.sign(item_error_body()), kid)
    if case == "body_changed_one_byte":
        token = state.sign(body)
        return Forgery(body.replace(b"ITEM_LOGIN_REQUIRED", b"ITEM_LOGIN_REQUIRES"), token, kid)
    if case == "body_reindented":
        token = state.sign(body)
        return Forgery(json.dumps(json.loads(body)).encode(), token, kid)
    if case == "iat_6_minutes_old":
        return Forgery(body, state.sign(body, iat=int(time.time()) - 360), kid)
    if case == "iat_in_the_future":
        return Forgery(body, state.sign(body, iat=int(time.time()) + 120), kid)
    if case == "unknown_kid":
        stranger = new_signing_key(int(time.time()))
        return Forgery(body, plaid_verification_jwt(body, stranger, int(time.time())), stranger.kid)
    if case == "expired_key":
        old = kid
        state.rotate_key()
        return Forgery(body, state.sign(body, kid=old), old)
    if case == "other_key_same_kid":
        impostor = SigningKey(kid=kid, private_key=ec.generate_private_key(ec.SECP256R1()), created_at=0)
        return Forgery(body, plaid_verification_jwt(body, impostor, int(time.time())), kid)
    if case == "truncated_jwt":
        token = state.sign(body)
        return Forgery(body, token[: len(token) // 2], None)
    if case == "truncated_signature":
        token = state.sign(body)
        return Forgery(body, token[:-6], kid)
    if case == "garbage_jwt":
        return Forgery(body, "garbage.not-a.jwt!", None)
    raise AssertionError(case)


REFUSALS = {
    "no_header": (401, "missing_header"),
    "alg_none": (401, "bad_alg"),
    "hs256_with_public_key": (401, "bad_alg"),
    "signature_over_other_body": (401, "body_hash_mismatch"),
    "body_changed_one_byte": (401, "body_hash_mismatch"),
    "body_reindented": (401, "body_hash_mismatch"),
    "iat_6_minutes_old": (401, "stale_iat"),
    "iat_in_the_future": (401, "future_iat"),
    "unknown_kid": (401, "unknown_kid"),
    "expired_key": (401, "expired_key"),
    "other_key_same_kid": (401, "bad_signature"),
    "truncated_jwt": (401, "malformed_jwt"),
    "truncated_signature": (401, "malformed_jwt"),
    "garbage_jwt": (401, "malformed_jwt"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_forged_or_stale_webhook_is_refused_and_nothing_is_published(
    case: str, rx: Rx, sandbox: Sandbox, settings: Settings, services: Services
) -> None:
    forgery = forge(case, sandbox)
    status, reason = REFUSALS[case]
    with capture_logs() as logs:
        got, answer, _ = await rx.post(forgery.body, forgery.token)
    assert (got, answer["error"]) == (status, reason)
    assert rx.receiver.metrics[f"plaid_rejected.{reason}"] == 1
    assert rx.receiver.metrics["plaid_accepted"] == 0
    rejected = [e for e in logs if e["event"] == "webhook.rejected"]
    assert len(rejected) == 1 and rejected[0]["reason"] == reason
    if forgery.kid is not None:
        assert rejected[0]["kid"] == forgery.kid
    marker = f"item-forged-{case}"
    assert marker not in repr(logs)  # the body is never logged
    await assert_nothing_published(rx, sandbox, settings, services)


@pytest.mark.parametrize("chunked", [False, True], ids=["content_length", "chunked"])
async def test_large_webhook_within_the_limit_is_read_whole_and_accepted(
    chunked: bool, rx: Rx, sandbox: Sandbox, settings: Settings, services: Services
) -> None:
    hook = webhook_bodies.item_error("item-large")
    hook["padding"] = ""
    hook["padding"] = "x" * (settings.max_body_bytes - len(webhook_bodies.encode(hook)))
    body = webhook_bodies.encode(hook)
    assert len(body) == settings.max_body_bytes
    status, answer, _ = await rx.post(body, sandbox.state.sign(body), chunked=chunked)
    assert status == 200, answer
    messages = await eventually(lambda: take_envelopes(settings, services))
    assert [json.loads(m.body)["body_sha256"] for m in messages] == [hashlib.sha256(body).hexdigest()]


@pytest.mark.parametrize("chunked", [False, True], ids=["content_length", "chunked"])
async def test_oversized_body_is_413_and_nothing_is_published(
    chunked: bool, rx: Rx, sandbox: Sandbox, settings: Settings, services: Services
) -> None:
    hook = webhook_bodies.item_error("item-oversized")
    hook["padding"] = "x" * settings.max_body_bytes
    body = webhook_bodies.encode(hook)
    with capture_logs() as logs:
        status, answer, _ = await rx.post(body, sandbox.state.sign(body), chunked=chunked)
    assert (status, answer["error"]) == (413, "body_too_large")
    assert rx.receiver.metrics["plaid_rejected.body_too_large"] == 1
    assert any(e["event"] == "webhook.rejected" and e["reason"] == "body_too_large" for e in logs)
    await assert_nothing_published(rx, sandbox, settings, services)


@pytest.mark.parametrize(
    "raw",
    [b'{\n  "webhook_type": "ITEM",\n  "webhook_code": ', b"[1, 2]", b'{"webhook_type": NaN}', b"[" * 5000],
    ids=["truncated", "not_an_object", "nan_constant", "deeply_nested"],
)
async def test_malformed_json_with_valid_signature_is_400_and_nothing_is_published(
    raw: bytes, rx: Rx, sandbox: Sandbox, settings: Settings, services: Services
) -> None:
    with capture_logs() as logs:
        status, answer, _ = await rx.post(raw, sandbox.state.sign(raw))
    assert (status, answer["error"]) == (400, "malformed_json")
    assert rx.receiver.metrics["plaid_rejected.malformed_json"] == 1
    assert any(e["event"] == "webhook.rejected" and e["reason"] == "malformed_json" for e in logs)
    await assert_nothing_published(rx, sandbox, settings, services)


async def test_signed_body_that_breaks_the_envelope_schema_is_400_and_nothing_is_published(
    rx: Rx, sandbox: Sandbox, settings: Settings, services: Services
) -> None:
    body = webhook_bodies.encode({"webhook_type": "ITEM", "webhook_code": "ERROR", "item_id": 42})
    status, answer, _ = await rx.post(body, sandbox.state.sign(body))
    assert (status, answer["error"]) == (400, "invalid_webhook")
    assert rx.receiver.metrics["plaid_rejected.invalid_webhook"] == 1
    await assert_nothing_published(rx, sandbox, settings, services)


# -- keys ---------------------------------------------------------------------------------------


async def test_key_expired_after_it_was_cached_is_refused_once_a_newer_key_appears(
    rx: Rx, sandbox: Sandbox, settings: Settings, services: Services
) -> None:
    old_kid = sandbox.state.current_kid
    first = item_error_body()
    assert (await rx.post(first, sandbox.state.sign(first)))[0] == 200  # the old key is now cached
    sandbox.state.rotate_key()
    second = item_error_body()
    assert (await rx.post(second, sandbox.state.sign(second)))[0] == 200  # Plaid signs with the new key
    late = item_error_body()
    status, answer, _ = await rx.post(late, sandbox.state.sign(late, kid=old_kid))
    assert (status, answer["error"]) == (401, "expired_key")
    assert len(await take_envelopes(settings, services)) == 2


async def test_burst_on_a_new_kid_fetches_the_key_once(
    rx: Rx, sandbox: Sandbox, settings: Settings, services: Services
) -> None:
    warm = item_error_body()
    assert (await rx.post(warm, sandbox.state.sign(warm)))[0] == 200
    await take_envelopes(settings, services)
    sandbox.state.rotate_key()
    sandbox.state.set_latency(KEY_PATH, 300)  # the fetch is still in flight while the burst arrives
    fetches_before = sandbox.state.calls[KEY_PATH]
    bodies = [item_error_body() for _ in range(200)]
    results = await asyncio.gather(*(rx.post(b, sandbox.state.sign(b)) for b in bodies))
    assert [status for status, _, _ in results] == [200] * 200
    assert sandbox.state.calls[KEY_PATH] - fetches_before == 1
    assert rx.receiver.keys is not None and rx.receiver.keys.stats()["coalesced"] > 0
    accepted = {answer["event_id"] for _, answer, _ in results}
    queued: set[str] = set()

    async def all_queued() -> bool:
        queued.update(json.loads(m.body)["event_id"] for m in await take_envelopes(settings, services))
        return queued == accepted

    await eventually(all_queued)


# -- health -------------------------------------------------------------------------------------


async def test_healthz_and_readyz_when_all_is_well(rx: Rx) -> None:
    assert await rx.get("/healthz") == (
        200,
        {"status": "ok", "plaid_keys": {"ok": True, "last_failure_s_ago": None}},
    )
    status, answer = await rx.get("/readyz")
    assert status == 200
    assert answer == {"status": "ready", "checks": {"broker": True}}


def key_endpoint_up() -> float | None:
    return REGISTRY.get_sample_value(
        "paw_upstream_up", {"service": "plaid", "endpoint": "/webhook_verification_key/get"}
    )


async def test_plaid_key_endpoint_down_is_reported_and_the_receiver_stays_ready(
    rx: Rx, sandbox: Sandbox, settings: Settings, services: Services
) -> None:
    """A Plaid blip must not take every replica out of rotation: they still accept Atomic webhooks,
    submissions and Plaid webhooks signed with a cached key. /healthz and the metric say it."""
    warm = item_error_body()
    assert (await rx.post(warm, sandbox.state.sign(warm)))[0] == 200  # the current kid is cached
    assert key_endpoint_up() == 1.0
    sandbox.state.rotate_key()  # the next webhook is signed with a kid the receiver must fetch
    sandbox.state.set_fault(KEY_PATH, status=500, error_code="INTERNAL_SERVER_ERROR", error_type="API_ERROR")
    body = item_error_body()
    status, answer, _ = await rx.post(body, sandbox.state.sign(body))
    assert (status, answer["error"]) == (503, "verification_key_unavailable")  # Plaid will retry it

    assert await rx.get("/readyz") == (200, {"status": "ready", "checks": {"broker": True}})
    status, health = await rx.get("/healthz")
    assert status == 200 and health["status"] == "ok"
    assert health["plaid_keys"]["ok"] is False and health["plaid_keys"]["last_failure_s_ago"] >= 0
    assert key_endpoint_up() == 0.0

    sandbox.state.clear_faults()
    status, answer, _ = await rx.post(body, sandbox.state.sign(body))  # Plaid retries the same webhook
    assert status == 200
    assert (await rx.get("/healthz"))[1]["plaid_keys"] == {"ok": True, "last_failure_s_ago": None}
    assert key_endpoint_up() == 1.0
    assert len(await take_envelopes(settings, services)) == 2


# -- broker outage ------------------------------------------------------------------------------
