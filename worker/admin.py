"""The small admin HTTP server of the worker and the receiver: ``/healthz``, ``/readyz``, ``/metrics``,
and ``/debug/tasks`` (what each asyncio task of the process waits on: :mod:`worker.taskdump`).

It binds to ``PAW_ADMIN_HOST`` (loopback by default; ``0.0.0.0`` in the image, so that Prometheus and
the kubelet reach it): it is for the platform (probes, Prometheus), not for the internet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

import structlog
from aiohttp import web

from worker import metrics, taskdump
from worker.http_server import start_http
from worker.services import Services
from worker.status import OPERATOR_ALERT_WINDOW, alert_line

log = structlog.get_logger(__name__)


Check = Callable[[], Awaitable[bool]]
CHECKS = web.AppKey("checks", dict[str, Check])
# What is wrong in the process's setup, one line each (e.g. an operator error the worker met lately).
Problems = Callable[[], Awaitable[list[str]]]
PROBLEMS: web.AppKey[Problems] = web.AppKey("problems")
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
    problems: list[str] = []
    if PROBLEMS in request.app:
        try:
            async with asyncio.timeout(2):
                problems = await request.app[PROBLEMS]()
        except Exception:
            problems = ["could not look for setup problems (database?)"]
    ok = all(results.values()) and not problems
    body: dict[str, object] = {"status": "ready" if ok else "not_ready", "checks": results}
    if problems:
        body["problems"] = problems
    return web.json_response(body, status=200 if ok else 503)


async def metrics_endpoint(_: web.Request) -> web.Response:
    body, content_type = metrics.render()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def debug_tasks(_: web.Request) -> web.Response:
    return web.Response(text=taskdump.dump(asyncio.all_tasks()))


def create_admin_app(
    checks: dict[str, Check],
    details: dict[str, Detail] | None = None,
    problems: Problems | None = None,
) -> web.Application:
    app = web.Application()
    app[CHECKS] = checks
    app[DETAILS] = details or {}
    if problems is not None:
        app[PROBLEMS] = problems
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/debug/tasks", debug_tasks)
    return app


def service_checks(svc: Services) -> dict[str, Check]:
    """Readiness of a process built on :class:`Services`: the broker and the database answer."""

    async def broker() -> bool:
        return svc.publisher.is_ready

    async def database() -> bool:
        return bool(await svc.pool.fetchval("SELECT 1"))

    return {"broker": broker, "database": database}


def operator_problems(svc: Services, within: timedelta = OPERATOR_ALERT_WINDOW) -> Problems:
    """The worker's setup problems: operator errors met within ``within`` (paw's keys, the Plaid
    Dashboard, the environment), one line each, for /readyz."""

    async def problems() -> list[str]:
        return [alert_line(a) for a in await svc.store.recent_operator_alerts(within)]

    return problems


async def start_admin(
    checks: dict[str, Check],
    host: str,
    port: int,
    *,
    details: dict[str, Detail] | None = None,
    problems: Problems | None = None,
) -> web.AppRunner:
    runner, url = await start_http(
        create_admin_app(checks, details, problems), host, port, shutdown_timeout=ADMIN_DRAIN_S
    )
    log.info("admin.started", url=url)
    return runner
