"""The worker process: the consumers of the work queues, and loops beside them (the outcome-event
relay, the Atomic and the verification reconcilers, the check of login_required Items with Plaid,
the replay jobs, the gauges), until told to stop; then it drains, and relays what the drained
messages wrote."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import structlog
from aio_pika.abc import AbstractQueue

from worker import metrics, version
from worker.bus.consumer import Consumer
from worker.bus.dlq_jobs import JobRunner
from worker.bus.relay import Relay
from worker.callbacks.delivery import CallbackClient, CallbackHandler
from worker.handlers import Handlers
from worker.items import login_check
from worker.items.reconciler import interval_for, reconcile_once, reconcile_verification_once
from worker.items.states import State
from worker.logs import effective_config
from worker.services import Services
from worker.sql import query
from worker.status import gather

log = structlog.get_logger(__name__)

# On SIGTERM the worker waits this long for the messages in hand (docker-compose.yml's stop_grace_period
# must exceed it, with room for what follows: closing the channel, the admin server, the connections).
DRAIN_S = 30.0
# ... and this long, after the drain, for the replay-job runner to stop between two messages and queue
# its job again (it stops at once when told, so it is usually done by then).
JOBS_STOP_S = 10.0


async def run_worker(
    svc: Services, stop: asyncio.Event, *, ready: asyncio.Event | None = None, drain_timeout: float = DRAIN_S
) -> dict[str, int]:
    """Consumes until ``stop`` is set; then stops taking messages and waits (bounded) for the ones
    in hand. Returns the consumers' counts."""
    channel = await svc.connection.channel()
    await channel.set_qos(prefetch_count=svc.settings.prefetch)
    relay = Relay(svc.pool, svc.publisher, retention_s=svc.settings.outbox_retention_s)
    svc.store.on_event = relay.wake
    handlers = Handlers(store=svc.store, pipeline=svc.pipeline)
    callback_client = CallbackClient(
        timeout=svc.settings.callback_timeout, allow_private=svc.settings.callback_allow_private
    )
    callbacks = CallbackHandler(store=svc.store, client=callback_client, callbacks=svc.settings.callbacks)
    consumers: list[tuple[Consumer, AbstractQueue, str]] = []
    for name in svc.topo.consumed_queues:
        consumer = Consumer(
            publisher=svc.publisher,
            topo=svc.topo,
            handler=(
                callbacks
                if name == svc.topo.callbacks_queue
                else handlers.parked
                if name == svc.topo.parked_queue
                else handlers
            ),
            queue=name,
            retry_budget=svc.settings.retry_budget,
            index=svc.pool,
        )
        # declared (passively) through the robust channel, so that after the broker comes back the
        # channel consumes again by itself (a queue taken with get_queue(ensure=False) is not
        # restored, and the worker would sit idle while reporting ready)
        queue = await channel.declare_queue(name, passive=True)
        tag = await queue.consume(consumer)
        consumers.append((consumer, queue, tag))
    metrics.BUILD_INFO.labels(version(), svc.settings.plaid_env, "worker").set(1)
    log.info("worker.started", queues=list(svc.topo.consumed_queues), config=effective_config(svc.settings))
    if ready is not None:
        ready.set()
    relay_stop = asyncio.Event()
    relaying = asyncio.create_task(relay.run(relay_stop))
    older_than_s = svc.settings.atomic_pending_reconcile_s
    reconciler = asyncio.create_task(
        every(
            interval_for(older_than_s),
            stop,
            lambda: reconcile_once(svc.store, svc.atomic, older_than_s=older_than_s),
            failed="reconcile.failed",
            traceback=True,
        )
    )
    waited_s = svc.settings.verification_reconcile_s
    verifier = asyncio.create_task(
        every(
            interval_for(waited_s),
            stop,
            lambda: reconcile_verification_once(svc.store, _drive_via(svc), older_than_s=waited_s),
            failed="reconcile_verification.failed",
            traceback=True,
        )
    )
    login_s = svc.settings.login_check_s
    logins = asyncio.create_task(
        every(
            login_check.interval_for(login_s),
            stop,
            lambda: login_check.check_logins_once(svc.pipeline, older_than_s=login_s),
            failed="login_check.failed",
            traceback=True,
        )
    )
    gauges = Gauges(svc)
    gauges_loop = asyncio.create_task(every(5.0, stop, gauges.refresh, failed="gauges.refresh_failed"))
    jobs = asyncio.create_task(JobRunner(svc.pool, svc.connection, svc.topo, svc.publisher).run(stop))
    try:
        await stop.wait()
    finally:
        try:
            await _drain(consumers, drain_timeout)
            await _stop_jobs(jobs, JOBS_STOP_S)
            relay_stop.set()
            await relaying
            await _flush(relay)
        finally:
            # Also when the drain itself is cancelled: no loop may outlive the worker and use the
            # pool while it closes (a connection being opened then is never closed).
            loops = (reconciler, verifier, logins, gauges_loop, jobs, relaying)
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await gauges.close()
            await callback_client.close()
            with contextlib.suppress(Exception, TimeoutError):
                async with asyncio.timeout(5):
                    await channel.close()
    totals: dict[str, int] = {}
    for consumer, _, _ in consumers:
        for k, v in consumer.counts.items():
            totals[k] = totals.get(k, 0) + v
    totals["outcome_events"] = relay.published
    log.info("worker.stopped", **totals)
    return totals


async def _stop_jobs(jobs: asyncio.Task[None], timeout: float) -> None:
    """The job runner stops by itself once ``stop`` is set: between two messages, its job queued
    again. One that has not within ``timeout`` is cancelled; its job, left running, goes stale and
    another worker takes it over."""
    await asyncio.wait({jobs}, timeout=timeout)
    if not jobs.done():
        log.warning("worker.jobs_stop_timeout")
        jobs.cancel()
    await asyncio.gather(jobs, return_exceptions=True)


async def _flush(relay: Relay) -> None:
    """Publishes what the last messages wrote, within a bound (what is left waits for the next worker)."""
    try:
        async with asyncio.timeout(5):
            while await relay.relay_once() >= relay.batch:
                pass
    except Exception as e:
        log.warning("outbox.flush_failed", error=type(e).__name__)


def _drive_via(svc: Services) -> Callable[[uuid.UUID, str], Awaitable[None]]:
    """Sends ``item.drive`` for an Item (retried through the broker like any other drive)."""

    async def drive(item_id: uuid.UUID, reason: str) -> None:
        body = json.dumps({"item_id": str(item_id), "reason": reason}).encode()
        await svc.publisher.publish("item.drive", body, message_id=str(uuid.uuid4()))

    return drive


async def _drain(consumers: list[tuple[Consumer, AbstractQueue, str]], timeout: float) -> None:
    """Stops taking messages, waits up to ``timeout`` for the ones in hand, then cancels the rest
    (unacked, they return to their queue when the channel closes)."""
    for _, queue, tag in consumers:
        if queue.channel.is_closed:
            continue
        try:
            async with asyncio.timeout(5):
                await queue.cancel(tag)
        except Exception as e:
            log.warning("worker.cancel_failed", error=type(e).__name__)
    try:
        async with asyncio.timeout(timeout):
            for consumer, _, _ in consumers:
                await consumer.idle.wait()
    except TimeoutError:
        stuck = [t for c, _, _ in consumers for t in c.tasks]
        log.warning("worker.drain_timeout", in_flight=len(stuck))
        for t in stuck:
            t.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)


async def every(
    interval: float,
    stop: asyncio.Event,
    tick: Callable[[], Awaitable[object]],
    *,
    failed: str,
    traceback: bool = False,
) -> None:
    """Calls ``tick`` every ``interval`` seconds until ``stop``. A failing tick (a broker or database
    blip) is logged as ``failed`` (an error with its traceback, or a warning) and the loop goes on."""
    while not stop.is_set():
        try:
            await tick()
        except Exception as e:
            if traceback:
                log.exception(failed)
            else:
                log.warning(failed, error=type(e).__name__)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await stop.wait()


class Gauges:
    """The deployment-wide gauges (:class:`worker.metrics.GlobalGauges`: Items per state, queues,
    dead letters, the outbox, the oldest stuck Item), from the same reads as ``paw status``.

    Exported by one worker only: the one holding a Postgres advisory lock on a connection of its
    own; the others export none of them (so three workers do not show three times the truth). The
    lock goes with its session: a worker that dies frees it, and another takes it at its next
    refresh. A refresh that fails exports nothing rather than stale figures."""

    LOCK_ID = 0x7061_775F_6761_7567  # "paw_gaug"
    TIMEOUT_S = 10.0

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.lock_conn: asyncpg.Connection | None = None
        self.holding = False

    async def _hold(self) -> bool:
        if self.lock_conn is None or self.lock_conn.is_closed():
            self.lock_conn = await asyncpg.connect(self.svc.settings.database_url, timeout=10)
            self.holding = False
        if not self.holding:
            self.holding = bool(await self.lock_conn.fetchval(query("try_session_lock"), self.LOCK_ID))
        else:
            await self.lock_conn.fetchval("SELECT 1")  # still alive, so still holding
        return self.holding

    async def refresh(self) -> None:
        try:
            async with asyncio.timeout(self.TIMEOUT_S):  # a broker or database away: no stale figures
                if not await self._hold():
                    metrics.GLOBAL.snapshot = None
                    return
                status = await gather(self.svc.store, self.svc.connection, self.svc.topo)
                oldest_moving = float(await self.svc.pool.fetchval(query("oldest_moving_age")))
        except Exception:
            metrics.GLOBAL.snapshot = None
            await self.close()
            raise
        metrics.GLOBAL.snapshot = metrics.GlobalSnapshot(
            items={state.value: status.items.get(state.value, 0) for state in State},
            queues={n: (q.ready, q.consumers, q.retrying) for n, q in status.queues.items()},
            dead_letters=status.dead_letters,
            outbox_unsent=status.outbox_unsent,
            outbox_oldest_s=status.outbox_oldest_s,
            oldest_stuck_s=oldest_moving,
        )

    async def close(self) -> None:
        """Stops exporting and lets the lock go (closing its session)."""
        metrics.GLOBAL.snapshot = None
        self.holding = False
        if self.lock_conn is not None:
            with contextlib.suppress(Exception):
                await self.lock_conn.close(timeout=5)
            self.lock_conn = None
