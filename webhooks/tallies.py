"""The receiver's counts, reported to Postgres every few seconds (``receiver_minutes``), so that
``paw status`` can say what every receiver saw in the last hour and when a webhook last arrived,
without scraping each receiver.

:func:`rows` (pure) turns the counts added since the last report into rows; :func:`report_every`
sends them. A report that fails is kept and sent with the next one: counts are never lost, only late.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

import asyncpg
import structlog

from worker.items.store import Store

log = structlog.get_logger(__name__)

REPORT_S = 2.0
Row = tuple[str, str, str, int]  # source, outcome, reason, count


def rows(counts: collections.Counter[str], reported: collections.Counter[str]) -> list[Row]:
    """What was counted since ``reported``, as rows. Keys (webhooks.app.ReceiverCounts):
    ``<source>_received``, ``<source>_accepted``, ``<source>_rejected.<reason>``,
    ``<source>_key_unavailable``, ``publish_failed``; others are not reported."""
    out: list[Row] = []
    for key, total in counts.items():
        added = total - reported.get(key, 0)
        if added <= 0:
            continue
        if key == "publish_failed":
            out.append(("", "publish_failed", "", added))
            continue
        source, _, what = key.partition("_")
        outcome, _, reason = what.partition(".")
        if source in ("plaid", "atomic") and outcome in (
            "received",
            "accepted",
            "rejected",
            "key_unavailable",
        ):
            out.append((source, outcome, reason[:64], added))
    return sorted(out)


async def report(store: Store, counts: collections.Counter[str], reported: collections.Counter[str]) -> None:
    """Sends what was counted since the last report; on success, remembers it as reported."""
    snapshot = collections.Counter(counts)
    found = rows(snapshot, reported)
    if found:
        await store.add_receiver_counts(found)
    reported.clear()
    reported.update(snapshot)


async def report_every(store: Store, counts: collections.Counter[str], stop: asyncio.Event) -> None:
    """Reports every ``REPORT_S`` until ``stop``, then once more; prunes old minutes hourly."""
    reported: collections.Counter[str] = collections.Counter()
    since_prune = float("inf")
    while True:
        try:
            await report(store, counts, reported)
            since_prune += REPORT_S
            if since_prune >= 3600:
                await store.prune_receiver_minutes()
                since_prune = 0.0
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
            log.warning("receiver.report_failed", error=type(e).__name__)
        except Exception:  # a bug must not end the reports for the receiver's lifetime
            log.exception("receiver.report_failed")
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REPORT_S):
                await stop.wait()
