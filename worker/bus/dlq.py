"""Dead letters: what on-call sees in ``<prefix>.dead`` and what it can do with them.

This module is pure (a dead letter's stable id, its summary, the filters, the headers of a replayed
copy, the pace of a bulk run) and is unit-tested without a broker; :mod:`worker.bus.dead_queue` does
the broker and database I/O and carries out what it decides.

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

import collections
import dataclasses
import decimal
import hashlib
import json
import re
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

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
from worker.redact import redact, redact_text

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
    # From the index (:mod:`worker.bus.dead_index`); a message read off the queue has the defaults.
    traceback: str = ""
    status: str = "dead"
    copies: int = 1
    item_state: str | None = None

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
            "status": self.status,
            "copies": self.copies,
            "item_state": self.item_state,
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
                "traceback": self.traceback,
            }
        )
        return out


# -- Pure: a dead letter in the index ----------------------------------------------------------

TRACEBACK_MAX = 16_000


def redacted_body(body: bytes) -> Any:
    """The body as the index keeps it: parsed JSON with tokens and secret fields masked, or the
    (masked) text of a body that is not JSON."""
    try:
        return redact(json.loads(body))
    except ValueError:
        return redact_text(body.decode("utf-8", "replace"))[:TRACEBACK_MAX]


def _uuid_or_none(text: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(text) if text else None
    except ValueError:
        return None


def index_args(d: DeadLetter, *, traceback: str = "", indexed_by: str = "worker") -> tuple[Any, ...]:
    """The arguments of ``dead_letter_record`` for ``d`` (worker/sql/dead_letters.sql)."""
    return (
        d.key,
        d.routing_key,
        d.message_id,
        d.queue,
        _uuid_or_none(d.refs.item_id),
        d.refs.plaid_item_id,
        d.refs.public_token_sha256,
        d.error_class,
        d.error_code,
        d.error_message,
        redact_text(traceback)[-TRACEBACK_MAX:],
        d.request_id,
        d.attempts,
        d.replays,
        d.first_failure,
        d.last_failure,
        redact(dict(d.headers)),
        redacted_body(d.body),
        indexed_by,
    )


def from_row(row: Mapping[str, Any]) -> DeadLetter:
    """A dead letter as the index holds it (body and headers redacted already)."""
    body = row["body"]
    return DeadLetter(
        key=row["key"],
        body=(body if isinstance(body, str) else json.dumps(body)).encode(),
        headers=row["headers"] or {},
        message_id=row["message_id"],
        routing_key=row["routing_key"],
        refs=ItemRefs(
            item_id=str(row["item_id"]) if row["item_id"] else None,
            public_token_sha256=row["public_token_sha256"],
            plaid_item_id=row["plaid_item_id"],
        ),
        error_class=row["error_class"],
        error_message=row["error_message"],
        error_code=row["error_code"],
        request_id=row["request_id"],
        attempts=row["attempts"],
        replays=row["replays"],
        first_failure=row["first_failure"],
        last_failure=row["dead_lettered_at"],
        queue=row["queue"],
        traceback=row["traceback"],
        status=row["status"],
        copies=row["copies"],
        item_state=row["item_state"],
    )


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


def parse_since(text: str, now: datetime, flag: str = "--since") -> datetime:
    """``90s``, ``30m``, ``2h``, ``1d`` (ago), or an ISO 8601 time (UTC unless it says otherwise)."""
    m = SINCE.match(text.strip())
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m[2]]
        return now - timedelta(**{unit: int(m[1])})
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{flag} wants 30m, 2h, 1d or an ISO time, got {text!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def topic_regex(pattern: str) -> str:
    """The AMQP topic ``pattern`` as a regular expression over ``'.' || routing_key`` (the same in
    Python's ``re`` and Postgres's ``~``): ``*`` is one word, ``#`` zero or more, as
    :func:`topic_matches` decides."""
    parts = []
    for word in pattern.split("."):
        if word == "#":
            parts.append(r"(\.[^.]*)*")
        elif word == "*":
            parts.append(r"\.[^.]*")
        else:
            parts.append(r"\." + "".join(c if c.isalnum() or c in "_-" else "\\" + c for c in word))
    return "^" + "".join(parts) + "$"


@dataclasses.dataclass(frozen=True)
class Filters:
    """Which dead letters a command acts on. Every given criterion must hold. The index applies them
    in SQL (``dead_letters_matching``, through :meth:`sql_args`): the one definition of what a
    filter picks."""

    ids: tuple[str, ...] = ()  # id prefixes (any may match)
    item: str | None = None  # our Item id, or Plaid's item_id
    code: str | None = None  # error code, exact (case-insensitive)
    error: str | None = None  # substring of the error class or message (case-insensitive)
    since: datetime | None = None  # dead-lettered at or after
    routing_key: str | None = None  # AMQP topic pattern
    until: datetime | None = None  # dead-lettered before
    min_attempts: int | None = None
    state: str | None = None  # the Item's current state (known only to the index)

    @property
    def empty(self) -> bool:
        return not (
            self.ids
            or self.item
            or self.code
            or self.error
            or self.since
            or self.routing_key
            or self.until
            or self.min_attempts
            or self.state
        )

    def sql_args(self, status: str | None = "dead") -> tuple[Any, ...]:
        """The ten arguments of ``dead_letters_matching`` (worker/sql/dead_letters.sql)."""
        return (
            status,
            list(self.ids) or None,
            self.item or None,
            self.code or None,
            self.error or None,
            self.since,
            self.until,
            topic_regex(self.routing_key) if self.routing_key else None,
            self.min_attempts or None,
            self.state or None,
        )

    def public(self) -> dict[str, Any]:
        """The filters as recorded in ``dlq_actions``."""
        out: dict[str, Any] = {
            "ids": list(self.ids),
            "item": self.item,
            "code": self.code,
            "error": self.error,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "routing_key": self.routing_key,
            "min_attempts": self.min_attempts,
            "state": self.state,
        }
        return {k: v for k, v in out.items() if v}

    @classmethod
    def from_public(cls, data: Mapping[str, Any]) -> Filters:
        """The filters :meth:`public` wrote (a job's ``filters``, an audit row's); keys that are not
        filters (``limit``, ``all``, ``rate``) are left alone. Raises ValueError on a malformed value."""

        def when(name: str) -> datetime | None:
            text = data.get(name)
            if not text:
                return None
            parsed = datetime.fromisoformat(str(text))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

        def text(name: str) -> str | None:
            value = data.get(name)
            return str(value) if value else None

        ids = data.get("ids") or ()
        if isinstance(ids, str) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"ids must be a list of id prefixes, got {ids!r}")
        attempts = data.get("min_attempts")
        return cls(
            ids=tuple(ids),
            item=text("item"),
            code=text("code"),
            error=text("error"),
            since=when("since"),
            until=when("until"),
            routing_key=text("routing_key"),
            min_attempts=int(attempts) if attempts else None,
            state=text("state"),
        )


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


def replay_route(d: DeadLetter, own_queue: Collection[str]) -> tuple[str, bool]:
    """Where a replayed copy goes: (routing key, False) to the events exchange with its original
    routing key; or (queue, True) straight back to the work queue it failed on, for a queue in
    ``own_queue`` (the callbacks queue: through the exchange the event would reach every other
    subscriber of ``item.state.#`` a second time). The consumer reads the original routing key from
    ``x-paw-routing-key``, which the copy keeps."""
    if d.queue and d.queue in own_queue:
        return d.queue, True
    return d.routing_key, False


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
