"""The dead-letter index in Postgres (``dead_letters``): what the worker writes as it dead-letters,
what ``paw dlq`` reads, and the reindex that adds what is missing.

Why an index: reading ``<prefix>.dead`` itself (``basic.get``, then giving the message back) counts
as a delivery, and RabbitMQ 4.0+ drops a quorum-queue message past its delivery limit; a scan also
hides the messages from colleagues while it runs and takes about a second per thousand. So ``list``
and ``show`` read only this table, and ``replay`` and ``purge`` select here and take the chosen
messages from the queue once per action. The queue keeps the message itself (the body here is
redacted); the table says what is there.

The worker writes a row after the dead-letter copy was confirmed and before the original is acked.
A database that cannot take the row does not keep the message from being dead-lettered: the copy is
safe on the queue, the failure is logged and counted (``paw_dead_letters_unindexed_total``), and
``paw status`` and ``paw dlq list`` say when the queue holds more than the index; ``paw dlq reindex``
adds the rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import asyncpg

from worker.bus.dlq import DeadLetter, Filters, from_row, index_args
from worker.sql import query


async def record(
    conn: asyncpg.Pool | asyncpg.Connection, d: DeadLetter, *, traceback: str = "", indexed_by: str = "worker"
) -> bool:
    """Indexes ``d``; True if it had no row (a worker's second copy of one message counts as a
    copy; reindex leaves existing rows alone)."""
    inserted = await conn.fetchval(
        query("dead_letter_record"), *index_args(d, traceback=traceback, indexed_by=indexed_by)
    )
    return bool(inserted)


@dataclasses.dataclass(frozen=True)
class Page:
    letters: list[DeadLetter]
    matched: int  # how many the filters pick in all
    next_after: int | None  # the cursor of the next page, None on the last
    reasons: list[tuple[str, int]]  # of everything matched, most first


async def page(pool: asyncpg.Pool, filters: Filters, *, after: int = 0, limit: int = 100) -> Page:
    """One page of the dead letters ``filters`` pick (status dead), oldest first."""
    args = filters.sql_args()
    rows = await pool.fetch(query("dead_letter_page"), *args, after, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    reasons = await by_reason(pool, filters)
    return Page(
        letters=[from_row(r) for r in rows],
        matched=sum(n for _, n in reasons),
        next_after=int(rows[-1]["seq"]) if more and rows else None,
        reasons=reasons,
    )


async def by_reason(pool: asyncpg.Pool, filters: Filters) -> list[tuple[str, int]]:
    """How many dead letters ``filters`` pick per reason, most first."""
    rows = await pool.fetch(query("dead_letter_reasons"), *filters.sql_args())
    return [(r["reason"], int(r["n"])) for r in rows]


async def by_prefix(pool: asyncpg.Pool, prefix: str) -> list[DeadLetter]:
    """The indexed dead letters (any status) whose id starts with ``prefix``."""
    return [from_row(r) for r in await pool.fetch(query("dead_letter_by_prefix"), prefix)]


async def seq_of(pool: asyncpg.Pool, prefix: str) -> int:
    """The page cursor of the dead letter ``prefix`` names (``--after ID``)."""
    rows = await pool.fetch(query("dead_letter_by_prefix"), prefix)
    if len(rows) != 1:
        raise LookupError(prefix)
    return int(rows[0]["seq"])


async def chosen_keys(
    pool: asyncpg.Pool, filters: Filters, limit: int | None = None, *, status: str = "dead"
) -> list[str]:
    """Every dead letter with ``status`` that ``filters`` pick, oldest first."""
    rows = await pool.fetch(query("dead_letter_keys"), *filters.sql_args(status), limit)
    return [r["key"] for r in rows]


async def statuses(pool: asyncpg.Pool, keys: Sequence[str]) -> dict[str, str]:
    rows = await pool.fetch(query("dead_letter_keys_known"), sorted(set(keys)))
    return {r["key"]: r["status"] for r in rows}


async def mark(conn: asyncpg.Pool | asyncpg.Connection, key: str, status: str, action_id: int | None) -> None:
    await conn.execute(query("dead_letter_mark"), key, status, action_id)


async def counts(pool: asyncpg.Pool) -> dict[str, int]:
    """Rows per status (dead, replayed, purged)."""
    return {r["status"]: int(r["n"]) for r in await pool.fetch(query("dead_letter_counts"))}


@dataclasses.dataclass(frozen=True)
class Reindexed:
    on_queue: int  # messages read off the dead queue
    added: int  # rows written for dead letters that had none
    restored: int  # rows marked purged whose message was still on the queue: dead again
    missing: int  # rows marked dead with no message on the queue (someone else held it, or it is gone)


async def reindex(pool: asyncpg.Pool, letters: Sequence[DeadLetter]) -> Reindexed:
    """Brings the index in line with ``letters`` (everything read off the dead queue)."""
    known = await statuses(pool, [d.key for d in letters])
    added = 0
    for d in {d.key: d for d in letters if d.key not in known}.values():
        added += await record(pool, d, indexed_by="reindex")
    purged = sorted({d.key for d in letters if known.get(d.key) == "purged"})
    restored = 0
    if purged:
        status = await pool.execute(query("dead_letter_restore"), purged)
        restored = int(status.split()[-1])
    on_queue = {d.key for d in letters}
    dead = await chosen_keys(pool, Filters())
    return Reindexed(
        on_queue=len(letters),
        added=added,
        restored=restored,
        missing=sum(1 for k in dead if k not in on_queue),
    )
