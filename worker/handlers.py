"""What each routing key means: parse, validate against ``schemas/``, and act.

Handlers raise :class:`Poison` for messages that can never be processed; the consumer dead-letters
those. Everything here is idempotent: a redelivered message changes nothing twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import asyncpg
import structlog

from worker.errors import Poison
from worker.items.model import Cause, Item, token_hash
from worker.items.parking import ParkedResult
from worker.items.pipeline import Pipeline
from worker.items.rules import (
    Decision,
    follow_ups,
    on_atomic_status,
    on_plaid_webhook,
    redelivery_worth_checking,
)
from worker.items.states import Trigger
from worker.items.store import InboxRecord, Store
from worker.messages import schema_for, validated

log = structlog.get_logger(__name__)


class Duplicate(Exception):
    """Raised inside a transaction to roll it back when the inbox already holds the event."""


# How often an event is decided on the Item as read and refused because a transition moved the Item
# meanwhile, before it is decided and applied under the Item's row lock instead.
UNLOCKED_TRIES = 3


class Find(NamedTuple):
    """How a webhook finds its Item: as committed (``read``), or locked in a transaction (``lock``)."""

    read: Callable[[], Awaitable[Item | None]]
    lock: Callable[[asyncpg.Connection], Awaitable[Item | None]]


def _detail(decision: Decision, envelope: dict[str, Any]) -> dict[str, Any]:
    """The history detail of a transition a webhook caused."""
    return {
        k: v
        for k, v in (
            ("error_code", decision.error_code),
            ("reason", envelope["webhook"].get("reason")),
            ("sent_at", envelope.get("sent_at")),
        )
        if v is not None
    }


class Handlers:
    def __init__(self, *, store: Store, pipeline: Pipeline) -> None:
        self.store = store
        self.pipeline = pipeline

    async def __call__(self, routing_key: str, body: bytes, message_id: str | None) -> None:
        name = schema_for(routing_key)
        if name is None:
            raise Poison(f"no handler for routing key {routing_key!r}")
        data = validated(name, body)
        if name == "item.link":
            await self.item_link(data, message_id)
        elif name == "item.drive":
            await self.item_drive(data, message_id)
        elif name == "item.repaired":
            await self.item_repaired(data, message_id)
        elif name == "webhook.atomic":
            await self.atomic_webhook(routing_key, data)
        else:
            await self.plaid_webhook(routing_key, data)

    async def parked(self, routing_key: str, body: bytes, message_id: str | None) -> None:
        """A result parked while the database was away (the parked queue's handler)."""
        try:
            result = ParkedResult.decode(body)
        except (ValueError, KeyError, TypeError) as e:
            raise Poison(f"not a parked result: {type(e).__name__}: {e}") from None
        structlog.contextvars.bind_contextvars(item_id=str(result.item_id))
        await self.pipeline.apply_parked(result)

    async def item_link(self, data: dict[str, Any], message_id: str | None) -> None:
        owner = uuid.uuid4()  # this message's lease on the Item it creates
        item, created = await self.store.create_item(
            public_token_sha256=token_hash(data["public_token"]),
            client_user_id=data["client_user_id"],
            requested_account_id=data.get("account_id"),
            request_id=data.get("request_id"),
            cause="item.link",
            event_id=message_id,
            lease=(owner, self.pipeline.lease_s),
        )
        structlog.contextvars.bind_contextvars(item_id=str(item.id))
        if created:
            log.info("item.submitted", client_user_id=item.client_user_id)
        await self.pipeline.drive(
            item.id,
            public_token=data["public_token"],
            cause=Cause("item.link", message_id),
            leased=item if created else None,
            owner=owner,
        )

    async def item_drive(self, data: dict[str, Any], message_id: str | None) -> None:
        item_id = uuid.UUID(data["item_id"])
        structlog.contextvars.bind_contextvars(item_id=str(item_id))
        if (
            await self.pipeline.drive(item_id, public_token=None, cause=Cause("item.drive", message_id))
            is None
        ):
            log.warning("item.unknown", reason=data["reason"])

    async def item_repaired(self, data: dict[str, Any], message_id: str | None) -> None:
        """The upstream app says its user finished Link update mode (which sends no webhook): ask
        Plaid, and resume the Item from where it stopped if its login works again."""
        item_id = uuid.UUID(data["item_id"])
        structlog.contextvars.bind_contextvars(item_id=str(item_id))
        cause = Cause("item.repaired", data.get("request_id") or message_id)
        item = await self.pipeline.drive(item_id, public_token=None, cause=cause, check_login=True)
        if item is None:
            log.warning("item.unknown", reason="item.repaired")
        else:
            log.info("item.repair_reported", state=item.state.value)

    async def atomic_webhook(self, routing_key: str, envelope: dict[str, Any]) -> None:
        hook = envelope["webhook"]
        try:
            item_id: uuid.UUID | None = uuid.UUID(hook["account_ref"])
        except ValueError:
            item_id = None
        structlog.contextvars.bind_contextvars(item_id=str(item_id), event_id=envelope["event_id"])

        async def read() -> Item | None:
            return await self.store.get(item_id) if item_id else None

        async def lock(conn: asyncpg.Connection) -> Item | None:
            return await self.store.lock(conn, item_id) if item_id else None

        await self._apply(
            f"atomic:{envelope['body_sha256']}",
            routing_key,
            envelope,
            Find(read, lock),
            lambda item: on_atomic_status(item, hook["status"], hook["funding_source_id"]),
        )

    async def plaid_webhook(self, routing_key: str, envelope: dict[str, Any]) -> None:
        hook = envelope["webhook"]
        plaid_item_id = hook.get("item_id")
        structlog.contextvars.bind_contextvars(plaid_item_id=plaid_item_id, event_id=envelope["event_id"])

        known = isinstance(plaid_item_id, str)

        async def read() -> Item | None:
            return await self.store.get_by_plaid_id(plaid_item_id) if known else None

        async def lock(conn: asyncpg.Connection) -> Item | None:
            return await self.store.lock_by_plaid_id(conn, plaid_item_id) if known else None

        item, decision, duplicate = await self._apply(
            f"plaid:{envelope['body_sha256']}",
            routing_key,
            envelope,
            Find(read, lock),
            lambda item: on_plaid_webhook(item, hook, envelope["sent_at"]),
        )
        # A login webhook only makes the worker ask Plaid; the inbox's 24 h body hash suppresses
        # the call only where the Item already shows what the body says (a second break within a
        # day sends the same body and must still be looked at).
        check = decision.check_login and (not duplicate or redelivery_worth_checking(item, hook))
        if item is not None:
            await self.follow_up(item.id, routing_key, envelope["event_id"], check_login=check)

    async def _apply(
        self,
        event_key: str,
        routing_key: str,
        envelope: dict[str, Any],
        find: Find,
        decide_for: Callable[[Item | None], Decision],
    ) -> tuple[Item | None, Decision, bool]:
        """Decides on the Item as read, then applies the decision and records the event in the inbox
        in one statement, refused if a transition moved the Item in between: then it reads and
        decides again. A decision that also sets the Item's conditions or asks Atomic to refresh, or
        an Item that keeps moving, is applied in a transaction holding the Item's row lock
        (:meth:`_apply_locked`). A duplicate (the inbox holds the key) changes nothing. Returns the
        Item (if known), the decision, and whether the event was a duplicate."""
        payload = {"event_id": envelope["event_id"], "webhook": envelope["webhook"]}
        for _ in range(UNLOCKED_TRIES):
            item = await find.read()
            decision = decide_for(item)
            if decision.sets_conditions or decision.atomic_refresh:
                break
            if item is not None:
                structlog.contextvars.bind_contextvars(item_id=str(item.id))
            if item is not None and decision.trigger is not None:
                moved = await self._transition(
                    item,
                    decision.trigger,
                    routing_key,
                    envelope,
                    decision,
                    same_version=True,
                    inbox=InboxRecord(event_key, routing_key, payload),
                )
                if moved is not None:
                    log.info("event.processed", outcome="applied")
                    return item, decision, False
            elif await self.store.record_event(
                event_key,
                item_id=item.id if item else None,
                routing_key=routing_key,
                outcome=decision.outcome,
                payload=payload,
                version=item.version if item else None,
            ):
                log.info("event.processed", outcome=decision.outcome)
                return item, decision, False
            if await self.store.seen_event(event_key):
                log.info("event.duplicate", event_key=event_key)
                return item, decision, True
            # a transition moved the Item after it was read: decide again
        return await self._apply_locked(event_key, routing_key, envelope, payload, find.lock, decide_for)

    async def _apply_locked(
        self,
        event_key: str,
        routing_key: str,
        envelope: dict[str, Any],
        payload: dict[str, Any],
        lock: Callable[[asyncpg.Connection], Awaitable[Item | None]],
        decide_for: Callable[[Item | None], Decision],
    ) -> tuple[Item | None, Decision, bool]:
        """In one transaction: lock the Item's row, decide, apply, and record the event in the inbox.
        A duplicate rolls everything back."""
        item: Item | None = None
        moved: Item | None = None
        decision = Decision("unknown_item")
        try:
            async with self.store.pool.acquire() as conn, conn.transaction():
                item = await lock(conn)
                if item is not None:
                    structlog.contextvars.bind_contextvars(item_id=str(item.id))
                decision = decide_for(item)
                outcome = decision.outcome
                if item is not None and decision.trigger is not None:
                    moved = await self._transition(
                        item, decision.trigger, routing_key, envelope, decision, conn=conn
                    )
                    outcome = "applied" if moved is not None else "refused"
                if item is not None and decision.sets_conditions:
                    await self.store.set_conditions(
                        conn,
                        item.id,
                        login_changed_at=None,
                        consent_expires_at=decision.consent_expires_at,
                        disconnect_at=decision.disconnect_at,
                        disconnect_reason=decision.disconnect_reason,
                    )
                if item is not None and decision.atomic_refresh:
                    await self.store.need_atomic_refresh(conn, item.id)
                if not await self.store.record_event(
                    event_key,
                    item_id=item.id if item else None,
                    routing_key=routing_key,
                    outcome=outcome,
                    payload=payload,
                    conn=conn,
                ):
                    raise Duplicate()
        except Duplicate:
            log.info("event.duplicate", event_key=event_key)
            return item, decision, True
        if moved is not None and decision.trigger is not None:
            self.store.committed(decision.trigger, moved)
        log.info("event.processed", outcome=outcome)
        return item, decision, False

    def _transition(
        self,
        item: Item,
        trigger: Trigger,
        routing_key: str,
        envelope: dict[str, Any],
        decision: Decision,
        **how: Any,
    ) -> Awaitable[Item | None]:
        """Applies an event's decision to its Item (``how``: the statement's guards, or ``conn``)."""
        return self.store.transition(
            item,
            trigger,
            cause=routing_key,
            event_id=envelope["event_id"],
            detail=_detail(decision, envelope),
            changes=decision.changes(),
            **how,
        )

    async def follow_up(
        self, item_id: uuid.UUID, cause: str, event_id: str, *, check_login: bool = False
    ) -> None:
        """What a committed event leaves to do outside the transaction. Idempotent: it runs again
        when a redelivered event is found in the inbox, so a crash in between loses nothing."""
        item = await self.store.get(item_id)
        if item is None:
            return
        todo = follow_ups(item)
        if todo.refresh_atomic:
            assert item.atomic_funding_source_id and item.atomic_refresh_needed_at
            await self.pipeline.atomic.refresh_funding_source(item.atomic_funding_source_id)
            await self.store.atomic_refreshed(item.id, item.atomic_refresh_needed_at)
            log.info("atomic.funding_source_refreshed", funding_source_id=item.atomic_funding_source_id)
        if todo.drive or check_login:
            await self.pipeline.drive(
                item.id, public_token=None, cause=Cause(cause, event_id), check_login=check_login
            )
        if todo.remove_at_plaid:  # the user revoked consent: Plaid first, then the tokens
            await self.pipeline.release_access(item, must_remove=True)
            log.info("item.removed_at_plaid")
        if todo.remove_funding_source:
            await self.pipeline.remove_funding_source(item)
