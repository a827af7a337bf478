"""Dead letters: what on-call sees in ``<prefix>.dead`` and what it can do with them.

The first half is pure (a dead letter's stable id, its summary, the filters, the headers of a
replayed copy, the pace of a bulk run) and is unit-tested without a broker. The second half does the
broker and database I/O and carries out what the first half decides.

**The id.** A dead letter's id is ``sha256(original routing key, message_id, x-paw-replays, body)``
in hex; people see the first 12 characters and may type any unique prefix of 6 or more. It depends
only on what the message *is*, never on headers the broker or the consumer rewrite (``x-death``,
``x-delivery-count``, failure times), so it is the same on every read, in every process, and after
a requeue. Two copies of one message (a worker killed after its dead-letter copy was confirmed but
before the ack dead-letters the redelivery again) share an id and are replayed once, which is right:
the consumers deduplicate identical content anyway. ``x-paw-replays`` is part of it, so a message
that is replayed and dies again is a new dead letter with a new id.

**Reading without losing anything.** The dead queue is read with ``basic.get`` *without* ack on a
channel of its own, up to the depth it had when the read started (a snapshot: a busy queue cannot
keep a scan going). Every message read stays unacked, so nobody else takes it while we look. Only a
replayed message (after its copy was confirmed and recorded) or a purged one is ever acked; the rest
go back with one ``basic.nack(multiple, requeue)`` on the last of them, which keeps the queue's
order (closing the channel would return them too, but a quorum queue then shuffles them). A killed
CLI loses nothing either: the broker requeues a dead connection's unacked messages (order aside).
The costs: a colleague's scan at the same moment does not see the messages we hold; quorum queues
count each return in ``x-delivery-count`` (no limit on 3.10, but RabbitMQ 4.0 to 4.2 default quorum
queues to a delivery limit of 20 and drop beyond it: there, give the dead queue a policy without a
delivery limit); and a hold longer than the broker's ``consumer_timeout`` (30 min by default) closes
the channel, which returns the messages and stops the run, so pace very long replays in ``--limit``
slices. Copying the queue into Postgres would avoid these, but would make two places that hold dead
letters; the queue stays the one place.

**Replay, killed anywhere.** Per message: *claim* (insert its id into ``dlq_replayed`` inside an
open transaction: a second replayer of the same id waits on that row) → *publish* to the events
exchange with the original routing key and wait for the confirm → *record* (commit) → *ack* it from
the dead queue. Killed before the commit: the transaction rolls back and the message goes back to the
dead queue, so a second run publishes it again (a duplicate only if the broker had already taken the
first copy, which the idempotent consumers absorb; never a loss). Killed after the commit: the second
run finds the id recorded and only acks. A publish that fails rolls back and leaves the message where
it was.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import decimal
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import aiormq
import asyncpg
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from worker.bus import Publisher, Topology, queue_depth
from worker.errors import DlqError, PublishFailed
from worker.messages import (
    H_ATTEMPTS,
    H_ERROR_CLASS,
    H_ERROR_CODE,
    H_ERROR_MESSAGE,
    H_FIRST_FAILURE,
    H_LAST_FAILURE,
    H_QUEUE,
    H_REPLAYS,
    H_REQUEST_ID,
    H_ROUTING_KEY,
)
from worker.redact import redact
from worker.sql import query

log = structlog.get_logger(__name__)

H_REPLAYED_AT = "x-paw-replayed-at"
H_REPLAYED_BY = "x-paw-replayed-by"

SHORT_ID = 12
MIN_ID = 6
ID_PATTERN = re.compile(r"^[0-9a-f]{6,64}$")

# What a replayed copy must not carry: the failure of the last life (the consumer starts a fresh
# attempt count and first-failure time from their absence) and the broker's own bookkeeping.
FAILURE_HEADERS = frozenset(
    {
        H_ATTEMPTS,
        H_FIRST_FAILURE,
        H_LAST_FAILURE,
        H_ERROR_CLASS,
        H_ERROR_MESSAGE,
        H_ERROR_CODE,
        H_REQUEST_ID,
        H_QUEUE,
    }
)
BROKER_HEADER_PREFIXES = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count")


# -- Pure: what a dead letter is ---------------------------------------------------------------


def plain(value: Any) -> Any:
    """A JSON-safe copy of an AMQP header value (bytes, timestamps and decimals included)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def message_key(routing_key: str, message_id: str | None, replays: int, body: bytes) -> str:
    """The stable id of a dead letter (see the module docstring)."""
    h = hashlib.sha256()
    for part in (routing_key.encode(), (message_id or "").encode(), str(replays).encode()):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    h.update(body)
    return h.hexdigest()


def _text(headers: Mapping[str, Any], name: str) -> str:
    value = plain(headers.get(name))
    return value if isinstance(value, str) else ""


def _count(headers: Mapping[str, Any], name: str) -> int:
    value = headers.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _when(headers: Mapping[str, Any], name: str) -> datetime | None:
    value = headers.get(name)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = plain(value)
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class ItemRefs:
    """What a message says about its Item: our id, or what leads to it."""

    item_id: str | None = None
    public_token_sha256: str | None = None  # item.link carries the token, not the Item id
    plaid_item_id: str | None = None  # Plaid webhooks name Plaid's item_id


def item_refs(routing_key: str, data: Any) -> ItemRefs:
    """The Item a message is about, from its body (``item.drive``) or envelope (webhooks)."""
    if not isinstance(data, dict):
        return ItemRefs()
    hook = data.get("webhook")
    hook = hook if isinstance(hook, dict) else {}

    def text(value: Any) -> str | None:
        return value if isinstance(value, str) and value else None

    if routing_key.startswith("webhook.atomic."):
        return ItemRefs(item_id=text(hook.get("account_ref")))
    if routing_key.startswith("webhook.plaid."):
        return ItemRefs(plaid_item_id=text(hook.get("item_id")))
    if routing_key == "item.link":
        token = text(data.get("public_token"))
        return ItemRefs(public_token_sha256=hashlib.sha256(token.encode()).hexdigest() if token else None)
    return ItemRefs(item_id=text(data.get("item_id")))


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    key: str
    body: bytes
    headers: Mapping[str, Any]  # JSON-safe (see :func:`plain`), not redacted
    message_id: str | None
    routing_key: str  # the original one, where a replay publishes it
    refs: ItemRefs
    error_class: str
    error_message: str
    error_code: str
    request_id: str
    attempts: int
    replays: int
    first_failure: datetime | None
    last_failure: datetime | None
    queue: str

    @classmethod
    def parse(cls, body: bytes, headers: Mapping[str, Any] | None, message_id: str | None) -> DeadLetter:
        h: dict[str, Any] = plain(dict(headers or {}))
        raw = dict(headers or {})
        routing_key = _text(h, H_ROUTING_KEY)
        replays = _count(raw, H_REPLAYS)
        try:
            data = json.loads(body)
        except ValueError:  # UnicodeDecodeError included: poison is a dead letter too
            data = None
        return cls(
            key=message_key(routing_key, message_id, replays, body),
            body=body,
            headers=h,
            message_id=message_id,
            routing_key=routing_key,
            refs=item_refs(routing_key, data),
            error_class=_text(h, H_ERROR_CLASS),
            error_message=_text(h, H_ERROR_MESSAGE),
            error_code=_text(h, H_ERROR_CODE),
            request_id=_text(h, H_REQUEST_ID),
            attempts=_count(raw, H_ATTEMPTS),
            replays=replays,
            first_failure=_when(raw, H_FIRST_FAILURE),
            last_failure=_when(raw, H_LAST_FAILURE),
            queue=_text(h, H_QUEUE),
        )

    @property
    def short_id(self) -> str:
        return self.key[:SHORT_ID]

    @property
    def item(self) -> str | None:
        """What to show in the item column: our Item id, else Plaid's."""
        return self.refs.item_id or self.refs.plaid_item_id

    @property
    def reason(self) -> str:
        """Plaid's (or Atomic's) error code when there is one, else the exception class."""
        return self.error_code or self.error_class or "unknown"

    def age(self, now: datetime) -> timedelta | None:
        return now - self.last_failure if self.last_failure else None

    def summary(self, now: datetime) -> dict[str, Any]:
        """One row of ``paw dlq list --json``: redacted, JSON-safe."""
        age = self.age(now)
        out = {
            "id": self.short_id,
            "key": self.key,
            "age_s": round(age.total_seconds(), 3) if age is not None else None,
            "dead_lettered_at": self.last_failure.isoformat() if self.last_failure else None,
            "first_failure_at": self.first_failure.isoformat() if self.first_failure else None,
            "routing_key": self.routing_key,
            "item_id": self.refs.item_id,
            "plaid_item_id": self.refs.plaid_item_id,
            "error_class": self.error_class,
            "error_code": self.error_code,
            "error": self.error_message,
            "request_id": self.request_id,
            "attempts": self.attempts,
            "replays": self.replays,
            "message_id": self.message_id,
            "queue": self.queue,
        }
        redacted: dict[str, Any] = redact(out)
        return redacted

    def detail(self, now: datetime) -> dict[str, Any]:
        """Everything ``paw dlq show`` prints: the summary, every header, the broker's hops, the
        body; tokens and secret-named fields redacted."""
        try:
            body: Any = json.loads(self.body)
        except ValueError:
            body = self.body.decode("utf-8", "replace")
        history = self.headers.get("x-death")
        out: dict[str, Any] = redact(
            {
                **self.summary(now),
                "headers": dict(self.headers),
                "history": history if isinstance(history, list) else [],
                "body": body,
            }
        )
        return out


def human_age(age: timedelta | None) -> str:
    if age is None:
        return "?"
    s = max(int(age.total_seconds()), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def by_reason(letters: Iterable[DeadLetter]) -> list[tuple[str, int]]:
    """How many dead letters per reason, most first."""
    return collections.Counter(d.reason for d in letters).most_common()


# -- Pure: which dead letters ------------------------------------------------------------------


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching, as in a binding: ``*`` is one word, ``#`` zero or more."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and (p[0] == "*" or p[0] == k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), routing_key.split("."))


SINCE = re.compile(r"^(\d+)([smhd])$")


def parse_since(text: str, now: datetime) -> datetime:
    """``90s``, ``30m``, ``2h``, ``1d`` (ago), or an ISO 8601 time (UTC unless it says otherwise)."""
    m = SINCE.match(text.strip())
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m[2]]
        return now - timedelta(**{unit: int(m[1])})
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since wants 30m, 2h, 1d or an ISO time, got {text!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class Filters:
    """Which dead letters a command acts on. Every given criterion must hold."""

    ids: tuple[str, ...] = ()  # id prefixes (any may match)
    item: str | None = None  # our Item id, or Plaid's item_id
    code: str | None = None  # error code, exact (case-insensitive)
    error: str | None = None  # substring of the error class or message (case-insensitive)
    since: datetime | None = None  # dead-lettered at or after
    routing_key: str | None = None  # AMQP topic pattern

    @property
    def empty(self) -> bool:
        return not (self.ids or self.item or self.code or self.error or self.since or self.routing_key)

    def matches(self, d: DeadLetter) -> bool:
        if self.ids and not any(d.key.startswith(i) for i in self.ids):
            return False
        if self.item and self.item.lower() not in {
            (d.refs.item_id or "").lower(),
            (d.refs.plaid_item_id or "").lower(),
        }:
            return False
        if self.code and d.error_code.upper() != self.code.upper():
            return False
        if self.error and self.error.lower() not in f"{d.error_class} {d.error_message}".lower():
            return False
        if self.since and (d.last_failure is None or d.last_failure < self.since):
            return False
        return not (self.routing_key and not topic_matches(self.routing_key, d.routing_key))

    def public(self) -> dict[str, Any]:
        """The filters as recorded in ``dlq_actions``."""
        out: dict[str, Any] = {
            "ids": list(self.ids),
            "item": self.item,
            "code": self.code,
            "error": self.error,
            "since": self.since.isoformat() if self.since else None,
            "routing_key": self.routing_key,
        }
        return {k: v for k, v in out.items() if v}


def select(letters: Sequence[DeadLetter], filters: Filters, limit: int | None = None) -> list[int]:
    """Positions of the dead letters the filters pick, in queue order, at most ``limit``."""
    picked = [i for i, d in enumerate(letters) if filters.matches(d)]
    return picked[:limit] if limit else picked


def unknown_or_ambiguous_ids(ids: Iterable[str], letters: Iterable[DeadLetter]) -> dict[str, list[str]]:
    """Id prefixes that name no dead letter (``[]``) or more than one (their short ids)."""
    keys = {d.key for d in letters}
    out: dict[str, list[str]] = {}
    for prefix in ids:
        found = sorted(k[:SHORT_ID] for k in keys if k.startswith(prefix))
        if len(found) != 1:
            out[prefix] = found
    return out


# -- Pure: how a replayed copy looks and how fast they go ---------------------------------------


def replay_headers(headers: Mapping[str, Any], *, actor: str, now: datetime) -> dict[str, Any]:
    """The headers of a replayed copy: the last life's failure and the broker's hops dropped (so
    attempts start again at 0), the original routing key kept, ``x-paw-replays`` one higher."""
    out = {
        k: v
        for k, v in headers.items()
        if k not in FAILURE_HEADERS and not k.startswith(BROKER_HEADER_PREFIXES)
    }
    out[H_REPLAYS] = _count(headers, H_REPLAYS) + 1
    out[H_REPLAYED_AT] = now.isoformat()
    out[H_REPLAYED_BY] = actor
    return out


def replay_plan(letters: Sequence[DeadLetter], replayed: set[str]) -> list[str]:
    """What a replay does with each dead letter, in order: ``publish``; ``replayed`` (recorded by an
    earlier run: acked only); ``copy`` (a second copy of one published just before: acked only)."""
    seen: set[str] = set()
    out = []
    for d in letters:
        if d.key in replayed:
            out.append("replayed")
        elif d.key in seen:
            out.append("copy")
        else:
            seen.add(d.key)
            out.append("publish")
    return out


def pace_delay(done: int, rate: float | None, elapsed: float) -> float:
    """Seconds to wait before the next message so that ``done`` messages took at least
    ``done / rate`` seconds (no wait without a rate)."""
    if not rate or rate <= 0:
        return 0.0
    return max(0.0, done / rate - elapsed)


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
            await publisher.publish(
                d.routing_key,
                d.body,
                headers=replay_headers(d.headers, actor=actor, now=datetime.now(UTC)),
                message_id=d.message_id,
            )
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


async def purge(chosen: Sequence[Held], *, actor: str, progress: Callable[[], None] | None = None) -> int:
    """Logs each dead letter (redacted, body and headers included), then acks it. Returns how many."""
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
        await _ack(held)
        purged += 1
        if progress is not None:
            progress()
    return purged
