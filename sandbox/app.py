"""The emulator's aiohttp app: Plaid's endpoints, Atomic's under ``/atomic``, controls under
``/sandbox/control``; plus :func:`serve` and :func:`run_forever` to run it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from sandbox import atomic_routes, control_routes, plaid_routes
from sandbox.config import SandboxConfig
from sandbox.faults import Fault
from sandbox.plaid_errors import error_object
from sandbox.state import SANDBOX, SandboxState

__all__ = ["SANDBOX", "SandboxConfig", "SandboxState", "create_app", "run_forever", "serve", "serve_app"]

log = structlog.get_logger("sandbox")


def _fault_response(state: SandboxState, path: str, fault: Fault) -> web.Response:
    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
    if path.startswith(atomic_routes.PREFIX + "/"):
        return web.json_response({"error": fault.error_code}, status=fault.status, headers=headers)
    body = error_object(
        error_type=fault.error_type,
        error_code=fault.error_code,
        error_message=f"sandbox fault injected for {path}",
        request_id=plaid_routes.new_request_id(state),
    )
    return web.json_response(body, status=fault.status, headers=headers)


def _not_found(request: web.Request) -> web.Response:
    """Plaid answers an unknown path with its JSON error, not a text page."""
    body = error_object(
        error_type="INVALID_REQUEST",
        error_code="NOT_FOUND",
        error_message="not found",
        request_id=plaid_routes.new_request_id(request.app[SANDBOX]),
    )
    return web.json_response(body, status=404)


@web.middleware
async def emulation(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts the call, waits the configured latency and serves any injected fault."""
    resource = request.match_info.route.resource
    if resource is None and not request.path.startswith((atomic_routes.PREFIX + "/", control_routes.PREFIX)):
        return _not_found(request)
    path = resource.canonical if resource is not None else request.path
    if path.startswith(control_routes.PREFIX + "/"):
        return await handler(request)
    state = request.app[SANDBOX]
    state.calls[path] += 1
    # Read the whole request first, as a real server has it before it works: a client that dies
    # during the latency still made the call.
    await request.read()
    delay = state.latency.seconds(path)
    if delay > 0:
        await asyncio.sleep(delay)
    fault = state.faults.draw(path)
    if fault is None and path != request.path:
        fault = state.faults.draw(request.path)
    if fault is not None:
        await request.read()
        return _fault_response(state, path, fault)
    return await handler(request)


async def _state_lifetime(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[SANDBOX].close()


def create_app(config: SandboxConfig) -> web.Application:
    app = web.Application(middlewares=[emulation])
    app[SANDBOX] = SandboxState(config)
    plaid_routes.add_routes(app)
    atomic_routes.add_routes(app)
    control_routes.add_routes(app)
    app.cleanup_ctx.append(_state_lifetime)
    return app


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):  # noqa: S104 - naming the wildcard, not binding it
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


async def serve_app(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Starts any aiohttp app; ``port`` 0 picks a free port. Returns (runner, base URL)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    return runner, f"http://{_url_host(host)}:{bound_port}"


async def serve(config: SandboxConfig, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Starts the emulator; ``port`` 0 picks a free port. Call ``runner.cleanup()`` to stop it."""
    return await serve_app(create_app(config), host, port)


async def run_forever(config: SandboxConfig, host: str, port: int) -> None:
    """Serves until cancelled (the ``paw sandbox`` command)."""
    runner, base_url = await serve(config, host, port)
    log.info("sandbox.started", base_url=base_url)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        log.info("sandbox.stopped", base_url=base_url)
