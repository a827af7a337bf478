"""``/sandbox/control/...``: what Plaid's real Sandbox cannot do, said openly. A test or a demo in
another process drives the emulator here; a test that uses one of these goes beyond Plaid.

- POST ``faults`` {path, status, error_code, error_type, times?, rate?, retry_after?}; POST
  ``faults/clear``; POST ``latency`` {path: str|null, ms}; POST ``rotate_key`` → {kid}; GET ``stats``;
  GET ``webhooks`` → {webhooks: [{id, source, url, created_at, outcome, next_attempt_at, attempts:
  [{at, elapsed_s, took_s, status, error, retry_after_s}]}]} (every webhook sent, oldest first; no
  bodies).
- POST ``item/fire_webhook`` {item_id, webhook_type, webhook_code, account_id?, status?}: any webhook
  the emulator can build, also those ``/sandbox/item/fire_webhook`` refuses (ITEM PENDING_EXPIRATION,
  WEBHOOK_UPDATE_ACKNOWLEDGED, ITEM ERROR with ITEM_LOGIN_REQUIRED, AUTH DEFAULT_UPDATE or
  USER_ACCOUNT_REVOKED for a chosen account, AUTH SMS_MICRODEPOSITS_VERIFICATION with ``status``
  VERIFICATION_FAILED, ...), with the same side effects.
- POST ``item/set_verification_status`` {item_id, account_id?, verification_status}: the account (the
  first Auth account if none is named) gets any ``verification_status`` Plaid documents (``unsent``,
  ``database_insights_pending`` → ``_pass``, ...), silently. The real
  ``/sandbox/item/set_verification_status`` sets only ``automatically_verified`` or
  ``verification_expired`` on an automated micro-deposit account, and sends their webhook.
- POST ``item/repair_login`` {item_id, elsewhere: bool}: the user repaired the bank login, in update
  mode in your app (``elsewhere`` false: Plaid sends nothing) or elsewhere (Plaid sends ITEM
  LOGIN_REPAIRED).
- POST ``processors`` {processor, enabled: bool}: the processor integration turned off or on in the
  Dashboard; while off, ``/processor/token/create`` for it answers INVALID_INPUT / INVALID_PRODUCT.
- POST ``link/complete`` {link_token, username?, password?, institution_id?} goes beyond the real
  Sandbox, where the user's Link session runs in a browser: it plays that session to success. For a
  link token from /link/token/create without ``access_token`` it creates the Item as
  /sandbox/public_token/create would (the token's ``products`` and ``webhook``; ``username`` defaults
  to ``user_good``, ``institution_id`` to ``ins_109508``; ``password`` is not used yet) and answers
  {public_token}, to be exchanged. For an update-mode token (``access_token`` given) it repairs the
  Item's login and answers {public_token: null}: the access token does not change, there is nothing
  to exchange, and no webhook is sent (Plaid sends LOGIN_REPAIRED only for a repair made outside your
  app). An unknown or expired link token answers 400 {error, error_type: INVALID_INPUT,
  error_code: INVALID_LINK_TOKEN}, as Link would report it; other Plaid refusals (e.g.
  INVALID_CREDENTIALS) come the same way.
- POST ``public_token/create_database_insights`` {verification_status, webhook?} → {public_token}: the
  Item a Database Insights (Database Auth) session in Link would leave: one checking account, no
  institution, ``auth_method`` DATABASE_INSIGHTS, ``verification_status`` one of
  ``database_insights_pass``, ``_pass_with_caution``, ``_fail``, ``_pending``. Plaid's Sandbox makes
  such Items only through Link.
- POST ``public_token/create_same_day`` {initial_products? (only ["auth"]), webhook?} →
  {public_token}: the Item a Same-Day Micro-deposits session in Link would leave (one checking
  account ``pending_manual_verification``, no institution). Plaid's Sandbox makes such Items only
  through Link; exchange the token with ``/item/public_token/exchange`` as usual.

Items are named by their ``item_id`` here (what an app stores), not by an access token. These paths
are never counted, delayed or faulted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from sandbox.plaid_errors import PlaidAPIError
from sandbox.state import SANDBOX, SandboxState

PREFIX = "/sandbox/control"


class _BadControl(Exception):
    pass


def _bad(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        raise _BadControl("body must be JSON") from None
    if not isinstance(body, dict):
        raise _BadControl("body must be a JSON object")
    return body


def _typed(body: dict[str, Any], name: str, kinds: tuple[type, ...], *, required: bool) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise _BadControl(f"{name} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise _BadControl(f"{name} has the wrong type")
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if not isinstance(value, bool):
        raise _BadControl(f"{name} is required: true or false")
    return value


async def set_fault(request: web.Request) -> web.Response:
    try:
        body = await _body(request)
        request.app[SANDBOX].set_fault(
            _typed(body, "path", (str,), required=True),
            status=_typed(body, "status", (int,), required=True),
            error_code=_typed(body, "error_code", (str,), required=True),
            error_type=_typed(body, "error_type", (str,), required=True),
            times=_typed(body, "times", (int,), required=False),
            rate=_typed(body, "rate", (int, float), required=False),
            retry_after=_typed(body, "retry_after", (int,), required=False),
        )
    except (_BadControl, ValueError) as exc:
        return _bad(str(exc))
    return web.json_response({"ok": True})


async def clear_faults(request: web.Request) -> web.Response:
    request.app[SANDBOX].clear_faults()
    return web.json_response({"ok": True})


async def set_latency(request: web.Request) -> web.Response:
    try:
        body = await _body(request)
        request.app[SANDBOX].set_latency(
            _typed(body, "path", (str,), required=False),
            float(_typed(body, "ms", (int, float), required=True)),
        )
    except (_BadControl, ValueError) as exc:
        return _bad(str(exc))
    return web.json_response({"ok": True})


def _webhook(body: dict[str, Any]) -> str | None:
    """The optional ``webhook`` URL of a lever that makes an Item."""
    webhook = _typed(body, "webhook", (str,), required=False) or None
    if webhook is not None and urlsplit(webhook).scheme not in ("http", "https"):
        raise _BadControl("webhook must be an http or https URL")
    return webhook


async def create_same_day(request: web.Request) -> web.Response:
    try:
        body = await _body(request)
        products = _typed(body, "initial_products", (list,), required=False)
        if products is None:
            products = ["auth"]
        if not all(isinstance(p, str) for p in products):
            raise _BadControl("initial_products must be a list of strings")
        token = request.app[SANDBOX].plaid.create_same_day_public_token(products, _webhook(body))
    except _BadControl as exc:
        return _bad(str(exc))
    except PlaidAPIError as exc:
        return _bad(exc.error_message)
    return web.json_response({"public_token": token})


async def create_database_insights(request: web.Request) -> web.Response:
    try:
        body = await _body(request)
        status = _typed(body, "verification_status", (str,), required=True)
        token = request.app[SANDBOX].plaid.create_database_insights_public_token(status, _webhook(body))
    except _BadControl as exc:
        return _bad(str(exc))
    except PlaidAPIError as exc:
        return _bad(exc.error_message)
    return web.json_response({"public_token": token})


async def rotate_key(request: web.Request) -> web.Response:
    return web.json_response({"kid": request.app[SANDBOX].rotate_key()})


async def link_complete(request: web.Request) -> web.Response:
    try:
        body = await _body(request)
        public_token = request.app[SANDBOX].plaid.link_complete(
            _typed(body, "link_token", (str,), required=True),
            username=_typed(body, "username", (str,), required=False),
            password=_typed(body, "password", (str,), required=False),
            institution_id=_typed(body, "institution_id", (str,), required=False),
        )
    except _BadControl as exc:
        return _bad(str(exc))
    except PlaidAPIError as exc:
        refused = {"error": exc.error_message, "error_type": exc.error_type, "error_code": exc.error_code}
        return web.json_response(refused, status=exc.status)
    return web.json_response({"public_token": public_token})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[SANDBOX].stats())


async def _item_control(
    request: web.Request, act: Callable[[SandboxState, str, dict[str, Any]], None]
) -> web.Response:
    state = request.app[SANDBOX]
    try:
        body = await _body(request)
        access_token = state.plaid.access_token_for(_typed(body, "item_id", (str,), required=True))
        act(state, access_token, body)
    except _BadControl as exc:
        return _bad(str(exc))
    except PlaidAPIError as exc:
        return web.json_response(exc.body(""), status=exc.status)
    return web.json_response({"ok": True})


async def item_fire_webhook(request: web.Request) -> web.Response:
    def act(state: SandboxState, access_token: str, body: dict[str, Any]) -> None:
        state.plaid.emit_webhook(
            access_token,
            _typed(body, "webhook_type", (str,), required=True),
            _typed(body, "webhook_code", (str,), required=True),
            _typed(body, "account_id", (str,), required=False),
            _typed(body, "status", (str,), required=False),
        )

    return await _item_control(request, act)


async def item_set_verification_status(request: web.Request) -> web.Response:
    def act(state: SandboxState, access_token: str, body: dict[str, Any]) -> None:
        state.plaid.set_any_verification_status(
            access_token,
            _typed(body, "account_id", (str,), required=False),
            _typed(body, "verification_status", (str,), required=True),
        )

    return await _item_control(request, act)


async def item_repair_login(request: web.Request) -> web.Response:
    def act(state: SandboxState, access_token: str, body: dict[str, Any]) -> None:
        state.plaid.repair_login(access_token, elsewhere=_flag(body, "elsewhere"))

    return await _item_control(request, act)


async def set_processor(request: web.Request) -> web.Response:
    ledger = request.app[SANDBOX].plaid
    try:
        body = await _body(request)
        processor = _typed(body, "processor", (str,), required=True)
        enabled = _flag(body, "enabled")
    except _BadControl as exc:
        return _bad(str(exc))
    if enabled:
        ledger.disabled_processors.discard(processor)
    else:
        ledger.disabled_processors.add(processor)
    return web.json_response({"ok": True, "disabled": sorted(ledger.disabled_processors)})


async def webhooks(request: web.Request) -> web.Response:
    return web.json_response({"webhooks": [w.public() for w in request.app[SANDBOX].webhooks]})


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"{PREFIX}/faults", set_fault)
    app.router.add_post(f"{PREFIX}/faults/clear", clear_faults)
    app.router.add_post(f"{PREFIX}/latency", set_latency)
    app.router.add_post(f"{PREFIX}/rotate_key", rotate_key)
    app.router.add_post(f"{PREFIX}/public_token/create_same_day", create_same_day)
    app.router.add_get(f"{PREFIX}/stats", stats)
    app.router.add_post(f"{PREFIX}/item/fire_webhook", item_fire_webhook)
    app.router.add_post(f"{PREFIX}/item/repair_login", item_repair_login)
    app.router.add_post(f"{PREFIX}/item/set_verification_status", item_set_verification_status)
    app.router.add_post(f"{PREFIX}/public_token/create_database_insights", create_database_insights)
    app.router.add_post(f"{PREFIX}/processors", set_processor)
    app.router.add_post(f"{PREFIX}/link/complete", link_complete)
    app.router.add_get(f"{PREFIX}/webhooks", webhooks)
