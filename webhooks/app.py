"""The HTTP side: Plaid and Atomic webhooks in, Item submissions in, Item state out.

Every route that accepts something answers 2xx only once the broker confirmed the message it made;
when the broker is away it answers 503 and publishes nothing (Plaid retries, upstream apps retry).
"""

from __future__ import annotations

import collections
import dataclasses
import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web

from webhooks.keys import KeyCache, UnknownKey
from webhooks.verification import VerificationError, unverified_kid, verify
from worker.atomic_api import SIGNATURE_HEADER, signature_valid
from worker.bus import Publisher, PublishFailed
from worker.consumer import Poison
from worker.errors import PawError
from worker.handlers import validated
from worker.pipeline import token_hash
from worker.settings import Settings
from worker.store import Store

log = structlog.get_logger(__name__)

ROUTING_PART_OK = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


@dataclasses.dataclass
class Receiver:
    settings: Settings
    publisher: Publisher
    store: Store | None
    keys: KeyCache | None
    clock: Callable[[], float] = time.time
    metrics: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)


RECEIVER = web.AppKey("receiver", Receiver)


def problem(status: int, reason: str, **extra: Any) -> web.Response:
    return web.json_response({"error": reason, **extra}, status=status)


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
    return body


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


async def publish_or_503(
    rx: Receiver, routing_key: str, payload: dict[str, Any], message_id: str
) -> web.Response | None:
    started = time.perf_counter()
    try:
        await rx.publisher.publish(routing_key, json.dumps(payload).encode(), message_id=message_id)
    except PublishFailed as e:
        rx.metrics["publish_failed"] += 1
        log.warning("publish.failed", routing_key=routing_key, reason=str(e))
        return problem(503, "broker_unavailable", detail="not queued; retry later")
    rx.metrics["published"] += 1
    rx.metrics["publish_ms_total"] += int((time.perf_counter() - started) * 1000)
    return None


async def plaid_webhook(request: web.Request) -> web.Response:
    rx = request.app[RECEIVER]
    s = rx.settings
    rx.metrics["plaid_received"] += 1
    body = await read_body(request, s.max_body_bytes)
    token = request.headers.get("Plaid-Verification")
    kid: str | None = None
    try:
        kid = unverified_kid(token)
        assert rx.keys is not None and token is not None
        try:
            key = await rx.keys.get(kid)
        except UnknownKey:
            raise VerificationError("unknown_kid") from None
        verified = verify(
            token,
            body,
            key,
            now=rx.clock(),
            max_age_s=s.webhook_max_age_s,
            future_skew_s=s.webhook_future_skew_s,
        )
    except VerificationError as e:
        rx.metrics[f"plaid_rejected.{e.reason}"] += 1
        log.warning("webhook.rejected", source="plaid", reason=e.reason, kid=kid or e.kid)
        return problem(e.status, e.reason)
    except PawError as e:  # key fetch throttled or Plaid unreachable: Plaid will retry
        rx.metrics["plaid_key_unavailable"] += 1
        log.warning("webhook.key_unavailable", kid=kid, error=type(e).__name__)
        return problem(503, "verification_key_unavailable")
    try:
        hook = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        rx.metrics["plaid_rejected.malformed_json"] += 1
        return problem(400, "malformed_json")
    if not isinstance(hook, dict):
        return problem(400, "malformed_json", detail="body is not a JSON object")
    wtype, wcode = hook.get("webhook_type"), hook.get("webhook_code")
    for field, value in (("webhook_type", wtype), ("webhook_code", wcode)):
        if not isinstance(value, str) or not value or len(value) > 64 or not set(value) <= ROUTING_PART_OK:
            rx.metrics["plaid_rejected.bad_fields"] += 1
            return problem(400, "invalid_webhook", detail=f"{field} missing or not an upper-case code")
    event_id = str(uuid.uuid4())
    envelope = {
        "event_id": event_id,
        "source": "plaid",
        "received_at": now_iso(),
        "body_sha256": verified.body_sha256,
        "sent_at": verified.iat,
        "kid": verified.kid,
        "webhook": hook,
    }
    routing_key = f"webhook.plaid.{wtype}.{wcode}"
    failed = await publish_or_503(rx, routing_key, envelope, event_id)
    if failed is not None:
        return failed
    rx.metrics["plaid_accepted"] += 1
    log.info(
        "webhook.accepted",
        source="plaid",
        routing_key=routing_key,
        event_id=event_id,
        item_id=hook.get("item_id"),
    )
    return web.json_response({"event_id": event_id})


async def atomic_webhook(request: web.Request) -> web.Response:
    rx = request.app[RECEIVER]
    body = await read_body(request, rx.settings.max_body_bytes)
    if not signature_valid(body, request.headers.get(SIGNATURE_HEADER), rx.settings.atomic_webhook_secret):
        rx.metrics["atomic_rejected.bad_signature"] += 1
        log.warning("webhook.rejected", source="atomic", reason="bad_signature")
        return problem(401, "bad_signature")
    event_id = str(uuid.uuid4())
    envelope = {
        "event_id": event_id,
        "source": "atomic",
        "received_at": now_iso(),
        "body_sha256": __import__("hashlib").sha256(body).hexdigest(),
        "webhook": None,
    }
    try:
        envelope["webhook"] = json.loads(body)
        validated("webhook.atomic", json.dumps(envelope).encode())
    except (UnicodeDecodeError, ValueError, Poison) as e:
        return problem(400, "invalid_webhook", detail=str(e)[:300])
    routing_key = f"webhook.atomic.{envelope['webhook']['status'].lower()}"
    failed = await publish_or_503(rx, routing_key, envelope, event_id)
    if failed is not None:
        return failed
    log.info("webhook.accepted", source="atomic", routing_key=routing_key, event_id=event_id)
    return web.json_response({"event_id": event_id})


def authorized(request: web.Request, api_keys: tuple[str, ...]) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return False
    ok = False
    for key in api_keys:  # compare against every key, so timing doesn't tell which one nearly matched
        ok |= hmac.compare_digest(presented.strip().encode(), key.encode())
    return ok


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error answers JSON with a reason; nothing escapes to crash the process."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as e:
        return problem(413, "body_too_large", detail=e.text or "request body too large")
    except web.HTTPException as e:
        if e.status >= 400:
            return problem(e.status, (e.reason or "error").lower().replace(" ", "_"))
        raise
    except Exception:
        log.exception("http.unhandled", path=request.path)
        return problem(500, "internal_error")


@web.middleware
async def api_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/v1/") and not authorized(request, request.app[RECEIVER].settings.api_keys):
        return problem(401, "unauthorized", detail="send Authorization: Bearer <api key>")
    return await handler(request)


async def submit_item(request: web.Request) -> web.Response:
    rx = request.app[RECEIVER]
    assert rx.store is not None
    body = await read_body(request, 16 * 1024)
    try:
        data = validated("item.link", body)
    except Poison as e:
        return problem(400, "invalid_request", detail=str(e))
    item, _ = await rx.store.create_item(
        public_token_sha256=token_hash(data["public_token"]),
        client_user_id=data["client_user_id"],
        requested_account_id=data.get("account_id"),
        request_id=data.get("request_id"),
        cause="http:POST /v1/items",
        event_id=data.get("request_id"),
    )
    failed = await publish_or_503(rx, "item.link", data, str(uuid.uuid4()))
    if failed is not None:
        return failed
    return web.json_response({"id": str(item.id), "state": item.state.value}, status=202)


async def get_item(request: web.Request) -> web.Response:
    rx = request.app[RECEIVER]
    assert rx.store is not None
    try:
        item_id = uuid.UUID(request.match_info["id"])
    except ValueError:
        return problem(404, "not_found")
    item = await rx.store.get(item_id)
    if item is None:
        return problem(404, "not_found")
    history = await rx.store.history(item_id)
    return web.json_response({**item.public(), "history": [h.public() for h in history]})


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    rx = request.app[RECEIVER]
    checks = {"broker": rx.publisher.is_ready or not rx.publisher.connection.is_closed}
    ok = all(checks.values())
    return web.json_response(
        {"status": "ready" if ok else "not_ready", "checks": checks}, status=200 if ok else 503
    )


def create_app(receiver: Receiver) -> web.Application:
    app = web.Application(client_max_size=receiver.settings.max_body_bytes, middlewares=[errors, api_auth])
    app[RECEIVER] = receiver
    app.router.add_post("/webhooks/plaid", plaid_webhook)
    app.router.add_post("/webhooks/atomic", atomic_webhook)
    app.router.add_post("/v1/items", submit_item)
    app.router.add_get("/v1/items/{id}", get_item)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
