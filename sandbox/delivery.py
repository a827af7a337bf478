"""Posting webhooks out, and the record of every delivery attempt."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import aiohttp
import structlog

log = structlog.get_logger("sandbox.delivery")

TIMEOUT_S = 10.0  # Plaid waits 10 s for a 2xx


class WebhookDelivery(NamedTuple):
    url: str
    status: int | None  # None: no HTTP answer (connection refused, timeout)
    body: bytes


class WebhookSender:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self.deliveries: list[WebhookDelivery] = []

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> WebhookDelivery:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        status: int | None = None
        try:
            async with self._session.post(url, data=body, headers=dict(headers)) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("sandbox.webhook_failed", url=url, error=repr(exc))
        delivery = WebhookDelivery(url, status, body)
        self.deliveries.append(delivery)
        return delivery

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
