"""The reconcilers: a lost or early webhook must not leave an Item waiting forever.

- :func:`reconcile_once` polls Atomic for Items stuck in ``atomic_pending``;
- :func:`reconcile_verification_once` asks Plaid again (``/accounts/get``) about Items in
  ``awaiting_verification``: an ``AUTOMATICALLY_VERIFIED`` lost on its way, a Same-Day account
  verified in Link (Plaid sends no webhook for that), Database Insights that finished, automated
  micro-deposits Plaid gave up on after 7 days.

Several workers may run them at once; the guarded transition (and, for Plaid, the Item's lease)
applies each answer once."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
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


# Sends ``item.drive`` for one Item, with a reason (the worker process gives its publisher).
Drive = Callable[[uuid.UUID, str], Awaitable[object]]
VERIFICATION_REASON = "verification reconciler: re-read /accounts/get"


async def reconcile_verification_once(
    store: Store, drive: Drive, *, older_than_s: float, limit: int = 200
) -> int:
    """Sends ``item.drive`` for each Item in ``awaiting_verification`` not looked at for
    ``older_than_s``; the drive re-reads ``/accounts/get`` and applies what Plaid says now (the same
    check ``paw item retry`` makes), with the broker's retries if Plaid is away. Each Item is marked
    looked-at in the same statement that picks it, so several workers do not ask twice. Returns how
    many were sent."""
    items = await store.due_awaiting_verification(timedelta(seconds=older_than_s), limit)
    for item in items:
        await drive(item.id, VERIFICATION_REASON)
    if items:
        log.info("reconcile.verification_drives", items=len(items))
    return len(items)


def interval_for(older_than_s: float) -> float:
    """How often to look: a quarter of the wait, between 0.2 s and a minute."""
    return min(max(older_than_s / 4, 0.2), 60.0)
