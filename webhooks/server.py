"""Runs the receiver: the app from :func:`webhooks.app.create_app` with real services behind it."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web

from webhooks.app import RECEIVER, Receiver, create_app, plaid_keys_health
from webhooks.keys import KEY_ENDPOINT, KeyCache, KeyFetchHealth, plaid_key_fetcher
from webhooks.limits import InFlight, TokenBuckets
from worker import metrics, version
from worker.admin import service_checks, start_admin
from worker.http_server import start_http
from worker.logs import effective_config
from worker.services import Services, open_services
from worker.settings import Settings

log = structlog.get_logger(__name__)


def receiver_for(svc: Services) -> Receiver:
    health = KeyFetchHealth()
    metrics.UPSTREAM_UP.labels("plaid", KEY_ENDPOINT).set_function(lambda: 1.0 if health.ok else 0.0)
    return Receiver(
        settings=svc.settings,
        publisher=svc.publisher,
        store=svc.store,
        keys=KeyCache(plaid_key_fetcher(svc.plaid.webhook_verification_key, health)),
        key_health=health,
        api_rate=TokenBuckets(svc.settings.api_rate_per_s, burst=max(1.0, 2 * svc.settings.api_rate_per_s)),
        in_flight=InFlight(svc.settings.max_in_flight),
        plaid=svc.plaid,
        sealer=svc.sealer,
    )


# On SIGTERM the receiver stops accepting and gives requests in flight this long (docker-compose.yml's
# stop_grace_period must exceed it).
DRAIN_S = 10.0


async def start_receiver(svc: Services, host: str, port: int) -> tuple[web.AppRunner, str]:
    """The receiver's HTTP server, with paw's request limits (:mod:`worker.http_server`)."""
    return await start_http(
        create_app(receiver_for(svc)), host, port, shutdown_timeout=DRAIN_S, reuse_port=True
    )


async def serve_receiver(
    settings: Settings, host: str, port: int, stop: asyncio.Event, *, admin_port: int | None = None
) -> None:
    """Serves until ``stop``; then stops accepting and gives in-flight requests up to ``DRAIN_S``."""
    async with open_services(settings, "paw-receiver") as svc:
        runner, url = await start_receiver(svc, host, port)
        rx = runner.app[RECEIVER]
        admin = None
        if admin_port is not None:
            admin = await start_admin(
                service_checks(svc),
                settings.admin_host,
                admin_port,
                details={"plaid_keys": lambda: plaid_keys_health(rx)},
            )
        metrics.BUILD_INFO.labels(version(), settings.plaid_env, "receiver").set(1)
        log.info("receiver.started", url=url, config=effective_config(settings))
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
            if admin is not None:
                await admin.cleanup()
            log.info("receiver.stopped")
