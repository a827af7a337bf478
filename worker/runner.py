"""The worker process: consumes the work queues until told to stop, then drains."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aio_pika.abc import AbstractQueue

from worker.bus.consumer import Consumer
from worker.gauges import run_gauges
from worker.handlers import Handlers
from worker.items.reconciler import run_reconciler
from worker.services import Services

log = structlog.get_logger(__name__)


async def run_worker(
    svc: Services, stop: asyncio.Event, *, ready: asyncio.Event | None = None, drain_timeout: float = 30.0
) -> dict[str, int]:
    """Consumes until ``stop`` is set; then stops taking messages and waits (bounded) for the ones
    in hand. Returns the consumers' counts."""
    channel = await svc.connection.channel()
    await channel.set_qos(prefetch_count=svc.settings.prefetch)
    handlers = Handlers(store=svc.store, pipeline=svc.pipeline)
    consumers: list[tuple[Consumer, AbstractQueue, str]] = []
    for name in svc.topo.work_queues:
        consumer = Consumer(
            publisher=svc.publisher,
            topo=svc.topo,
            handler=handlers,
            queue=name,
            retry_budget=svc.settings.retry_budget,
        )
        queue = await channel.get_queue(name, ensure=False)
        tag = await queue.consume(consumer)
        consumers.append((consumer, queue, tag))
    log.info("worker.started", queues=list(svc.topo.work_queues), prefetch=svc.settings.prefetch)
    if ready is not None:
        ready.set()
    reconciler = asyncio.create_task(
        run_reconciler(svc.store, svc.atomic, older_than_s=svc.settings.atomic_pending_reconcile_s, stop=stop)
    )
    gauges = asyncio.create_task(run_gauges(svc, stop))
    try:
        await stop.wait()
    finally:
        await _drain(consumers, drain_timeout)
        for task in (reconciler, gauges):
            task.cancel()
        await asyncio.gather(reconciler, gauges, return_exceptions=True)
        with contextlib.suppress(Exception, TimeoutError):
            async with asyncio.timeout(5):
                await channel.close()
    totals: dict[str, int] = {}
    for consumer, _, _ in consumers:
        for k, v in consumer.counts.items():
            totals[k] = totals.get(k, 0) + v
    log.info("worker.stopped", **totals)
    return totals


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
