"""Gauges that need a query: Items per state, queue and dead-letter depths. Refreshed every few
seconds by each worker (cheap: one GROUP BY and a passive declare per queue)."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aio_pika.abc import AbstractChannel

from worker import metrics
from worker.bus.topology import queue_depth
from worker.items.states import State
from worker.services import Services

log = structlog.get_logger(__name__)


async def refresh_once(svc: Services, channel: AbstractChannel) -> None:
    counts = await svc.store.count_by_state()
    for state in State:
        metrics.ITEMS.labels(state.value).set(counts.get(state.value, 0))
    for name in svc.topo.work_queues:
        metrics.QUEUE_DEPTH.labels(name).set(await queue_depth(channel, name))
    metrics.DLQ_DEPTH.set(await queue_depth(channel, svc.topo.dead_queue))


async def run_gauges(svc: Services, stop: asyncio.Event, interval: float = 5.0) -> None:
    channel: AbstractChannel | None = None
    while not stop.is_set():
        try:
            if channel is None or channel.is_closed:
                channel = await svc.connection.channel()
            await refresh_once(svc, channel)
        except Exception as e:  # a broker or database blip must not end the loop
            log.warning("gauges.refresh_failed", error=type(e).__name__)
            channel = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await stop.wait()
    if channel is not None and not channel.is_closed:
        with contextlib.suppress(Exception):
            await channel.close()
