"""Polls Atomic for Items stuck in ``atomic_pending``: a lost or early webhook must not leave an Item
waiting forever. Several workers may run it at once; the guarded transition applies each answer once."""

from __future__ import annotations

from datetime import timedelta

import structlog

from worker.atomic_api import AtomicClient
from worker.errors import UpstreamError
from worker.items.model import Item
from worker.items.rules import ATOMIC_OUTCOMES
from worker.items.store import Store

log = structlog.get_logger(__name__)


async def reconcile_once(store: Store, atomic: AtomicClient, *, older_than_s: float, limit: int = 200) -> int:
    """Asks Atomic about each stuck Item; returns how many moved."""
    moved = 0
    for item in await store.stuck_atomic_pending(timedelta(seconds=older_than_s), limit):
        moved += await _reconcile(store, atomic, item)
    return moved


async def _reconcile(store: Store, atomic: AtomicClient, item: Item) -> int:
    if item.atomic_funding_source_id is None:
        return 0
    try:
        source = await atomic.funding_source(item.atomic_funding_source_id)
    except UpstreamError as e:
        log.warning("reconcile.atomic_error", item_id=str(item.id), error_code=e.error_code)
        return 0
    trigger = ATOMIC_OUTCOMES.get(source.status)
    if trigger is None:
        await store.touch(item.id)  # still pending: ask again after another full wait
        return 0
    done = await store.transition(
        item, trigger, cause="reconciler", detail={"status": source.status, "reason": source.reason}
    )
    if done is not None:
        log.info("reconcile.applied", item_id=str(item.id), status=source.status)
    return int(done is not None)


def interval_for(older_than_s: float) -> float:
    """How often to look: a quarter of the wait, between 0.2 s and a minute."""
    return min(max(older_than_s / 4, 0.2), 60.0)
