"""Group commit for one statement: the rows that many concurrent callers write at once go to
Postgres in one round trip and one transaction (issue 16).

Each write transaction costs Postgres about 230 µs before it does any work (the commit's WAL flush,
the protocol's messages, waking the backend) and the worker a pooled connection and a socket write
each way; four of an Item's six statements are ``transition``. When more callers wait than there
are lanes, the waiting ones share the next round trip: asyncpg's ``fetchmany`` sends every Bind and
Execute before one Sync, so the batch commits (or rolls back) as one implicit transaction.

What a caller sees does not change: its own row, or ``None``, once its statement is durable, or
the error its own statement would have met. A statement's failure (a constraint, a deadlock)
rolls the whole batch back, which then runs again one statement at a time, so each caller gets its
own answer or its own error; a database away fails every caller of the batch with that error. One
batch holds at most one statement per key (the Item), in key order, so two batches lock rows in the
same order, and a later statement of the same Item goes in the next batch.

Nothing waits to fill a batch: with a lane free, a caller's statement leaves at once, alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import asyncpg

from worker import metrics
from worker.items.unavailable import DATABASE_UNAVAILABLE


class _Call(NamedTuple):
    key: Hashable
    args: Sequence[Any]
    future: asyncio.Future[asyncpg.Record | None]


class Batched:
    """``fetchrow`` for one guarded statement, whose row (if any) names its key in ``column``.

    ``key`` picks the key out of a call's arguments; ``lanes`` is how many batches may be in flight
    at once (each holds one pooled connection while it runs). One by default, not a quarter of the
    pool: two workers, 3,000 Items, four alternating pairs, Postgres 2.0 against 2.2 ms/Item and 1.0
    against 1.9 transactions per Item, e2e p99 alike (bench/README)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        sql: str,
        *,
        name: str,
        key: Callable[[Sequence[Any]], Hashable],
        column: str,
        lanes: int = 1,
        max_batch: int = 64,
    ) -> None:
        if lanes < 1 or max_batch < 1:
            raise ValueError("lanes and max_batch must be at least 1")
        self.pool = pool
        self.sql = sql
        self.name = name
        self.key = key
        self.column = column
        self.lanes = lanes
        self.max_batch = max_batch
        self._waiting: list[_Call] = []
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def fetchrow(self, *args: Any) -> asyncpg.Record | None:
        """The statement's row for ``args`` (``None``: it returned none), once committed."""
        future: asyncio.Future[asyncpg.Record | None] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Call(self.key(args), args, future))
        if self._running < self.lanes:
            self._running += 1
            task = asyncio.create_task(self._lane(), name=f"batched-{self.name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # The lane runs the statement whatever happens to this caller: a caller cancelled while it
        # waits no more knows whether its statement committed than one cancelled mid-query would.
        return await future

    def _take(self) -> list[_Call]:
        """The next batch: the oldest waiting call of each key, at most ``max_batch``, skipping
        calls whose caller stopped waiting."""
        batch: dict[Hashable, _Call] = {}
        rest = []
        for call in self._waiting:
            if call.future.done():
                continue
            if call.key in batch or len(batch) >= self.max_batch:
                rest.append(call)
            else:
                batch[call.key] = call
        self._waiting = rest
        return [batch[k] for k in sorted(batch, key=str)]

    async def _lane(self) -> None:
        batch: list[_Call] = []
        try:
            while batch := self._take():
                await self._run(batch)
        except BaseException:  # cancelled (the loop is closing): nobody is left to run the rest
            for call in batch + self._waiting:
                call.future.cancel()
            self._waiting = []
            raise
        finally:
            self._running -= 1

    async def _run(self, batch: list[_Call]) -> None:
        metrics.child(metrics.DB_BATCH_SIZE, self.name).observe(len(batch))
        try:
            if len(batch) == 1:
                row = await self.pool.fetchrow(self.sql, *batch[0].args)
                rows = [] if row is None else [row]
            else:
                rows = await self.pool.fetchmany(self.sql, [call.args for call in batch])
        except Exception as e:
            if len(batch) == 1 or isinstance(e, DATABASE_UNAVAILABLE):
                for call in batch:  # the database is away: each caller would have met it too
                    _settle(call.future, exception=e)
                return
            # A statement's own failure rolled the batch back: each on its own, so every caller
            # learns its own answer or its own error.
            for call in batch:
                await self._run([call])
            return
        by_key = {row[self.column]: row for row in rows}
        for call in batch:
            _settle(call.future, result=by_key.get(call.key))


def _settle(
    future: asyncio.Future[asyncpg.Record | None],
    *,
    result: asyncpg.Record | None = None,
    exception: BaseException | None = None,
) -> None:
    if future.done():  # its caller stopped waiting
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)
