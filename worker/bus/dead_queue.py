"""Dead letters, the I/O half: reading the dead queue without losing anything, the audit, replay
and purge. It carries out what :mod:`worker.bus.dlq` decides; the design (ids, reading, replay
killed anywhere) is written there."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
import asyncpg
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from worker.bus import dead_index
from worker.bus.dlq import DeadLetter, pace_delay, replay_headers, replay_route
from worker.bus.publisher import Publisher
from worker.bus.topology import Topology, queue_depth
from worker.errors import DlqError, PublishFailed
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
        raise DlqError(
            f"lost the dead queue's channel ({type(e).__name__}); run the same command again"
        ) from None


async def replay(
    pool: asyncpg.Pool,
    publisher: Publisher,
    chosen: Sequence[Held],
    *,
    action_id: int,
    actor: str,
    rate: float | None = None,
    progress: Callable[[], None] | None = None,
    result: ReplayResult | None = None,
) -> ReplayResult:
    """Replays ``chosen`` one by one, at most ``rate`` per second, counting into ``result`` (so a
    caller knows how far an interrupted run got)."""
    result = result if result is not None else ReplayResult()
    started = time.monotonic()
    for done, held in enumerate(chosen):
        delay = pace_delay(done, rate, time.monotonic() - started)
        if delay:
            await asyncio.sleep(delay)
        d = held.letter
        try:
            published = await replay_one(pool, publisher, held, action_id=action_id, actor=actor)
        except PublishFailed as e:  # not confirmed, not recorded: still on the dead queue
            result.failed += 1
            result.errors.append(f"{d.short_id} {d.routing_key}: {e}")
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
            progress()
    return result


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
