"""Dead letters, the I/O half: reading the dead queue without losing anything, the audit, replay
and purge. It carries out what :mod:`worker.bus.dlq` decides; the design (ids, reading, replay
killed anywhere) is written there."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
import asyncpg
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from worker.bus import dead_index, dlq
from worker.bus.dlq import SHORT_ID, DeadLetter, Filters, pace_delay, replay_headers, replay_route
from worker.bus.publisher import Publisher
from worker.bus.topology import Topology, queue_depth
from worker.errors import DeadQueueLost, DlqError, PublishFailed
from worker.sql import query

log = structlog.get_logger(__name__)


# -- I/O: the dead queue -----------------------------------------------------------------------


@dataclasses.dataclass
class Held:
    """A dead letter read from the queue and not acked: it returns to the queue unless acked."""

    letter: DeadLetter
    message: AbstractIncomingMessage


async def dlq_depth(connection: AbstractRobustConnection, topo: Topology) -> int:
    """Messages ready on the dead queue (a passive declare: changes nothing). Messages someone holds
    unacked right now (a running scan) are not counted."""
    channel = await connection.channel()
    try:
        return await _depth(channel, topo)
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def _depth(channel: aio_pika.abc.AbstractChannel, topo: Topology) -> int:
    try:
        return await queue_depth(channel, topo.dead_queue)
    except aiormq.exceptions.ChannelNotFoundEntity:
        raise DlqError(
            f"there is no dead queue {topo.dead_queue!r} (check PAW_QUEUE_PREFIX; a worker declares it)"
        ) from None


@contextlib.asynccontextmanager
async def held_dead_letters(
    connection: AbstractRobustConnection, topo: Topology
) -> AsyncIterator[tuple[list[Held], int]]:
    """Reads the dead queue up to the depth it had on entry, holding every message unacked; on exit
    gives back, in order, everything not acked. Yields (held, depth at start)."""
    channel = await connection.channel()
    held: list[Held] = []
    try:
        depth = await _depth(channel, topo)
        queue = await channel.get_queue(topo.dead_queue, ensure=False)
        for _ in range(depth):
            message = await queue.get(no_ack=False, fail=False, timeout=10)
            if message is None:  # someone else took the rest meanwhile
                break
            held.append(Held(DeadLetter.parse(message.body, message.headers, message.message_id), message))
        yield held, depth
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                unacked = [h for h in held if not h.message.processed]
                if unacked and not channel.is_closed:  # back in their order, in one frame
                    await unacked[-1].message.nack(multiple=True, requeue=True)
                await channel.close()


async def resolve_items(pool: asyncpg.Pool, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
    """Fills in our Item id where the message only names its public token (``item.link``) or Plaid's
    item_id (Plaid webhooks), from the database."""
    hashes = sorted({d.refs.public_token_sha256 for d in letters if d.refs.public_token_sha256})
    plaid_ids = sorted({d.refs.plaid_item_id for d in letters if d.refs.plaid_item_id and not d.refs.item_id})
    if not hashes and not plaid_ids:
        return list(letters)
    rows = await pool.fetch(query("dlq_item_refs"), hashes, plaid_ids)
    by_hash = {r["public_token_sha256"]: str(r["id"]) for r in rows}
    by_plaid = {r["plaid_item_id"]: str(r["id"]) for r in rows if r["plaid_item_id"]}
    out = []
    for d in letters:
        found = by_hash.get(d.refs.public_token_sha256 or "") or by_plaid.get(d.refs.plaid_item_id or "")
        out.append(
            dataclasses.replace(d, refs=dataclasses.replace(d.refs, item_id=found))
            if found and not d.refs.item_id
            else d
        )
    return out


# -- I/O: the audit ----------------------------------------------------------------------------


async def start_action(
    pool: asyncpg.Pool, action: str, *, actor: str, filters: Mapping[str, Any], dry_run: bool
) -> int:
    action_id: int = await pool.fetchval(query("dlq_action_start"), action, actor, dict(filters), dry_run)
    return action_id


async def finish_action(pool: asyncpg.Pool, action_id: int, count: int) -> None:
    await pool.execute(query("dlq_action_finish"), action_id, count)


async def already_replayed(pool: asyncpg.Pool, keys: Iterable[str]) -> set[str]:
    rows = await pool.fetch(query("dlq_replayed_keys"), sorted(set(keys)))
    return {r["message_key"] for r in rows}


# -- I/O: replay and purge ---------------------------------------------------------------------


@dataclasses.dataclass
class ReplayResult:
    replayed: int = 0  # published, confirmed, recorded, acked
    already: int = 0  # recorded by an earlier run (or a colleague): acked without publishing
    failed: int = 0  # not confirmed: left on the dead queue
    errors: list[str] = dataclasses.field(default_factory=list)
    failed_keys: set[str] = dataclasses.field(default_factory=set)
    selected: int = 0  # what :func:`run_replay` chose when it first took the queue
    depth: int = 0  # the dead queue's depth then
    stopped: bool = False  # asked to stop (should_stop) before everything chosen was done

    @property
    def processed(self) -> int:
        return self.replayed + self.already + self.failed


async def replay_one(
    pool: asyncpg.Pool, publisher: Publisher, held: Held, *, action_id: int, actor: str
) -> bool:
    """Claim → publish with confirm → record → ack. True if published, False if it had been
    replayed before (then only acked). Raises :class:`worker.bus.PublishFailed` (nothing recorded,
    the message stays held and returns to the dead queue)."""
    d = held.letter
    async with pool.acquire() as conn, conn.transaction():
        claimed = await conn.fetchval(query("dlq_claim"), d.key, action_id, d.routing_key)
        if claimed is not None:
            target, to_queue = replay_route(d, publisher.topo.replayed_to_own_queue)
            await publisher.publish(
                target,
                d.body,
                headers=replay_headers(d.headers, actor=actor, now=datetime.now(UTC)),
                message_id=d.message_id,
                to_queue=to_queue,
            )
        await dead_index.mark(conn, d.key, "replayed", action_id if claimed is not None else None)
    await _ack(held)
    return claimed is not None


async def _ack(held: Held) -> None:
    try:
        await held.message.ack()
    except (aio_pika.exceptions.ChannelInvalidStateError, aiormq.exceptions.AMQPError, ConnectionError) as e:
        # the broker took the dead queue's channel away (consumer_timeout, a restart): everything not
        # acked went back to the queue; what was replayed is recorded, so a second run only acks it
        raise DeadQueueLost(
            f"lost the dead queue's channel ({type(e).__name__}); run the same command again"
        ) from None


# What a run reports as it goes: called once the selection is known, then after each message.
Progress = Callable[[ReplayResult], Awaitable[None]]
# Asked between messages (and during a paced wait): True ends the run there, cleanly.
ShouldStop = Callable[[], bool]

STOP_CHECK_S = 0.1  # how often a paced wait asks whether to stop
SLICE_S = 300.0  # how long one run holds the dead queue before giving it back and taking it again
RETAKES = 3  # takes in a row that find none of what is left before those count as failed


async def _pause(delay: float, should_stop: ShouldStop | None) -> None:
    """Sleeps ``delay`` seconds, in short steps when something may ask to stop meanwhile."""
    end = time.monotonic() + delay
    while (left := end - time.monotonic()) > 0:
        if should_stop is not None and should_stop():
            return
        await asyncio.sleep(min(left, STOP_CHECK_S) if should_stop is not None else left)


async def replay(
    pool: asyncpg.Pool,
    publisher: Publisher,
    chosen: Sequence[Held],
    *,
    action_id: int,
    actor: str,
    rate: float | None = None,
    progress: Progress | None = None,
    result: ReplayResult | None = None,
    should_stop: ShouldStop | None = None,
) -> ReplayResult:
    """Replays ``chosen`` one by one, at most ``rate`` per second, counting into ``result`` (so a
    caller knows how far an interrupted run got); ``should_stop`` is asked before each message."""
    result = result if result is not None else ReplayResult()
    started = time.monotonic()
    for done, held in enumerate(chosen):
        delay = pace_delay(done, rate, time.monotonic() - started)
        if delay:
            await _pause(delay, should_stop)
        if should_stop is not None and should_stop():
            break
        d = held.letter
        try:
            published = await replay_one(pool, publisher, held, action_id=action_id, actor=actor)
        except PublishFailed as e:  # not confirmed, not recorded: still on the dead queue
            result.failed += 1
            result.errors.append(f"{d.short_id} {d.routing_key}: {e}")
            result.failed_keys.add(d.key)
            log.error("dlq.replay_failed", dlq_id=d.short_id, routing_key=d.routing_key, error=str(e))
        else:
            if published:
                result.replayed += 1
            else:
                result.already += 1
            log.debug(
                "dlq.replayed" if published else "dlq.already_replayed",
                dlq_id=d.short_id,
                routing_key=d.routing_key,
                message_id=d.message_id,
            )
        if progress is not None:
            await progress(result)
    return result


async def take(pool: asyncpg.Pool, held: Sequence[Held], filters: Filters, limit: int | None) -> list[Held]:
    """The held messages the filters pick, in queue order: the index picks (after adding rows for
    dead letters it did not know, so nothing on the queue escapes a filter), the queue supplies."""
    letters = await resolve_items(pool, [h.letter for h in held])
    await dead_index.reindex(pool, letters)
    picked = set(await dead_index.chosen_keys(pool, filters, limit))
    # a copy left on the queue by a replay recorded but not acked (killed, or the channel lost): the
    # replay only acks it
    picked |= set(await dead_index.chosen_keys(pool, filters, status="replayed")) & {d.key for d in letters}
    return [Held(d, h.message) for h, d in zip(held, letters, strict=True) if d.key in picked]


async def run_replay(
    pool: asyncpg.Pool,
    connection: AbstractRobustConnection,
    topo: Topology,
    publisher: Publisher,
    filters: Filters,
    *,
    limit: int | None,
    rate: float | None,
    actor: str,
    action_id: int,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    result: ReplayResult | None = None,
    slice_s: float = SLICE_S,
) -> ReplayResult:
    """The replay ``paw dlq replay`` and the replay jobs run: takes the dead queue, chooses through
    the index what ``filters`` pick (at most ``limit``), and replays it at most ``rate`` a second,
    counting into ``result``. The caller opens and closes the audit row ``action_id``.

    The queue is held at most ``slice_s`` at a time (under the broker's consumer_timeout): then what
    is left goes back and the queue is taken again for the rest of what the first take chose (never
    more: a copy that dies again meanwhile is a new dead letter for another run), until all of it is
    replayed; a dead-queue channel the broker takes away is taken again the same way. What is still
    not on the queue after :data:`RETAKES` takes in a row (another reader holds it) counts as failed.
    ``should_stop`` ends the run between messages (``result.stopped``): what was replayed is
    recorded, the rest is back on the dead queue."""
    result = result if result is not None else ReplayResult()
    stopping: ShouldStop = should_stop or (lambda: False)
    planned: set[str] | None = None  # what the first take chose
    misses = 0  # takes in a row that replayed none of what is left
    while True:
        if stopping():
            result.stopped = True
            break
        before = result.processed
        try:
            async with held_dead_letters(connection, topo) as (held, depth):
                chosen = await take(pool, held, filters, limit if planned is None else None)
                if planned is None:
                    planned = {h.letter.key for h in chosen}
                    result.selected, result.depth = len(chosen), depth
                    log.info(
                        "dlq.replay_started",
                        action_id=action_id,
                        actor=actor,
                        selected=len(chosen),
                        limit=limit,
                        rate=rate,
                        **filters.public(),
                    )
                    if progress is not None:
                        await progress(result)
                else:  # the rest of the first choice; not what failed in this run (it stays dead)
                    chosen = [
                        h
                        for h in chosen
                        if h.letter.key in planned and h.letter.key not in result.failed_keys
                    ]
                if chosen:
                    await replay(
                        pool,
                        publisher,
                        chosen,
                        action_id=action_id,
                        actor=actor,
                        rate=rate,
                        progress=progress,
                        result=result,
                        should_stop=functools.partial(_stop_or_after, stopping, time.monotonic() + slice_s),
                    )
        except DeadQueueLost:
            log.warning("dlq.replay_retake", action_id=action_id, done=result.processed, why="channel lost")
        if not planned:
            break
        left = await _left(pool, planned, result.failed_keys)
        if not left:
            break
        misses = 0 if result.processed > before else misses + 1
        if misses > RETAKES:  # not on the queue when taken again: someone else holds them
            _missing(result, left, topo)
            break
        if misses:  # our own messages given back a moment ago may not be counted yet
            await _pause(1.0, stopping)
        why = "not found yet" if misses else "slice"
        log.info("dlq.replay_retake", action_id=action_id, done=result.processed, left=len(left), why=why)
    return result


async def _left(pool: asyncpg.Pool, planned: set[str], failed: set[str]) -> set[str]:
    """What a run chose and has not replayed yet (still dead in the index), what failed aside."""
    status = await dead_index.statuses(pool, sorted(planned))
    return {k for k in planned if status.get(k) == "dead"} - failed


def _missing(result: ReplayResult, keys: set[str], topo: Topology) -> None:
    for key in sorted(keys):
        result.failed += 1
        result.failed_keys.add(key)
        result.errors.append(
            f"{key[:SHORT_ID]}: not on {topo.dead_queue} when taken again (held by another reader?)"
        )
    log.error("dlq.replay_missing", missing=len(keys))


def _stop_or_after(stopping: ShouldStop, deadline: float) -> bool:
    return stopping() or time.monotonic() >= deadline


# -- I/O: the plan of a replay -----------------------------------------------------------------

PLAN_ROWS = 200  # the dead letters a plan shows one by one (its counts cover everything)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a replay of some filters would do now, read from the index alone (the queue untouched)."""

    selected: int
    would_publish: int
    by_reason: list[tuple[str, int]]  # most first
    sample: list[DeadLetter]  # the first dead letters chosen, oldest first
    will: list[str]  # what happens to each of them: publish, replayed, copy (dlq.replay_plan)

    @property
    def would_ack_only(self) -> int:
        return self.selected - self.would_publish

    def public(self, now: datetime | None = None) -> dict[str, Any]:
        """The plan as JSON: counts, ``[reason, count]`` pairs, and the sample rows (redacted) each
        with what would happen to it (``will``)."""
        now = now or datetime.now(UTC)
        return {
            "selected": self.selected,
            "would_publish": self.would_publish,
            "would_ack_only": self.would_ack_only,
            "by_reason": [[r, n] for r, n in self.by_reason],
            "sample": [{**d.summary(now), "will": w} for d, w in zip(self.sample, self.will, strict=True)],
        }


async def plan_replay(
    pool: asyncpg.Pool, filters: Filters, limit: int | None, *, rows: int = PLAN_ROWS
) -> Plan:
    """What ``run_replay`` with these filters and limit would do, from the index: how many it would
    publish, how many it would only ack (replayed before), per reason, and the first ``rows``."""
    keys = await dead_index.chosen_keys(pool, filters, limit)
    replayed_before = await already_replayed(pool, keys)
    page = await dead_index.page(pool, filters, limit=min(limit or rows, rows))
    return Plan(
        selected=len(keys),
        would_publish=len(set(keys) - replayed_before),
        # with a limit, the reasons of what the limit keeps (of the rows shown); else of all matched
        by_reason=dlq.by_reason(page.letters) if limit else page.reasons,
        sample=page.letters,
        will=dlq.replay_plan(page.letters, replayed_before),
    )


async def purge(
    pool: asyncpg.Pool,
    chosen: Sequence[Held],
    *,
    action_id: int,
    actor: str,
    progress: Callable[[], None] | None = None,
) -> int:
    """Logs each dead letter (redacted, body and headers included), marks it purged in the index,
    then acks it. Returns how many. (Killed between the mark and the ack, the message goes back to
    the dead queue with its row saying purged: ``paw dlq reindex`` makes it dead again.)"""
    now = datetime.now(UTC)
    purged = 0
    for held in chosen:
        detail = held.letter.detail(now)
        log.info(
            "dlq.purged",
            actor=actor,
            dlq_id=detail["id"],
            routing_key=detail["routing_key"],
            message_id=detail["message_id"],
            error_code=detail["error_code"],
            error=detail["error"],
            headers=detail["headers"],
            body=detail["body"],
        )
        await dead_index.mark(pool, held.letter.key, "purged", action_id)
        await _ack(held)
        purged += 1
        if progress is not None:
            progress()
    return purged


async def purge_keys(
    pool: asyncpg.Pool,
    connection: AbstractRobustConnection,
    topo: Topology,
    keys: Iterable[str],
    *,
    actor: str,
    audit: Mapping[str, Any],
    progress: Callable[[], None] | None = None,
) -> tuple[int, int]:
    """Purges the dead letters ``keys`` names (chosen and confirmed from the index) that are still on
    the dead queue, reading it once; the audit row records who and how many, finished even when the
    run is cut off. ``progress`` is called after each one. Returns (action id, purged); the CLI and
    the console both purge through here."""
    confirmed = set(keys)
    async with held_dead_letters(connection, topo) as (held, _):
        chosen = [h for h in held if h.letter.key in confirmed]
        action_id = await start_action(pool, "purge", actor=actor, filters=audit, dry_run=False)
        purged = 0
        try:
            purged = await purge(pool, chosen, action_id=action_id, actor=actor, progress=progress)
        finally:
            await finish_action(pool, action_id, purged)
    return action_id, purged
