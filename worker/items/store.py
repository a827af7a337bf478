"""The Postgres store: Items, their history and the inbox. Every state change goes through
:meth:`Store.transition`, one guarded statement that writes the history row and the outcome event
(the outbox, published by :mod:`worker.bus.relay`) with it."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import asyncpg
import orjson

from worker import metrics
from worker.items.batch import Batched
from worker.items.model import NO_CHANGES, Changes, HeldEvent, HistoryEntry, Item, id_range
from worker.items.states import Trigger, next_state
from worker.sql import query


def _jsonb_text(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    # written by orjson (each transition's detail, each event's payload), read by json
    await conn.set_type_codec("jsonb", encoder=_jsonb_text, decoder=json.loads, schema="pg_catalog")


async def _keep_session(_: asyncpg.Connection) -> None:
    """Nothing pooled uses session state (no LISTEN, advisory locks, SET or cursors), so the
    default reset on release (``RESET ALL`` and friends: a second transaction for every statement)
    is skipped. asyncpg still rolls back a transaction left open."""


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=30,
    )
    return pool


# Triggers that end an Item's way through the pipeline the first time (a repaired login returning
# it to atomic_verified is not one): what paw_item_time_to_end_seconds measures.
FIRST_ENDS = frozenset({Trigger.ATOMIC_VERIFIED, Trigger.ATOMIC_REJECTED, Trigger.FAILED})


class InboxRecord(NamedTuple):
    """An event recorded with the transition it caused (``$24``-``$26`` of ``transition``)."""

    event_key: str
    routing_key: str
    payload: Mapping[str, Any]


def _nobody() -> None:
    pass


class Store:
    def __init__(self, pool: asyncpg.Pool, *, on_event: Callable[[], None] = _nobody) -> None:
        self.pool = pool
        # An Item's most frequent statements share round trips (and writes their commits) with the
        # same statement of other Items when several wait at once (group commit).
        self._transitions = Batched(
            pool, query("transition"), name="transition", key=lambda a: a[0], column="id"
        )
        self._creates = Batched(
            pool, query("create_item"), name="create_item", key=lambda a: a[1], column="public_token_sha256"
        )
        self._gets = Batched(pool, query("get_item"), name="get_item", key=lambda a: a[0], column="id")
        # called after each statement that wrote an outcome event (the worker wakes its relay)
        self.on_event = on_event

    async def create_item(
        self,
        *,
        public_token_sha256: str,
        client_user_id: str,
        requested_account_id: str | None,
        request_id: str | None,
        cause: str,
        event_id: str | None,
        lease: tuple[uuid.UUID, float] | None = None,
        api_key_fingerprint: str | None = None,
    ) -> tuple[Item, bool]:
        """The Item for this public token, made now (``True``; leased to ``lease`` if given) or
        found (``False``; its lease untouched). ``api_key_fingerprint``: who submitted it over HTTP
        (its callbacks go there); a found Item keeps the owner it was made with."""
        args = (
            uuid.uuid4(),
            public_token_sha256,
            client_user_id,
            requested_account_id,
            request_id,
            cause,
            event_id,
            lease[0] if lease else None,
            lease[1] if lease else None,
            api_key_fingerprint,
        )
        for _ in range(2):  # a concurrent insert of the same token is invisible to our snapshot once
            row = await self._creates.fetchrow(*args)
            if row is not None:
                if row["created"]:
                    self.on_event()
                return Item.from_record(row), bool(row["created"])
        raise RuntimeError("create_item returned no row twice")

    async def get(self, item_id: uuid.UUID) -> Item | None:
        row = await self._gets.fetchrow(item_id)
        return None if row is None else Item.from_record(row)

    async def page(
        self,
        *,
        client_user_id: str | None,
        after: tuple[datetime, uuid.UUID],
        states: list[str] | None,
        limit: int,
    ) -> list[Item]:
        """Up to ``limit`` Items in ``(updated_at, id)`` order after the position ``after``: one
        user's (``client_user_id``) or everyone's, in ``states`` (``None``: any)."""
        if client_user_id is not None:
            rows = await self.pool.fetch(query("list_items_for_user"), client_user_id, *after, states, limit)
        else:
            rows = await self.pool.fetch(query("list_items"), *after, states, limit)
        return [Item.from_record(r) for r in rows]

    async def find(self, text: str, limit: int = 20) -> list[Item]:
        """Items ``text`` names: paw's id or a prefix of it (6+ hex digits), client_user_id, Plaid's
        item_id, Atomic's funding source id, the submission's or the last Plaid call's request_id."""
        low, high = id_range(text) or (None, None)
        rows = await self.pool.fetch(query("find_items"), text.strip(), low, high, limit)
        return [Item.from_record(r) for r in rows]

    async def filter(
        self,
        *,
        states: list[str] | None,
        error_code: str | None,
        since: datetime | None,
        until: datetime | None,
        client_user_id: str | None,
        limit: int,
        before: tuple[datetime, uuid.UUID] | None = None,
    ) -> list[Item]:
        """The latest changed Items first, filtered (None: any); ``before``: the page after that
        Item's (updated_at, id)."""
        rows = await self.pool.fetch(
            query("filter_items"),
            states,
            error_code,
            since,
            until,
            client_user_id,
            limit,
            *(before or (None, None)),
        )
        return [Item.from_record(r) for r in rows]

    async def claim(self, item_id: uuid.UUID, owner: uuid.UUID, lease_s: float) -> Item | None:
        """The Item, leased to ``owner``; ``None`` if another worker holds it (or it does not exist)."""
        row = await self.pool.fetchrow(query("claim_item"), item_id, owner, lease_s)
        return None if row is None else Item.from_record(row)

    async def release(self, item_id: uuid.UUID, owner: uuid.UUID) -> None:
        await self.pool.execute(query("release_item"), item_id, owner)

    async def owner_of(self, item_id: uuid.UUID) -> tuple[bool, str | None]:
        """(the Item exists, the fingerprint of the API key that submitted it: None over AMQP)."""
        row = await self.pool.fetchrow(query("item_owner"), item_id)
        return (False, None) if row is None else (True, row["api_key_fingerprint"])

    async def get_by_plaid_id(self, plaid_item_id: str) -> Item | None:
        row = await self.pool.fetchrow(query("get_item_by_plaid_id"), plaid_item_id)
        return None if row is None else Item.from_record(row)

    async def get_by_token_hash(self, public_token_sha256: str) -> Item | None:
        row = await self.pool.fetchrow(query("get_item_by_token_hash"), public_token_sha256)
        return None if row is None else Item.from_record(row)

    async def history(self, item_id: uuid.UUID) -> list[HistoryEntry]:
        rows = await self.pool.fetch(query("item_history"), item_id)
        return [
            HistoryEntry(
                r["from_state"], r["to_state"], r["trigger"], r["cause"], r["event_id"], r["detail"], r["at"]
            )
            for r in rows
        ]

    async def transition(
        self,
        item: Item,
        trigger: Trigger,
        *,
        cause: str,
        event_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
        changes: Changes = NO_CHANGES,
        conn: asyncpg.Connection | None = None,
        lease: tuple[uuid.UUID, float | None] | None = None,
        unless_held: bool = False,
        same_version: bool = False,
        inbox: InboxRecord | None = None,
    ) -> Item | None:
        """Applies ``trigger`` to ``item`` if the database still holds it in ``item.state``.

        ``lease=(owner, seconds)`` renews ``owner``'s lease for that long, ``(owner, None)`` releases
        it (both only if ``owner`` holds it). ``unless_held``: refused while the Item holds an answer
        from Atomic (see ``record_event``). ``same_version``: refused if any transition moved the
        row since ``item`` was read. ``inbox``: the event that caused it, recorded in the same
        statement (outcome ``applied``); refused, with nothing recorded, if it is a duplicate.

        Returns the updated Item, or ``None`` when the transition was refused (the row had moved on).
        Raises :class:`IllegalTransition` if ``item.state`` itself does not allow the trigger.
        """
        to_state = next_state(item.state, trigger, resume=item.resume_state)
        # Only from the state the caller decided on: a step that started in `link` and failed must
        # not fail an Item another drive has exchanged meanwhile.
        allowed = [item.state.value]
        args = (
            item.id,
            to_state.value,
            allowed,
            trigger.value,
            cause,
            event_id,
            dict(detail or {}),
            *changes.sql_args(),
            *(lease or (None, None)),
            unless_held,
            item.version if same_version else None,
            *(inbox or (None, None, None)),
        )
        row = await (
            conn.fetchrow(query("transition"), *args)
            if conn is not None
            else self._transitions.fetchrow(*args)
        )
        if row is None:
            return None
        metrics.child(metrics.TRANSITIONS, row["from_state"], row["state"]).inc()
        moved = Item.from_record(row)
        if conn is None:  # committed already; a caller with its own transaction calls committed() after it
            self.committed(trigger, moved)
        return moved

    def committed(self, trigger: Trigger, moved: Item) -> None:
        """What follows a committed transition: the time-to-end metric, and a wake for the outcome
        relay (the event is visible now, not before the commit)."""
        if trigger in FIRST_ENDS:
            metrics.child(metrics.TIME_TO_END, moved.state.value).observe(
                (moved.updated_at - moved.created_at).total_seconds()
            )
        self.on_event()

    async def record_event(
        self,
        event_key: str,
        *,
        item_id: uuid.UUID | None,
        routing_key: str,
        outcome: str,
        payload: Mapping[str, Any],
        conn: asyncpg.Connection | None = None,
        version: int | None = None,
    ) -> bool:
        """``True`` if the event is new; ``False`` if it was recorded before, or if ``version`` is
        given and the Item has moved past it (:meth:`seen_event` tells which). An event ``held``
        marks its Item so that the submission's commit applies it."""
        row = await (conn or self.pool).fetchrow(
            query("record_event"), event_key, item_id, routing_key, outcome, dict(payload), version
        )
        return row is not None

    async def seen_event(self, event_key: str) -> bool:
        """Whether the event was recorded in the last 24 hours: a duplicate."""
        return bool(await self.pool.fetchval(query("seen_event"), event_key))

    async def add_note(
        self, item_id: uuid.UUID, kind: str, *, actor: str, text: str, message_id: str | None = None
    ) -> None:
        """Records something people did to the Item that is not a transition (``paw item retry``)."""
        await self.pool.execute(query("add_item_note"), item_id, kind, actor, text, message_id)

    async def notes(self, item_id: uuid.UUID) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.pool.fetch(query("item_notes"), item_id)]

    async def outbox_backlog(self) -> tuple[int, float]:
        """Outcome events not yet published, and the age in seconds of the oldest (0: none)."""
        row = await self.pool.fetchrow(query("outbox_backlog"))
        return int(row["unsent"]), float(row["oldest_s"])

    async def events(self, item_id: uuid.UUID) -> list[dict[str, Any]]:
        """The Item's outcome events still in the outbox, in sequence order, with ``sent_at``."""
        return [
            {**r["body"], "sent_at": r["sent_at"]}
            for r in await self.pool.fetch(query("item_events"), item_id)
        ]

    async def add_receiver_counts(self, rows: list[tuple[str, str, str, int]]) -> None:
        """Adds a receiver's counts (source, outcome, reason, n) to the current minute."""
        sources, outcomes, reasons, counts = (list(col) for col in zip(*rows, strict=True))
        await self.pool.execute(query("add_receiver_counts"), sources, outcomes, reasons, counts)

    async def prune_receiver_minutes(self) -> None:
        await self.pool.execute(query("prune_receiver_minutes"))

    async def receiver_last_hour(self) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.pool.fetch(query("receiver_last_hour"))]

    async def last_received(self) -> dict[str, datetime]:
        return {r["source"]: r["last_at"] for r in await self.pool.fetch(query("last_received"))}

    async def stuck_atomic_pending(self, older_than: timedelta, limit: int) -> list[Item]:
        rows = await self.pool.fetch(query("stuck_atomic_pending"), older_than, limit)
        return [Item.from_record(r) for r in rows]

    async def due_awaiting_verification(self, older_than: timedelta, limit: int) -> list[Item]:
        """Items in ``awaiting_verification`` not looked at for ``older_than``, marked looked-at now."""
        rows = await self.pool.fetch(query("due_awaiting_verification"), older_than, limit)
        return [Item.from_record(r) for r in rows]

    async def awaiting_since(self, item_id: uuid.UUID) -> datetime | None:
        """When the Item first entered ``awaiting_verification`` (None: never)."""
        at: datetime | None = await self.pool.fetchval(query("awaiting_since"), item_id)
        return at

    async def logins_to_check(self, older_than: timedelta, limit: int) -> list[uuid.UUID]:
        """Up to ``limit`` ``login_required`` Items not looked at for ``older_than``, marked as looked
        at now (several workers may run the check: each takes different ones)."""
        rows = await self.pool.fetch(query("logins_to_check"), older_than, limit)
        return [r["id"] for r in rows]

    async def touch(self, item_id: uuid.UUID) -> None:
        await self.pool.execute(query("touch_item"), item_id)

    async def lock_by_plaid_id(self, conn: asyncpg.Connection, plaid_item_id: str) -> Item | None:
        row = await conn.fetchrow(query("lock_item_by_plaid_id"), plaid_item_id)
        return None if row is None else Item.from_record(row)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection in a transaction, for statements that must commit together."""
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn

    async def held_events(self, conn: asyncpg.Connection, item_id: uuid.UUID) -> list[HeldEvent]:
        """The events held for the Item (Atomic answered before its submission committed), locked."""
        rows = await conn.fetch(query("held_events"), item_id)
        return [HeldEvent.from_record(r) for r in rows]

    async def settle_event(self, conn: asyncpg.Connection, event_key: str, outcome: str) -> None:
        await conn.execute(query("settle_event"), event_key, outcome)

    async def lock(self, conn: asyncpg.Connection, item_id: uuid.UUID) -> Item | None:
        row = await conn.fetchrow(query("lock_item"), item_id)
        return None if row is None else Item.from_record(row)

    async def set_conditions(
        self,
        conn: asyncpg.Connection,
        item_id: uuid.UUID,
        *,
        login_changed_at: int | None,
        consent_expires_at: datetime | None,
        disconnect_at: datetime | None,
        disconnect_reason: str | None,
    ) -> None:
        await conn.execute(
            query("set_conditions"),
            item_id,
            login_changed_at,
            consent_expires_at,
            disconnect_at,
            disconnect_reason,
        )

    async def destroy_tokens(self, item_id: uuid.UUID) -> None:
        await self.pool.execute(query("destroy_tokens"), item_id)

    async def need_atomic_refresh(self, conn: asyncpg.Connection, item_id: uuid.UUID) -> None:
        await conn.execute(query("need_atomic_refresh"), item_id)

    async def atomic_refreshed(self, item_id: uuid.UUID, seen: datetime) -> None:
        await self.pool.execute(query("atomic_refreshed"), item_id, seen)

    async def mark_atomic_removed(self, item_id: uuid.UUID) -> None:
        await self.pool.execute(query("mark_atomic_removed"), item_id)

    async def expiring(self, within: timedelta) -> list[Item]:
        return [Item.from_record(r) for r in await self.pool.fetch(query("expiring_items"), within)]

    async def count_by_state(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in await self.pool.fetch(query("count_by_state"))}

    async def record_operator_alert(self, error_code: str, service: str, step: str, hint: str) -> None:
        await self.pool.execute(query("record_operator_alert"), error_code, service, step, hint)

    async def recent_operator_alerts(self, within: timedelta) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.pool.fetch(query("recent_operator_alerts"), within)]

    async def mark_plaid_removed(self, item_id: uuid.UUID) -> None:
        await self.pool.execute(query("mark_plaid_removed"), item_id)
