"""Ack, retry or dead-letter: the one place that decides what happens to a delivered message.

Handlers raise; this wrapper maps what they raise:

- nothing → ack (after the handler committed to Postgres);
- :class:`Poison` (unparseable, schema-invalid) → dead-letter at once;
- anything else (transient upstream errors, a busy Item, bugs) → a delay queue with backoff until the
  budget is spent, then dead-letter.

A message is acked from its work queue only after its copy on the retry or dead-letter queue was
confirmed; if that publish fails the message is nacked back onto its queue, so nothing disappears.
"""

from __future__ import annotations

import asyncio
import random
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from aio_pika.abc import AbstractIncomingMessage

from worker import metrics
from worker.bus import dead_index
from worker.bus.dlq import DeadLetter
from worker.bus.publisher import Publisher
from worker.bus.retry import retry_decision
from worker.bus.topology import Topology
from worker.errors import Deferred, PawError, Poison, PublishFailed, ResultParked, UpstreamError
from worker.items.rules import Kind, classify
from worker.messages import (
    H_ATTEMPTS,
    H_DEFERRALS,
    H_ERROR_CLASS,
    H_ERROR_CODE,
    H_ERROR_MESSAGE,
    H_FIRST_FAILURE,
    H_LAST_FAILURE,
    H_QUEUE,
    H_REQUEST_ID,
    H_ROUTING_KEY,
)
from worker.redact import redact_text

log = structlog.get_logger(__name__)

# A message deferred this often (Item busy, event ahead of its Item) is dead-lettered after all.
MAX_DEFERRALS = 100
# How long indexing a dead letter may hold the ack of its original.
INDEX_TIMEOUT_S = 5.0


Handler = Callable[[str, bytes, str | None], Awaitable[None]]


def reason_of(error: Exception) -> str:
    """A bounded label for an error: Plaid's error_code where there is one (``operator:<code>`` for
    an error in paw's own setup), else the class name."""
    if isinstance(error, UpstreamError) and error.error_code:
        code = error.error_code[:64]
        return f"operator:{code}" if classify(error) is Kind.OPERATOR else code
    return type(error).__name__[:64]


def original_routing_key(message: AbstractIncomingMessage) -> str:
    headers = message.headers or {}
    rk = headers.get(H_ROUTING_KEY)
    if isinstance(rk, bytes):
        rk = rk.decode()
    return rk if isinstance(rk, str) and rk else (message.routing_key or "")


def _int_header(message: AbstractIncomingMessage, name: str) -> int:
    value = (message.headers or {}).get(name)
    return value if isinstance(value, int) and value >= 0 else 0


class Consumer:
    def __init__(
        self,
        *,
        publisher: Publisher,
        topo: Topology,
        handler: Handler,
        queue: str,
        retry_budget: int,
        index: asyncpg.Pool | None = None,
    ) -> None:
        self.publisher = publisher
        self.index = index  # where dead letters are indexed (worker/bus/dead_index.py)
        self.topo = topo
        self.handler = handler
        self.queue = queue
        self.retry_budget = retry_budget
        self.in_flight = 0
        self.tasks: set[asyncio.Task[Any]] = set()
        self.idle = asyncio.Event()
        self.idle.set()
        self.counts: dict[str, int] = {"acked": 0, "retried": 0, "dead_lettered": 0, "requeued": 0}

    async def __call__(self, message: AbstractIncomingMessage) -> None:
        self.in_flight += 1
        self.idle.clear()
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        try:
            await self._process(message)
        finally:
            if task is not None:
                self.tasks.discard(task)
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()

    async def _process(self, message: AbstractIncomingMessage) -> None:
        rk = original_routing_key(message)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(routing_key=rk, message_id=message.message_id)
        started = time.perf_counter()
        try:
            try:
                await self.handler(rk, message.body, message.message_id)
            finally:
                metrics.child(metrics.PROCESSING_SECONDS, metrics.kind_of(rk)).observe(
                    time.perf_counter() - started
                )
        except ResultParked:  # done: what it did waits on the parked queue for the database
            await message.ack()
            self.counts["acked"] += 1
            metrics.child(metrics.EVENTS_PROCESSED, metrics.kind_of(rk), "parked").inc()
        except Poison as e:
            await self._settle(message, rk, e, retry=False)
        except Exception as e:
            # permanent: retrying changes nothing; operator: paw's setup is wrong, so the message waits
            # in the dead-letter queue for `paw dlq replay` once it is fixed (its Item stays as it is)
            kind = classify(e) if isinstance(e, UpstreamError) else Kind.TRANSIENT
            await self._settle(message, rk, e, retry=kind is Kind.TRANSIENT)
        else:
            await message.ack()
            self.counts["acked"] += 1
            metrics.child(metrics.EVENTS_PROCESSED, metrics.kind_of(rk), "acked").inc()

    async def _settle(
        self, message: AbstractIncomingMessage, rk: str, error: Exception, *, retry: bool
    ) -> None:
        deferred = isinstance(error, Deferred)
        # A deferral (too early, Item busy) is not a failure: it has its own, larger budget.
        attempts = _int_header(message, H_ATTEMPTS) + (0 if deferred else 1)
        deferrals = _int_header(message, H_DEFERRALS) + (1 if deferred else 0)
        now = datetime.now(UTC).isoformat()
        headers: dict[str, Any] = {
            **(message.headers or {}),
            H_ROUTING_KEY: rk,
            H_ATTEMPTS: attempts,
            H_DEFERRALS: deferrals,
            H_FIRST_FAILURE: (message.headers or {}).get(H_FIRST_FAILURE) or now,
            H_LAST_FAILURE: now,
            H_ERROR_CLASS: type(error).__name__,
            H_ERROR_MESSAGE: redact_text(str(error))[:1000],
            H_QUEUE: self.queue,
        }
        if isinstance(error, UpstreamError):
            headers[H_ERROR_CODE] = error.error_code or ""
            headers[H_REQUEST_ID] = error.request_id or ""
        else:  # the copy describes its last failure, not an upstream error from an earlier hop
            headers.pop(H_ERROR_CODE, None)
            headers.pop(H_REQUEST_ID, None)
        decision = None
        if retry:
            decision = retry_decision(
                attempt=deferrals if deferred else attempts,
                budget=MAX_DEFERRALS if deferred else self.retry_budget,
                tiers_ms=self.topo.retry_delays_ms,
                retry_after_s=error.retry_after if isinstance(error, UpstreamError) else None,
                jitter=random.random(),
            )
        try:
            if decision is not None:
                await self.publisher.publish(
                    self.topo.retry_queue(self.queue, decision.tier_ms),
                    message.body,
                    headers=headers,
                    message_id=message.message_id,
                    expiration_ms=decision.expiration_ms,
                    to_queue=True,
                )
                self.counts["retried"] += 1
                metrics.RETRIES.labels(self.queue, reason_of(error)).inc()
                metrics.EVENTS_PROCESSED.labels(metrics.kind_of(rk), "retried").inc()
                log.info(
                    "message.retry",
                    attempt=attempts,
                    delay_ms=decision.expiration_ms,
                    error_class=headers[H_ERROR_CLASS],
                    error=headers[H_ERROR_MESSAGE],
                    error_code=headers.get(H_ERROR_CODE),
                )
            else:
                await self.publisher.publish(
                    self.topo.dead_queue,
                    message.body,
                    headers=headers,
                    message_id=message.message_id,
                    to_queue=True,
                )
                await self._index(DeadLetter.parse(message.body, headers, message.message_id), error)
                self.counts["dead_lettered"] += 1
                metrics.DEAD_LETTERS.labels(self.queue, reason_of(error)).inc()
                if isinstance(error, UpstreamError) and classify(error) is Kind.OPERATOR:
                    metrics.OPERATOR_ERRORS.labels(error.error_code or "").inc()
                metrics.EVENTS_PROCESSED.labels(metrics.kind_of(rk), "dead_lettered").inc()
                log.warning(
                    "message.dead_lettered",
                    attempts=attempts,
                    error_class=headers[H_ERROR_CLASS],
                    error=headers[H_ERROR_MESSAGE],
                    error_code=headers.get(H_ERROR_CODE),
                    exc_info=not isinstance(error, PawError),
                )
        except PublishFailed as e:
            log.error("message.requeued", reason=str(e))
            self.counts["requeued"] += 1
            await message.nack(requeue=True)
            return
        await message.ack()

    async def _index(self, letter: DeadLetter, error: Exception) -> None:
        """Indexes a dead letter whose copy the broker confirmed. A database that refuses does not
        stop the ack: the copy is safe on the dead queue and ``paw dlq reindex`` adds its row."""
        if self.index is None:
            return
        trace = "".join(traceback.format_exception(error))
        try:
            async with asyncio.timeout(INDEX_TIMEOUT_S):
                await dead_index.record(self.index, letter, traceback=trace)
        except Exception as e:  # the dead letter is safe; this is only the index beside it
            metrics.DEAD_LETTERS_UNINDEXED.inc()
            log.error(
                "message.dead_letter_unindexed",
                dlq_id=letter.short_id,
                error_class=type(e).__name__,
                error=redact_text(str(e))[:300],
                detail="the dead letter is on the dead queue; `paw dlq reindex` indexes it",
            )
