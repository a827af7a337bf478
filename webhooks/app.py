"""The HTTP side: Plaid and Atomic webhooks in, Item submissions in, Item state out.

Every route that accepts something answers 2xx only once the broker confirmed the message it made;
when the broker is away it answers 503 and publishes nothing (Plaid retries, upstream apps retry).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hmac
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from aiohttp import web

from webhooks import listing, tallies
from webhooks.envelopes import Refused, atomic_envelope, parse_webhook_body, plaid_envelope
from webhooks.keys import KeyCache, KeyFetchHealth, KeyFetchUnavailable, UnknownKey
from webhooks.limits import InFlight, TokenBuckets
from webhooks.verification import VerificationError, unverified_kid, verify
from worker import metrics
from worker.atomic_api import SIGNATURE_HEADER, signature_valid
from worker.bus.publisher import Publisher
from worker.errors import PawError, Poison, PublishFailed, UpstreamError
from worker.items.model import Item, api_key_fingerprint, token_hash
from worker.items.sealing import Sealer, aad
from worker.items.states import LINKED, State
from worker.items.store import Store
from worker.messages import checked, parse_json, validated
from worker.plaid_api import LinkToken, PlaidClient
from worker.settings import LINK_COUNTRY_CODES, LINK_LANGUAGES, Settings

log = structlog.get_logger(__name__)


class ReceiverCounts(collections.Counter[str]):
    """Per-process counts (read by tests and logs), mirrored into the Prometheus metrics.

    Keys: ``<source>_received``, ``<source>_accepted``, ``<source>_rejected.<reason>``,
    ``<source>_key_unavailable``, ``publish_failed``.
    """

    def __setitem__(self, key: str, value: int) -> None:
        delta = value - self.get(key, 0)
        super().__setitem__(key, value)
        if delta > 0:
            _mirror(key, delta)


def _mirror(key: str, delta: int) -> None:
    source, _, what = key.partition("_")
    if what == "received":
        metrics.child(metrics.WEBHOOKS_RECEIVED, source).inc(delta)
    elif what == "accepted":
        metrics.child(metrics.WEBHOOKS_ACCEPTED, source).inc(delta)
    elif what.startswith("rejected."):
        metrics.child(metrics.WEBHOOKS_REJECTED, source, what.removeprefix("rejected.")[:64]).inc(delta)
    elif what == "key_unavailable":
        metrics.child(metrics.WEBHOOKS_REJECTED, source, "key_unavailable").inc(delta)
    elif key == "publish_failed":
        metrics.child(metrics.PUBLISH_FAILURES, "unconfirmed").inc(delta)


@dataclasses.dataclass
class Receiver:
    settings: Settings
    publisher: Publisher
    store: Store | None
    keys: KeyCache | None
    clock: Callable[[], float] = time.time
    metrics: collections.Counter[str] = dataclasses.field(default_factory=ReceiverCounts)
    key_health: KeyFetchHealth = dataclasses.field(default_factory=KeyFetchHealth)
    api_rate: TokenBuckets | None = None
    in_flight: InFlight | None = None
    plaid: PlaidClient | None = None  # update-mode link tokens
    sealer: Sealer | None = None  # opens the Item's access token for them


RECEIVER = web.AppKey("receiver", Receiver)


def problem(status: int, reason: str, **extra: Any) -> web.Response:
    return web.json_response({"error": reason, **extra}, status=status)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, or HTTPRequestEntityTooLarge as soon as it is known to exceed ``limit``.

    ``StreamReader.read(n)`` returns what has arrived so far, up to ``n``: it must be looped, or a
    body larger than one network read is silently cut short.
    """
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
    return b"".join(chunks)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def accepted(event_id: str) -> web.Response:
    """The 200 for a webhook queued and confirmed."""
    return web.Response(body=orjson.dumps({"event_id": event_id}), content_type="application/json")


async def publish_or_503(
    rx: Receiver, routing_key: str, payload: dict[str, Any], message_id: str
) -> web.Response | None:
    started = time.perf_counter()
    try:
        await rx.publisher.publish(routing_key, orjson.dumps(payload), message_id=message_id)
    except PublishFailed as e:
        rx.metrics["publish_failed"] += 1
        log.warning("publish.failed", routing_key=routing_key, reason=str(e))
        return problem(503, "broker_unavailable", detail="not queued; retry later")
    rx.metrics["published"] += 1
    metrics.PUBLISH_SECONDS.observe(time.perf_counter() - started)
    return None


def refuse_plaid(
    rx: Receiver, status: int, reason: str, kid: str | None, detail: str | None = None
) -> web.Response:
    """Counts and logs a refusal (reason and kid, never the body) and answers it."""
    rx.metrics[f"plaid_rejected.{reason}"] += 1
    log.warning("webhook.rejected", source="plaid", status=status, reason=reason, kid=kid, detail=detail)
    return problem(status, reason, **({"detail": detail} if detail else {}))


async def plaid_webhook(request: web.Request) -> web.Response:
    rx = request.app[RECEIVER]
    s = rx.settings
    rx.metrics["plaid_received"] += 1
    token = request.headers.get("Plaid-Verification")
    kid: str | None = None
    try:
        body = await read_body(request, s.max_body_bytes)
    except web.HTTPRequestEntityTooLarge:
        return refuse_plaid(rx, 413, "body_too_large", None, f"at most {s.max_body_bytes} bytes")
    try:
        kid = unverified_kid(token)
        assert token is not None
        if rx.keys is None:
            raise KeyFetchUnavailable()
        try:
            key = await rx.keys.get(kid)
        except UnknownKey:
            raise VerificationError("unknown_kid", kid=kid) from None
        verified = verify(
            token,
            body,
            key,
            now=rx.clock(),
            max_age_s=s.webhook_max_age_s,
            future_skew_s=s.webhook_future_skew_s,
        )
    except VerificationError as e:
        return refuse_plaid(rx, e.status, e.reason, kid or e.kid)
    except PawError as e:  # key fetch throttled or Plaid unreachable: Plaid will retry
        rx.metrics["plaid_key_unavailable"] += 1
        log.warning("webhook.key_unavailable", source="plaid", kid=kid, error=type(e).__name__)
        return problem(503, "verification_key_unavailable")
    event_id = str(uuid.uuid4())
    try:
        hook = parse_webhook_body(body)
        routing_key, envelope = plaid_envelope(hook, verified, event_id=event_id, received_at=now_iso())
    except Refused as e:
        return refuse_plaid(rx, e.status, e.reason, verified.kid, e.detail)
    failed = await publish_or_503(rx, routing_key, envelope, event_id)
    if failed is not None:
        return failed
    rx.metrics["plaid_accepted"] += 1
    log.info(
        "webhook.accepted",
        source="plaid",
        routing_key=routing_key,
        event_id=event_id,
        kid=verified.kid,
        plaid_item_id=hook.get("item_id"),
    )
    return accepted(event_id)


async def atomic_webhook(request: web.Request) -> web.Response:
    rx = request.app[RECEIVER]
    rx.metrics["atomic_received"] += 1
    body = await read_body(request, rx.settings.max_body_bytes)
    if not signature_valid(body, request.headers.get(SIGNATURE_HEADER), rx.settings.atomic_webhook_secret):
        rx.metrics["atomic_rejected.bad_signature"] += 1
        log.warning("webhook.rejected", source="atomic", reason="bad_signature")
        return problem(401, "bad_signature")
    event_id = str(uuid.uuid4())
    try:
        routing_key, envelope = atomic_envelope(body, event_id=event_id, received_at=now_iso())
    except Refused as e:
        rx.metrics["atomic_rejected.invalid_webhook"] += 1
        log.warning("webhook.rejected", source="atomic", reason=e.reason)
        return problem(e.status, e.reason, detail=e.detail)
    failed = await publish_or_503(rx, routing_key, envelope, event_id)
    if failed is not None:
        return failed
    rx.metrics["atomic_accepted"] += 1
    log.info("webhook.accepted", source="atomic", routing_key=routing_key, event_id=event_id)
    return accepted(event_id)


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
async def api_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts and times every upstream API request (/v1/*) by route (its pattern, never the ids in
    the path) and status, refusals by the middlewares after this one included."""
    if not request.path.startswith("/v1/"):
        return await handler(request)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        metrics.HTTP_REQUESTS.labels(route, str(status)).inc()
        metrics.HTTP_SECONDS.labels(route).observe(time.perf_counter() - started)


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
async def bounded(request: web.Request, handler: Handler) -> web.StreamResponse:
    """At most ``PAW_MAX_IN_FLIGHT`` requests at once per process; beyond that, 503 at once
    (Plaid and upstream apps retry) rather than a queue that grows until memory runs out."""
    gate = request.app[RECEIVER].in_flight
    if gate is None:
        return await handler(request)
    if not gate.enter():
        return problem(503, "overloaded", detail="too many requests in flight; retry later")
    try:
        return await handler(request)
    finally:
        gate.leave()


@web.middleware
async def api_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/v1/"):
        return await handler(request)
    rx = request.app[RECEIVER]
    if not authorized(request, rx.settings.api_keys):
        return problem(401, "unauthorized", detail="send Authorization: Bearer <api key>")
    if rx.api_rate is not None:
        wait = rx.api_rate.take(request.headers["Authorization"].partition(" ")[2].strip())
        if wait > 0:
            return web.json_response(
                {
                    "error": "rate_limited",
                    "detail": f"more than {rx.api_rate.rate:g} requests/s for this API key",
                },
                status=429,
                headers={"Retry-After": str(max(1, round(wait)))},
            )
    return await handler(request)


async def submit_item(request: web.Request) -> web.Response:
    rx = request.app[RECEIVER]
    assert rx.store is not None
    body = await read_body(request, 16 * 1024)
    try:
        data = validated("item.link", body)
    except Poison as e:
        return problem(400, "invalid_request", detail=str(e))
    item, created = await rx.store.create_item(
        public_token_sha256=token_hash(data["public_token"]),
        client_user_id=data["client_user_id"],
        requested_account_id=data.get("account_id"),
        request_id=data.get("request_id"),
        cause="http:POST /v1/items",
        event_id=data.get("request_id"),
        api_key_fingerprint=api_key_fingerprint(request.headers["Authorization"].partition(" ")[2].strip()),
    )
    if not created and item.state is not State.LINK:
        # A resubmission (an upstream app retrying after a timeout): the public token is spent and
        # the Item under way; answer with it and change nothing.
        return web.json_response({"id": str(item.id), "state": item.state.value, "duplicate": True})
    # New, or still waiting for its exchange (its first message may never have been published).
    failed = await publish_or_503(rx, "item.link", data, str(uuid.uuid4()))
    if failed is not None:
        return failed
    return web.json_response({"id": str(item.id), "state": item.state.value}, status=202)


async def _lookup(request: web.Request) -> Item | web.Response:
    """The Item the path's ``{id}`` names, or the 404 to answer."""
    rx = request.app[RECEIVER]
    assert rx.store is not None
    try:
        item_id = uuid.UUID(request.match_info["id"])
    except ValueError:
        return problem(404, "not_found")
    item = await rx.store.get(item_id)
    return problem(404, "not_found") if item is None else item


async def get_item(request: web.Request) -> web.Response:
    item = await _lookup(request)
    if isinstance(item, web.Response):
        return item
    store = request.app[RECEIVER].store
    assert store is not None
    history = await store.history(item.id)
    return web.json_response({**item.public(), "history": [h.public() for h in history]})


async def list_items(request: web.Request) -> web.Response:
    """One page of Items (``webhooks/listing.py`` says which, in what order, and why), each as
    ``GET /v1/items/{id}`` shows it without its history; never a token."""
    rx = request.app[RECEIVER]
    assert rx.store is not None
    repeated = {k for k in request.query if len(request.query.getall(k)) > 1}
    try:
        q = listing.parse_query(request.query, repeated)
    except listing.BadQuery as e:
        return problem(400, "invalid_query", detail=str(e))
    found = await rx.store.page(
        client_user_id=q.client_user_id,
        after=q.after,
        states=[s.value for s in q.states] if q.states is not None else None,
        limit=q.limit + 1,  # one more says whether another page follows
    )
    page = found[: q.limit]
    last = page[-1] if page else None
    cursor = listing.encode_cursor(last.updated_at, last.id) if last else request.query.get("cursor")
    return web.json_response(
        {"items": [i.public() for i in page], "next_cursor": cursor, "has_more": len(found) > q.limit}
    )


# Where Link update mode can repair the Item: it has a live access token.
REPAIRABLE = LINKED | {State.LOGIN_REQUIRED}
NEW_ITEM_PRODUCTS = ("auth",)  # paw funds accounts: Auth is what /processor/token/create needs
LINK_TOKEN_OPTIONS = {"client_name", "language", "country_codes", "redirect_uri"}


async def _item_for(request: web.Request) -> Item | web.Response:
    """The Item to repair, or the 404/409 to answer."""
    item = await _lookup(request)
    if isinstance(item, web.Response):
        return item
    if item.state not in REPAIRABLE or item.access_token is None:
        return problem(
            409, "not_repairable", detail=f"the Item is {item.state.value}: it has no bank link to repair"
        )
    return item


def link_token_options(body: bytes, settings: Settings, *, new_item: bool = False) -> dict[str, Any]:
    """What the link token is made with: the request body's ``client_name``, ``language``,
    ``country_codes`` and ``redirect_uri`` over the settings' (``PAW_LINK_*``); for a new Item also
    its ``client_user_id`` (required). :class:`Poison` names what is wrong."""
    data = parse_json(body) if body.strip() else {}
    allowed = LINK_TOKEN_OPTIONS | ({"client_user_id"} if new_item else set())
    if not isinstance(data, dict) or set(data) - allowed:
        raise Poison(f"the body may only hold {', '.join(sorted(allowed))}")
    if new_item:
        user = data.get("client_user_id")
        if not (isinstance(user, str) and 0 < len(user) <= 128):
            raise Poison("client_user_id must be a string of 1 to 128 characters (your id for the user)")
    for name in ("client_name", "language", "redirect_uri"):
        if name in data and not (isinstance(data[name], str) and 0 < len(data[name]) <= 200):
            raise Poison(f"{name} must be a non-empty string")
    if data.get("language", settings.link_language) not in LINK_LANGUAGES:
        raise Poison(f"language must be one of {', '.join(LINK_LANGUAGES)}")
    codes = data.get("country_codes", list(settings.link_country_codes))
    if not (isinstance(codes, list) and codes and all(c in LINK_COUNTRY_CODES for c in codes)):
        raise Poison(f"country_codes must be a non-empty list of {', '.join(LINK_COUNTRY_CODES)}")
    return {
        "client_name": settings.link_client_name,
        "language": settings.link_language,
        "redirect_uri": None,
        **data,
        "country_codes": codes,
    }


def public_webhook(rx: Receiver) -> str | web.Response | None:
    """The webhook URL every link token carries (``PAW_PUBLIC_WEBHOOK_URL``); a 503 against Plaid
    itself when it is unset (Plaid would send the Item's webhooks nowhere); ``None`` in the emulator."""
    webhook = rx.settings.public_webhook_url
    if not webhook and not rx.settings.plaid_base_url:
        return problem(
            503,
            "not_configured",
            detail="PAW_PUBLIC_WEBHOOK_URL must be set to make link tokens for Plaid itself",
        )
    return webhook or None


def link_token_answer(token: LinkToken) -> web.Response:
    return web.json_response(
        {"link_token": token.link_token, "expiration": token.expiration, "request_id": token.request_id}
    )


async def create_new_link_token(request: web.Request) -> web.Response:
    """A Link token for a new Item (Plaid /link/token/create with ``products: ["auth"]``) whose
    ``webhook`` is paw's receiver: the upstream app opens Link with it and hands the public token
    from ``onSuccess`` to ``POST /v1/items``."""
    rx = request.app[RECEIVER]
    body = await read_body(request, 16 * 1024)
    try:
        options = link_token_options(body, rx.settings, new_item=True)
    except Poison as e:
        return problem(400, "invalid_request", detail=str(e))
    webhook = public_webhook(rx)
    if isinstance(webhook, web.Response):
        return webhook
    assert rx.plaid is not None
    try:
        token = await rx.plaid.link_token(**options, webhook=webhook, products=list(NEW_ITEM_PRODUCTS))
    except UpstreamError as e:
        return plaid_refused(e)
    log.info("link_token.created", mode="new_item", request_id=token.request_id)
    return link_token_answer(token)


async def create_link_token(request: web.Request) -> web.Response:
    """A Link token in update mode for the Item (Plaid /link/token/create with its access token, no
    products): the upstream app opens Link with it so its user can repair the login."""
    rx = request.app[RECEIVER]
    body = await read_body(request, 16 * 1024)
    found = await _item_for(request)
    if isinstance(found, web.Response):
        return found
    item = found
    try:
        options = link_token_options(body, rx.settings)
    except Poison as e:
        return problem(400, "invalid_request", detail=str(e))
    webhook = public_webhook(rx)
    if isinstance(webhook, web.Response):
        return webhook
    assert rx.plaid is not None and rx.sealer is not None and item.access_token is not None
    try:
        token = await rx.plaid.link_token(
            **options,
            client_user_id=item.client_user_id,
            webhook=webhook,
            access_token=rx.sealer.open(item.access_token, aad=aad(item.id, "access_token")),
        )
    except UpstreamError as e:
        return plaid_refused(e)
    log.info("item.link_token_created", item_id=str(item.id), request_id=token.request_id)
    return link_token_answer(token)


def plaid_refused(e: UpstreamError) -> web.Response:
    """Plaid's error, as the caller may act on it: its ``error_code`` and ``request_id``. 503 when it
    is worth retrying (Plaid down, rate limited), else 502: paw's call was refused."""
    retry = e.status is None or e.status == 429 or e.status >= 500
    body = {
        "error": "plaid_unavailable" if retry else "plaid_error",
        "detail": str(e)[:300],
        "error_code": e.error_code,
        "request_id": e.request_id,
    }
    headers = {"Retry-After": str(max(1, round(e.retry_after)))} if retry and e.retry_after else None
    return web.json_response(body, status=503 if retry else 502, headers=headers)


async def report_repaired(request: web.Request) -> web.Response:
    """The user finished Link update mode (Link's onSuccess). Plaid sends no webhook for it: paw is
    told here, publishes ``item.repaired``, and the worker confirms with Plaid and resumes the Item."""
    rx = request.app[RECEIVER]
    body = await read_body(request, 16 * 1024)
    found = await _item_for(request)
    if isinstance(found, web.Response):
        return found
    item = found
    try:
        extra = parse_json(body) if body.strip() else {}
        if not isinstance(extra, dict) or set(extra) - {"request_id"}:
            raise Poison("the body may only hold request_id")
        message = checked("item.repaired", {"item_id": str(item.id), **extra})
    except Poison as e:
        return problem(400, "invalid_request", detail=str(e))
    failed = await publish_or_503(rx, "item.repaired", message, str(uuid.uuid4()))
    if failed is not None:
        return failed
    return web.json_response({"id": str(item.id), "state": item.state.value}, status=202)


def plaid_keys_health(rx: Receiver) -> dict[str, Any]:
    """Whether Plaid's webhook key endpoint answers (``/healthz`` detail; ``paw_upstream_up``)."""
    detail = rx.key_health.detail()
    if rx.keys is None:
        detail["ok"] = False
    return detail


async def healthz(request: web.Request) -> web.Response:
    """Alive; and, as detail, Plaid's key endpoint (the process stays alive and ready without it)."""
    return web.json_response({"status": "ok", "plaid_keys": plaid_keys_health(request.app[RECEIVER])})


async def readyz(request: web.Request) -> web.Response:
    """503 while the broker connection or channel is down: then every accepting route answers 503.

    Plaid's key endpoint is not a check: when it fails, every replica would go unready at once, and
    Atomic webhooks, submissions and Plaid webhooks with a cached key would be refused with them.
    ``/healthz`` and ``paw_upstream_up`` report it instead."""
    rx = request.app[RECEIVER]
    checks = {"broker": rx.publisher.is_ready}
    ok = all(checks.values())
    return web.json_response(
        {"status": "ready" if ok else "not_ready", "checks": checks}, status=200 if ok else 503
    )


async def _reporting(app: web.Application) -> AsyncIterator[None]:
    """Reports the counts to Postgres while the app runs (webhooks/tallies.py), and once at the end."""
    rx = app[RECEIVER]
    assert rx.store is not None
    stop = asyncio.Event()
    task = asyncio.create_task(tallies.report_every(rx.store, rx.metrics, stop))
    yield
    stop.set()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 10)


def create_app(receiver: Receiver) -> web.Application:
    app = web.Application(
        client_max_size=receiver.settings.max_body_bytes, middlewares=[api_metrics, errors, bounded, api_auth]
    )
    app[RECEIVER] = receiver
    if receiver.store is not None:
        app.cleanup_ctx.append(_reporting)
    app.router.add_post("/webhooks/plaid", plaid_webhook)
    app.router.add_post("/webhooks/atomic", atomic_webhook)
    app.router.add_post("/v1/items", submit_item)
    app.router.add_get("/v1/items", list_items)
    app.router.add_get("/v1/items/{id}", get_item)
    app.router.add_post("/v1/link_tokens", create_new_link_token)
    app.router.add_post("/v1/items/{id}/link_token", create_link_token)
    app.router.add_post("/v1/items/{id}/repaired", report_repaired)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
