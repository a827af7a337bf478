"""HTTP face of the emulated Atomic (our contract; Atomic's real API is private)."""

from __future__ import annotations

import hmac
import json
from typing import Any

from aiohttp import web

from sandbox.atomic_ledger import DECISIONS, REMOVED, FundingSource, IdempotencyKeyReused, Submission
from sandbox.plaid_errors import PlaidAPIError
from sandbox.state import SANDBOX, SandboxState

PREFIX = "/atomic"
SUBMISSION_FIELDS = ("processor_token", "account_ref", "customer_ref")
MAX_IDEMPOTENCY_KEY = 255


def _error(status: int, code: str, detail: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": code}
    if detail is not None:
        body["detail"] = detail
    return web.json_response(body, status=status)


def _authorized(state: SandboxState, request: web.Request) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), state.config.atomic_api_key.encode()
    )


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    try:
        body = json.loads(await request.read())
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _authorized_source(request: web.Request) -> tuple[SandboxState, FundingSource] | web.Response:
    """The state and the funding source named in the path, or the 401/404 to answer."""
    state = request.app[SANDBOX]
    if not _authorized(state, request):
        return _error(401, "unauthorized")
    source = state.atomic.sources.get(request.match_info["id"])
    if source is None:
        return _error(404, "not_found")
    return state, source


async def create_funding_source(request: web.Request) -> web.Response:
    state = request.app[SANDBOX]
    if not _authorized(state, request):
        return _error(401, "unauthorized")
    body = await _json_object(request)
    if body is None:
        return _error(400, "invalid_request", "body must be a JSON object")
    bad = [f for f in SUBMISSION_FIELDS if not isinstance(body.get(f), str) or not body[f]]
    if bad:
        return _error(400, "invalid_request", f"missing or invalid fields: {', '.join(bad)}")
    key = request.headers.get("Idempotency-Key", "").strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY:
        return _error(400, "missing_idempotency_key", "an Idempotency-Key header (1-255 chars) is required")
    submission = Submission(body["processor_token"], body["account_ref"], body["customer_ref"])
    try:
        response, created = state.atomic_submit(key, submission)
    except IdempotencyKeyReused:
        return _error(409, "idempotency_key_reused")
    return web.json_response(response, status=201 if created else 200)


async def get_funding_source(request: web.Request) -> web.Response:
    found = _authorized_source(request)
    if isinstance(found, web.Response):
        return found
    _state, source = found
    return web.json_response(source.to_json())


async def delete_funding_source(request: web.Request) -> web.Response:
    found = _authorized_source(request)
    if isinstance(found, web.Response):
        return found
    _state, source = found
    source.status = REMOVED
    return web.json_response({"id": source.id, "status": REMOVED})


async def refresh_funding_source(request: web.Request) -> web.Response:
    """The bank changed the account's numbers: Atomic re-pulls them with /processor/auth/get."""
    found = _authorized_source(request)
    if isinstance(found, web.Response):
        return found
    state, source = found
    if source.status == REMOVED:
        return _error(409, "funding_source_removed")
    try:
        auth = state.plaid.processor_auth_get(source.processor_token)
    except PlaidAPIError:
        return _error(422, "processor_token_invalid")
    source.refreshes += 1
    source.account_number = str(auth["numbers"]["ach"]["account"])
    return web.json_response(source.to_json())


async def decide_funding_source(request: web.Request) -> web.Response:
    """Sandbox trigger: force a decision now and send its webhook."""
    found = _authorized_source(request)
    if isinstance(found, web.Response):
        return found
    state, source = found
    body = await _json_object(request)
    status = body.get("status") if body else None
    reason = body.get("reason") if body else None
    if status not in DECISIONS or not (reason is None or isinstance(reason, str)):
        return _error(400, "invalid_request", "status must be VERIFIED or REJECTED; reason a string or null")
    if source.status == REMOVED:
        return _error(409, "funding_source_removed")
    state.atomic_decide(source, str(status), reason)
    return web.json_response(source.to_json())


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"{PREFIX}/v1/funding_sources", create_funding_source)
    app.router.add_get(f"{PREFIX}/v1/funding_sources/{{id}}", get_funding_source)
    app.router.add_delete(f"{PREFIX}/v1/funding_sources/{{id}}", delete_funding_source)
    app.router.add_post(f"{PREFIX}/v1/funding_sources/{{id}}/refresh", refresh_funding_source)
    app.router.add_post(f"{PREFIX}/sandbox/funding_sources/{{id}}/decide", decide_funding_source)
