"""Replay jobs: a long replay as a row in ``dlq_jobs`` that a worker runs, so that a closed terminal
or browser tab does not cut it off, and the broker's consumer_timeout does not either (the replay
gives the dead queue back and takes it again, :func:`worker.bus.dead_queue.run_replay`).

``paw dlq replay --job`` and the console plan with :func:`plan_replay` (the dry run's, from
:mod:`worker.bus.dead_queue`), create jobs with :func:`enqueue`, show them with :func:`get` and
:func:`list_recent`, follow them with :func:`follow` and stop them with :func:`request_cancel`.
Every worker process runs a :class:`JobRunner` beside its consumers.

- **One at a time.** A runner claims the oldest queued job (``FOR UPDATE SKIP LOCKED``, under an
  advisory lock) only while no other job runs with a live worker: a replay holds the dead queue, and
  a second replay at once would find the messages it wants held by the first.
- **What a job replays** is what its filters picked when it was created: it runs with ``until`` no
  later than ``created_at``, so a replayed message that dies again during the job (a new dead letter)
  is not replayed again by the same job.
- **Progress** (selected, done, replayed, already, failed) is written to the row at most every
  :data:`PROGRESS_S` or :data:`PROGRESS_N` messages, and at the end; a heartbeat every
  :data:`HEARTBEAT_S` answers whether someone asked to cancel.
- **Cancel**: a queued job is cancelled at once; a running one stops between two messages: what
  was replayed is recorded, the rest stays on the dead queue, still indexed as dead.
- **SIGTERM**: the worker's runner stops between two messages, gives the dead queue back, and puts
  the job back to ``queued`` with its counts; the next worker to poll resumes it. A worker that dies
  instead leaves it ``running``; once its heartbeat is :data:`STALE_S` old, another worker takes it
  over. Resuming is safe: a dead letter replayed before is recorded in ``dlq_replayed`` and only
  acked (at most the one message in flight when a worker is killed is published twice, as with the
  CLI; consumers deduplicate on its message id).
- **The audit**: the worker that first runs a job opens its ``dlq_actions`` row (actor: the job's)
  and the job's end closes it; a resumed job keeps the same row.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any

import asyncpg
import structlog
from aio_pika.abc import AbstractRobustConnection

from worker.bus import dead_queue
from worker.bus.dead_queue import Plan as Plan  # re-exported: the plan a job's caller shows first
from worker.bus.dead_queue import ReplayResult
from worker.bus.dead_queue import plan_replay as plan_replay
from worker.bus.dlq import Filters
from worker.bus.publisher import Publisher
from worker.bus.topology import Topology
from worker.errors import DlqError
from worker.sql import query

log = structlog.get_logger(__name__)

ACTIONS = frozenset({"replay"})
FINISHED = frozenset({"done", "failed", "cancelled"})
POLL_S = 1.0  # how often an idle runner looks for a queued job
HEARTBEAT_S = 1.0  # how often a running job's worker says it is alive (and reads cancel_requested)
STALE_S = 60.0  # a running job whose heartbeat is this old lost its worker: another takes it over
PROGRESS_S = 0.5  # progress is written at most this often ...
PROGRESS_N = 20  # ... or every this many messages
LOCK_ID = 0x7061_775F_6A6F_6273  # "paw_jobs": one claim at a time


# -- Pure --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Job:
    """One row of ``dlq_jobs``."""

    id: int
    action: str
    actor: str
    filters: Mapping[str, Any]  # Filters.public(), plus "limit" and "all"
    rate: float | None
    status: str  # queued, running, done, failed, cancelled
    selected: int
    done: int  # replayed + already
    failed: int
    replayed: int
    already: int
    error: str | None
    action_id: int | None
    cancel_requested: bool
    runs: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    claimed_by: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Job:
        rate = row["rate"]
        return cls(
            id=row["id"],
            action=row["action"],
            actor=row["actor"],
            filters=dict(row["filters"] or {}),
            rate=float(f"{rate:.6g}") if rate is not None else None,  # a real, shown as given
            status=row["status"],
            selected=row["selected"],
            done=row["done"],
            failed=row["failed"],
            replayed=row["replayed"],
            already=row["already"],
            error=row["error"],
            action_id=row["action_id"],
            cancel_requested=row["cancel_requested"],
            runs=row["runs"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            heartbeat_at=row["heartbeat_at"],
            claimed_by=row["claimed_by"],
        )

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def limit(self) -> int | None:
        value = self.filters.get("limit")
        return int(value) if value else None

    @property
    def succeeded(self) -> bool:
        """Done, and every message it chose was replayed (or had been)."""
        return self.status == "done" and self.failed == 0

    def public(self) -> dict[str, Any]:
        """The job as JSON (``paw dlq job --json``, the console)."""

        def iso(at: datetime | None) -> str | None:
            return at.isoformat() if at else None

        return {
            "id": self.id,
            "action": self.action,
            "actor": self.actor,
            "status": self.status,
            "filters": dict(self.filters),
            "rate": self.rate,
            "selected": self.selected,
            "done": self.done,
            "replayed": self.replayed,
            "already": self.already,
            "failed": self.failed,
            "error": self.error,
            "action_id": self.action_id,
            "cancel_requested": self.cancel_requested,
            "runs": self.runs,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "heartbeat_at": iso(self.heartbeat_at),
            "claimed_by": self.claimed_by,
        }


def stored_filters(filters: Filters, limit: int | None) -> dict[str, Any]:
    """What a job keeps in ``filters``: the filters as the audit writes them, the limit, and
    ``all`` when there is no filter (every dead letter)."""
    out = {**filters.public(), "all": filters.empty, "limit": limit}
    return {k: v for k, v in out.items() if v}


def run_filters(stored: Mapping[str, Any], created_at: datetime) -> Filters:
    """The filters a job runs with: as stored, and dead-lettered before the job was created (what
    the plan showed; a copy that dies again meanwhile is not replayed again by the same job)."""
    f = Filters.from_public(stored)
    return dataclasses.replace(f, until=min(f.until, created_at) if f.until else created_at)


def remaining(limit: int | None, done_before: int) -> int | None:
    """How many a resumed job may still take (None: no limit)."""
    return None if limit is None else max(0, limit - done_before)


def outcome(*, stopped: bool, cancel: bool, error: str | None) -> str:
    """Where a run leaves its job: ``failed`` (an error stopped it), ``done`` (it went through what
    it chose, some messages perhaps failed), ``cancelled`` (stopped on request), or ``queued`` again
    (stopped for the worker's shutdown: the next worker resumes it)."""
    if error is not None:
        return "failed"
    if not stopped:
        return "done"
    return "cancelled" if cancel else "queued"


@dataclasses.dataclass
class Throttle:
    """Whether progress is worth writing now: at the first call, then every ``every_s`` seconds or
    ``every_n`` messages."""

    every_s: float = PROGRESS_S
    every_n: int = PROGRESS_N
    last_at: float = -math.inf
    last_n: int = -1

    def due(self, now: float, processed: int) -> bool:
        if self.last_n >= 0 and processed - self.last_n < self.every_n and now - self.last_at < self.every_s:
            return False
        self.last_at, self.last_n = now, processed
        return True


# -- I/O: what the CLI and the console call ------------------------------------------------------


async def enqueue(
    pool: asyncpg.Pool,
    action: str,
    filters: Filters,
    limit: int | None,
    rate: float | None,
    actor: str,
) -> int:
    """Queues a job; returns its id. Empty filters select every dead letter: the caller asks first
    (``--all``, the console's "all")."""
    if action not in ACTIONS:
        raise DlqError(f"a job can {', '.join(sorted(ACTIONS))}, not {action!r}")
    if rate is not None and rate <= 0:
        raise DlqError("the rate must be positive")
    if limit is not None and limit < 1:
        raise DlqError("the limit must be positive")
    job_id: int = await pool.fetchval(
        query("dlq_job_enqueue"), action, actor, stored_filters(filters, limit), rate
    )
    log.info("dlq_job.queued", job_id=job_id, action=action, actor=actor, limit=limit, rate=rate)
    return job_id


async def get(pool: asyncpg.Pool, job_id: int) -> Job | None:
    row = await pool.fetchrow(query("dlq_job_get"), job_id)
    return Job.from_row(row) if row else None


async def list_recent(pool: asyncpg.Pool, limit: int = 20) -> list[Job]:
    """The newest jobs first."""
    return [Job.from_row(r) for r in await pool.fetch(query("dlq_job_recent"), limit)]


async def request_cancel(pool: asyncpg.Pool, job_id: int) -> Job | None:
    """Cancels a queued job at once, asks a running one's worker to stop it (between two messages),
    leaves a finished one as it is. Returns the job as it is now (None: no such job)."""
    row = await pool.fetchrow(query("dlq_job_cancel"), job_id)
    if row is None:
        return None
    job = Job.from_row(row)
    log.info("dlq_job.cancel_requested", job_id=job_id, status=job.status)
    return job


async def follow(pool: asyncpg.Pool, job_id: int, *, every_s: float = 0.5) -> AsyncIterator[Job]:
    """Yields the job now and whenever it changes (its heartbeat aside), until it is finished (the
    last one yielded)."""
    seen: Job | None = None
    while True:
        job = await get(pool, job_id)
        if job is None:
            raise DlqError(f"no such job #{job_id}")
        if seen is None or dataclasses.replace(job, heartbeat_at=seen.heartbeat_at) != seen:
            yield job
            seen = job
        if job.finished:
            return
        await asyncio.sleep(every_s)


# -- I/O: the runner in every worker ---------------------------------------------------------


async def claim(pool: asyncpg.Pool, claimed_by: str, stale_s: float = STALE_S) -> Job | None:
    """Takes the next job to run (see ``dlq_job_claim``), or None."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(query("dlq_job_claim_lock"), LOCK_ID)
        row = await conn.fetchrow(query("dlq_job_claim"), claimed_by, stale_s)
    return Job.from_row(row) if row else None


@dataclasses.dataclass
class _Flags:
    """What the heartbeat and the progress writes learnt from the row."""

    cancel: bool = False
    lost: bool = False  # another worker took the job over: write nothing more to it

    def saw(self, cancel_requested: bool | None) -> None:
        if cancel_requested is None:
            self.lost = True
        else:
            self.cancel = self.cancel or cancel_requested


@dataclasses.dataclass(frozen=True)
class _Base:
    """What earlier runs of a resumed job did."""

    replayed: int = 0
    already: int = 0

    def counts(self, r: ReplayResult) -> tuple[int, int, int, int]:
        """(selected, replayed, already, failed) of the job so far."""
        return (
            self.replayed + self.already + r.selected,
            self.replayed + r.replayed,
            self.already + r.already,
            r.failed,
        )


class JobRunner:
    """Runs replay jobs, one at a time, in a worker process until ``stop`` (see the module)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        connection: AbstractRobustConnection,
        topo: Topology,
        publisher: Publisher,
        *,
        poll_s: float = POLL_S,
        stale_s: float = STALE_S,
        heartbeat_s: float = HEARTBEAT_S,
        slice_s: float = dead_queue.SLICE_S,
    ) -> None:
        self.pool = pool
        self.connection = connection
        self.topo = topo
        self.publisher = publisher
        self.poll_s = poll_s
        self.stale_s = stale_s
        self.heartbeat_s = heartbeat_s
        self.slice_s = slice_s
        self.name = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:6]}"

    async def run(self, stop: asyncio.Event) -> None:
        """Claims and runs jobs until ``stop``; a failing poll (the database away) is logged and the
        loop goes on."""
        while not stop.is_set():
            job = None
            try:
                job = await claim(self.pool, self.name, self.stale_s)
            except Exception as e:
                log.warning("dlq_job.claim_failed", error=type(e).__name__)
            if job is not None:
                try:
                    await self.execute(job, stop)
                except Exception:  # the end could not be written: the job goes stale, then resumes
                    log.exception("dlq_job.crashed", job_id=job.id)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await stop.wait()

    async def execute(self, job: Job, stop: asyncio.Event) -> str:
        """Runs one claimed job until it ends or ``stop``; returns the status it left the job in
        (``lost``: another worker has it now)."""
        flags = _Flags(cancel=job.cancel_requested)
        result = ReplayResult()
        action_id, base = await self._start(job)
        limit = remaining(job.limit, base.replayed + base.already)
        log.info("dlq_job.started", job_id=job.id, actor=job.actor, run=job.runs, action_id=action_id)
        beating = asyncio.create_task(self._beat(job.id, flags))
        throttle = Throttle()
        error = None

        async def progress(r: ReplayResult) -> None:
            if not throttle.due(time.monotonic(), r.processed):
                return
            try:
                flags.saw(
                    await self.pool.fetchval(query("dlq_job_progress"), job.id, self.name, *base.counts(r))
                )
            except Exception as e:
                log.warning("dlq_job.progress_failed", job_id=job.id, error=type(e).__name__)

        try:
            if not flags.cancel and limit != 0:
                await dead_queue.run_replay(
                    self.pool,
                    self.connection,
                    self.topo,
                    self.publisher,
                    run_filters(job.filters, job.created_at),
                    limit=limit,
                    rate=job.rate,
                    actor=job.actor,
                    action_id=action_id,
                    progress=progress,
                    should_stop=lambda: stop.is_set() or flags.cancel or flags.lost,
                    result=result,
                    slice_s=self.slice_s,
                )
            elif flags.cancel:
                result.stopped = True
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
            log.exception("dlq_job.replay_failed", job_id=job.id)
        finally:
            beating.cancel()
            await asyncio.gather(beating, return_exceptions=True)
        if flags.lost:
            log.warning("dlq_job.taken_over", job_id=job.id, done=result.processed)
            return "lost"
        return await self._end(
            job, outcome(stopped=result.stopped, cancel=flags.cancel, error=error), error, base, result
        )

    async def _start(self, job: Job) -> tuple[int, _Base]:
        """Opens the job's audit row on its first run; on a later run, counts what the earlier ones did."""
        if job.action_id is None:
            audit = {**job.filters, "rate": job.rate, "job": job.id}
            action_id = await dead_queue.start_action(
                self.pool,
                job.action,
                actor=job.actor,
                filters={k: v for k, v in audit.items() if v},
                dry_run=False,
            )
            await self.pool.execute(query("dlq_job_set_action"), job.id, self.name, action_id)
            return action_id, _Base()
        # exact, whatever the last progress write said: a dead letter this job published is recorded
        replayed = int(await self.pool.fetchval(query("dlq_job_replayed_count"), job.action_id))
        return job.action_id, _Base(replayed=replayed, already=job.already)

    async def _end(self, job: Job, status: str, error: str | None, base: _Base, result: ReplayResult) -> str:
        counts = base.counts(result)
        if status == "queued":
            await self.pool.execute(query("dlq_job_requeue"), job.id, self.name, *counts)
            log.info("dlq_job.requeued", job_id=job.id, done=counts[1] + counts[2], why="worker stopping")
            return status
        await self.pool.execute(query("dlq_job_finish"), job.id, self.name, status, error, *counts)
        log.info(
            "dlq_job.finished",
            job_id=job.id,
            status=status,
            selected=counts[0],
            replayed=counts[1],
            already=counts[2],
            failed=counts[3],
        )
        return status

    async def _beat(self, job_id: int, flags: _Flags) -> None:
        while not flags.lost:
            await asyncio.sleep(self.heartbeat_s)
            try:
                flags.saw(await self.pool.fetchval(query("dlq_job_heartbeat"), job_id, self.name))
            except Exception as e:  # a blip: the next beat tries again (STALE_S is many beats)
                log.warning("dlq_job.heartbeat_failed", job_id=job_id, error=type(e).__name__)
