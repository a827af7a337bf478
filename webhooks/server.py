"""Runs the receiver: the app from :func:`webhooks.app.create_app` with real services behind it."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web

from webhooks.app import Receiver, create_app
from webhooks.keys import KeyCache, KeyFetchHealth, plaid_key_fetcher
from webhooks.limits import InFlight, TokenBuckets
from worker.admin import service_checks, start_admin
from worker.logs import effective_config
from worker.services import Services, open_services
from worker.settings import Settings

log = structlog.get_logger(__name__)


def receiver_for(svc: Services) -> Receiver:
    health = KeyFetchHealth()
    return Receiver(
        settings=svc.settings,
        publisher=svc.publisher,
        store=svc.store,
        keys=KeyCache(plaid_key_fetcher(svc.plaid.webhook_verification_key, health)),
        key_health=health,
        api_rate=TokenBuckets(svc.settings.api_rate_per_s, burst=max(1.0, 2 * svc.settings.api_rate_per_s)),
        in_flight=InFlight(svc.settings.max_in_flight),
    )


# HTTP/1 request line and each header at most 8 KiB, at most 100 headers: beyond, aiohttp answers 400.
HTTP_LIMITS = {"max_line_size": 8190, "max_field_size": 8190, "max_headers": 100}


async def start_receiver(svc: Services, host: str, port: int) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(
        create_app(receiver_for(svc)), access_log=None, shutdown_timeout=10, handler_args=HTTP_LIMITS
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=True)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = int(sockets[0].getsockname()[1]) if sockets else port
    return runner, f"http://{host}:{bound}"


async def serve_receiver(
    settings: Settings, host: str, port: int, stop: asyncio.Event, *, admin_port: int | None = None
) -> None:
    """Serves until ``stop``; then stops accepting and gives in-flight requests up to 10 s."""
    async with open_services(settings, "paw-receiver") as svc:
        runner, url = await start_receiver(svc, host, port)
        admin = None
        if admin_port is not None:
            admin = await start_admin(service_checks(svc), settings.admin_host, admin_port)
        log.info("receiver.started", url=url, config=effective_config(settings))
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
            if admin is not None:
                await admin.cleanup()
            log.info("receiver.stopped")
