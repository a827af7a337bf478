"""Posting webhooks out, retrying them as Plaid does, and the record of every attempt.

:class:`WebhookSender` makes one POST; :func:`deliver` makes the attempts of one webhook, asking
:mod:`sandbox.retry_schedule` how long to wait after each failure, and writes them into its
:class:`~sandbox.webhook_log.WebhookRecord`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import NamedTuple

import aiohttp
import structlog

from sandbox.retry_schedule import delivered, next_delay, parse_retry_after
from sandbox.webhook_log import CANCELLED, DELIVERED, GIVEN_UP, Attempt, WebhookRecord

log = structlog.get_logger("sandbox.delivery")

TIMEOUT_S = 10.0  # Plaid waits 10 s for a 2xx


class WebhookDelivery(NamedTuple):
    """One POST (one attempt), as sent and answered."""

    url: str
    status: int | None  # None: no HTTP answer (connection refused, timeout)
    body: bytes
    error: str | None = None
    retry_after: str | None = None  # the answer's Retry-After header, verbatim


class WebhookSender:
    def __init__(self, timeout_s: float = TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self.deliveries: list[WebhookDelivery] = []  # every attempt of every webhook, in order

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> WebhookDelivery:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        status: int | None = None
        error: str | None = None
        retry_after: str | None = None
        try:
            async with self._session.post(url, data=body, headers=dict(headers)) as response:
                await response.read()
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = repr(exc)
            log.warning("sandbox.webhook_failed", url=url, error=error)
        delivery = WebhookDelivery(url, status, body, error, retry_after)
        self.deliveries.append(delivery)
        return delivery

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def deliver(
    sender: WebhookSender,
    record: WebhookRecord,
    body: bytes,
    headers: Callable[[], Mapping[str, str]],
    *,
    clock: Callable[[], float],
    retry_scale: float | None,
) -> None:
    """Sends ``body`` to ``record.url`` until an attempt is answered 2xx or no retry is due.

    ``headers`` is called before every attempt (a Plaid retry carries a fresh signature);
    ``clock`` is the emulator's (Unix seconds, for the record); the schedule runs on the event
    loop's monotonic clock. ``retry_scale`` ``None``: a single attempt, never retried.
    Cancelling it (:meth:`SandboxState.close`) marks the webhook ``cancelled``.
    """
    loop = asyncio.get_running_loop()
    first_at = loop.time()
    try:
        while True:
            started = loop.time() if record.attempts else first_at
            sent_at = clock()
            result = await sender.post(record.url, body, headers())
            ended = loop.time()
            retry_after = parse_retry_after(result.retry_after, clock())
            elapsed, took = started - first_at, ended - started
            record.attempts.append(Attempt(sent_at, elapsed, took, result.status, result.error, retry_after))
            if delivered(result.status):
                record.outcome = DELIVERED
                return
            delay = None
            if retry_scale is not None:
                attempt = len(record.attempts)
                delay = next_delay(attempt, result.status, retry_after, first_at, ended, retry_scale)
            if delay is None:
                record.outcome = GIVEN_UP
                log.warning(
                    "sandbox.webhook_given_up",
                    webhook_id=record.id,
                    url=record.url,
                    attempts=len(record.attempts),
                )
                return
            record.next_attempt_at = clock() + delay
            log.info("sandbox.webhook_retry_scheduled", webhook_id=record.id, delay_s=delay)
            await asyncio.sleep(delay)
            record.next_attempt_at = None
    except asyncio.CancelledError:
        record.outcome = CANCELLED
        record.next_attempt_at = None
        raise
