"""``/sandbox/control/...``: the SandboxState controls, for a benchmark or CLI in another process.

POST ``faults`` {path, status, error_code, error_type, times?, rate?, retry_after?}; POST
``faults/clear``; POST ``latency`` {path: str|null, ms}; POST ``rotate_key`` → {kid}; GET ``stats``;
GET ``webhooks`` → {webhooks: [{id, source, url, created_at, outcome, next_attempt_at, attempts:
[{at, elapsed_s, took_s, status, error, retry_after_s}]}]} (every webhook sent, oldest first; no bodies).
These paths are never counted, delayed or faulted.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from sandbox.state import SANDBOX

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


async def rotate_key(request: web.Request) -> web.Response:
    return web.json_response({"kid": request.app[SANDBOX].rotate_key()})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[SANDBOX].stats())


async def webhooks(request: web.Request) -> web.Response:
    return web.json_response({"webhooks": [w.public() for w in request.app[SANDBOX].webhooks]})


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"{PREFIX}/faults", set_fault)
    app.router.add_post(f"{PREFIX}/faults/clear", clear_faults)
    app.router.add_post(f"{PREFIX}/latency", set_latency)
    app.router.add_post(f"{PREFIX}/rotate_key", rotate_key)
    app.router.add_get(f"{PREFIX}/stats", stats)
    app.router.add_get(f"{PREFIX}/webhooks", webhooks)
