"""The outcome-event relay: publishes the outbox (rows written with each Item transition, see
``schemas/migrations/0010_outbox.sql``) to the events exchange, and marks them sent.

At least once, never lost, in order per Item:

- a row is marked sent only after the broker confirmed it; a batch that did not get every confirm
  marks only the confirmed rows (a broker outage, a SIGKILL between confirm and mark: the rest are
  published again later, with the same ``event_id`` as ``message_id``);
- one relay publishes at a time across every worker process (a transaction-scoped advisory lock per
  batch), and within a batch each Item's events go out one after the other, each waiting for the
  previous one's confirm; an Item whose event was not confirmed has its later events held back
  until the next batch. An Item's events thus reach a queue in sequence order (a duplicate, at worst,
  repeats the one before it).

The worker that wrote an event wakes its own relay (:meth:`Relay.wake`); events written by other
processes (the receiver's ``POST /v1/items``) are found by polling every ``poll_s``.
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import structlog

from worker import metrics
from worker.bus.publisher import Publisher
from worker.errors import PublishFailed, Unroutable
from worker.sql import query

log = structlog.get_logger(__name__)

LOCK_ID = 0x7061_775F_6F75_74  # "paw_out"


class Relay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        publisher: Publisher,
        *,
        batch: int = 500,
        poll_s: float = 0.25,
        gather_s: float = 0.005,
        retention_s: float = 3600.0,
    ) -> None:
        self.pool = pool
        self.publisher = publisher
        self.batch = batch
        self.poll_s = poll_s
        self.gather_s = gather_s
        self.retention_s = retention_s
        self.published = 0  # events confirmed by this relay (the worker logs it at exit)
        self._wake = asyncio.Event()
        # (monotonic time, highest id marked sent then): what may be pruned once retention passed
        self._sent_marks: collections.deque[tuple[float, int]] = collections.deque()

    def wake(self) -> None:
        """An event was written (maybe not committed yet): look soon."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Relays until ``stop``; a database or broker failure is logged and retried with backoff."""
        backoff = 0.0
        while not stop.is_set():
            self._wake.clear()  # a wake from here on means: look again
            try:
                full = await self.relay_once() >= self.batch
                backoff = 0.0
            except (PublishFailed, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                log.warning("outbox.relay_failed", error=type(e).__name__, detail=str(e)[:200])
                metrics.OUTBOX_FAILURES.inc()
                backoff = min(max(backoff * 2, 0.1), 5.0)
                full = False
            except Exception:
                log.exception("outbox.relay_failed")
                metrics.OUTBOX_FAILURES.inc()
                backoff = min(max(backoff * 2, 0.1), 5.0)
                full = False
            if full:
                continue  # more are waiting
            await self._idle(stop, backoff or self.poll_s, wakeable=not backoff)

    async def _idle(self, stop: asyncio.Event, timeout: float, *, wakeable: bool) -> None:
        """Waits ``timeout``, or until ``stop``, or (``wakeable``: not backing off) a :meth:`wake`
        (one since the last batch started counts)."""
        waits = [asyncio.ensure_future(stop.wait())]
        if wakeable:
            waits.append(asyncio.ensure_future(self._wake.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if self._wake.is_set() and not stop.is_set():
            await asyncio.sleep(self.gather_s)  # let the writer commit, and others join the batch

    async def relay_once(self) -> int:
        """One batch: the events published and marked sent (0: none waiting, or another relay
        holds the lock). Raises :class:`PublishFailed` after marking what was confirmed."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(query("outbox_lock"), LOCK_ID):
                return 0
            rows = await conn.fetch(query("outbox_unsent"), self.batch)
            if not rows:
                return 0
            confirmed, failures = await self._publish(rows)
            if confirmed:
                await conn.execute(query("outbox_mark_sent"), confirmed)
        if confirmed:
            metrics.OUTBOX_PUBLISHED.inc(len(confirmed))
            self.published += len(confirmed)
            self._sent_marks.append((time.monotonic(), max(confirmed)))
        if failures:
            raise failures[0]
        await self._prune()
        return len(confirmed)

    async def _publish(self, rows: Sequence[asyncpg.Record]) -> tuple[list[int], list[PublishFailed]]:
        chains: dict[uuid.UUID, list[Any]] = {}
        for row in rows:  # id order, which is sequence order within an Item
            chains.setdefault(row["item_id"], []).append(row)
        confirmed: list[int] = []
        failures: list[PublishFailed] = []

        async def one_item(events: list[Any]) -> None:
            for row in events:
                try:
                    await self.publisher.publish(
                        row["routing_key"], row["body"].encode(), message_id=str(row["event_id"])
                    )
                except Unroutable as e:
                    if self.publisher.topo.callbacks_bound:
                        # callbacks are configured, so paw.callbacks should take it: its queue or
                        # binding was removed. Failing keeps the event (and the backlog alert).
                        failures.append(e)
                        return
                    # No subscriber queue and no callbacks (paw.callbacks is bound only where
                    # PAW_CALLBACKS is set): nobody to deliver it to, as with any topic publish.
                    metrics.OUTBOX_UNROUTED.inc()
                except Exception as e:  # PublishFailed, or anything unforeseen: never raised past gather
                    failures.append(
                        e if isinstance(e, PublishFailed) else PublishFailed(f"{type(e).__name__}: {e}")
                    )
                    return  # its later events wait: they must not overtake this one
                confirmed.append(row["id"])

        await asyncio.gather(*(one_item(events) for events in chains.values()))
        return confirmed, failures

    async def _prune(self, chunk: int = 10_000) -> None:
        """Deletes up to ``chunk`` rows sent more than ``retention_s`` ago (this relay's own marks);
        one chunk per batch, so a long backlog of sent rows never holds up publishing."""
        horizon = time.monotonic() - self.retention_s
        upto = None
        while self._sent_marks and self._sent_marks[0][0] <= horizon:
            upto = self._sent_marks.popleft()
        if upto is None:
            return
        try:
            deleted = await self.pool.fetchval(query("outbox_prune"), upto[1], chunk)
        except (asyncpg.PostgresError, OSError):
            deleted = chunk  # try again after the next batch
        if deleted >= chunk:
            self._sent_marks.appendleft(upto)
