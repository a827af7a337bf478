"""The small admin HTTP server of the worker and the receiver: ``/healthz``, ``/readyz``, ``/metrics``.

It binds to ``PAW_ADMIN_HOST`` (loopback by default; ``0.0.0.0`` in the image, so that Prometheus and
the kubelet reach it): it is for the platform (probes, Prometheus), not for the internet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from worker import metrics
from worker.http_server import start_http
from worker.services import Services

log = structlog.get_logger(__name__)

Check = Callable[[], Awaitable[bool]]
CHECKS = web.AppKey("checks", dict[str, Check])
# What /healthz reports beside "ok" (never a reason to restart: liveness stays 200).
Detail = Callable[[], object]
DETAILS = web.AppKey("details", dict[str, Detail])
# Probes and scrapes are quick: on shutdown the admin server waits this long for one in flight.
ADMIN_DRAIN_S = 2.0


async def healthz(request: web.Request) -> web.Response:
    details = {name: detail() for name, detail in request.app[DETAILS].items()}
    return web.json_response({"status": "ok", **details})


async def readyz(request: web.Request) -> web.Response:
    results: dict[str, bool] = {}
    for name, check in request.app[CHECKS].items():
        try:
            async with asyncio.timeout(2):
                results[name] = await check()
        except Exception:  # a failing check is a "no", not a crash
            results[name] = False
    ok = all(results.values())
    return web.json_response(
        {"status": "ready" if ok else "not_ready", "checks": results}, status=200 if ok else 503
    )


async def metrics_endpoint(_: web.Request) -> web.Response:
    body, content_type = metrics.render()
    return web.Response(body=body, headers={"Content-Type": content_type})


def create_admin_app(checks: dict[str, Check], details: dict[str, Detail] | None = None) -> web.Application:
    app = web.Application()
    app[CHECKS] = checks
    app[DETAILS] = details or {}
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    return app


def service_checks(svc: Services) -> dict[str, Check]:
    """Readiness of a process built on :class:`Services`: the broker and the database answer."""

    async def broker() -> bool:
        return svc.publisher.is_ready

    async def database() -> bool:
        return bool(await svc.pool.fetchval("SELECT 1"))

    return {"broker": broker, "database": database}


async def start_admin(
    checks: dict[str, Check], host: str, port: int, *, details: dict[str, Detail] | None = None
) -> web.AppRunner:
    runner, url = await start_http(
        create_admin_app(checks, details), host, port, shutdown_timeout=ADMIN_DRAIN_S
    )
    log.info("admin.started", url=url)
    return runner
