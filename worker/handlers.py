"""What each routing key means: parse, validate against ``schemas/``, and act.

Handlers raise :class:`Poison` for messages that can never be processed; the consumer dead-letters
those. Everything here is idempotent: a redelivered message changes nothing twice.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import structlog

import schemas
from worker.consumer import Poison, parse_json
from worker.errors import PawError
from worker.pipeline import Cause, Pipeline, token_hash
from worker.states import State, Trigger
from worker.store import Store

log = structlog.get_logger(__name__)


class EventTooEarly(PawError):
    """The event is about a step the Item has not committed yet; it is retried later."""


class Duplicate(Exception):
    """Raised inside a transaction to roll it back when the inbox already holds the event."""


def validated(schema_name: str, body: bytes) -> dict[str, Any]:
    data = parse_json(body)
    errors = sorted(schemas.validator(schema_name).iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(root)"
        raise Poison(f"{schema_name} schema: {where}: {first.message[:300]}")
    assert isinstance(data, dict)
    return data


def schema_for(routing_key: str) -> str | None:
    if routing_key == "item.link":
        return "item.link"
    if routing_key == "item.drive":
        return "item.drive"
    if routing_key.startswith("webhook.plaid."):
        return "webhook.plaid"
    if routing_key.startswith("webhook.atomic."):
        return "webhook.atomic"
    return None


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
        elif name == "webhook.atomic":
            await self.atomic_webhook(routing_key, data)
        else:
            await self.plaid_webhook(routing_key, data)

    async def item_link(self, data: dict[str, Any], message_id: str | None) -> None:
        item, created = await self.store.create_item(
            public_token_sha256=token_hash(data["public_token"]),
            client_user_id=data["client_user_id"],
            requested_account_id=data.get("account_id"),
            request_id=data.get("request_id"),
            cause="item.link",
            event_id=message_id,
        )
        structlog.contextvars.bind_contextvars(item_id=str(item.id))
        if created:
            log.info("item.submitted", client_user_id=item.client_user_id)
        await self.pipeline.drive(
            item.id, public_token=data["public_token"], cause=Cause("item.link", message_id)
        )

    async def item_drive(self, data: dict[str, Any], message_id: str | None) -> None:
        item_id = uuid.UUID(data["item_id"])
        structlog.contextvars.bind_contextvars(item_id=str(item_id))
        if (
            await self.pipeline.drive(item_id, public_token=None, cause=Cause("item.drive", message_id))
            is None
        ):
            log.warning("item.unknown", reason=data["reason"])

    async def atomic_webhook(self, routing_key: str, envelope: dict[str, Any]) -> None:
        hook = envelope["webhook"]
        event_key = f"atomic:{envelope['body_sha256']}"
        try:
            item_id: uuid.UUID | None = uuid.UUID(hook["account_ref"])
        except ValueError:
            item_id = None
        item = await self.store.get(item_id) if item_id else None
        structlog.contextvars.bind_contextvars(item_id=str(item_id), event_id=envelope["event_id"])
        trigger = {"VERIFIED": Trigger.ATOMIC_VERIFIED, "REJECTED": Trigger.ATOMIC_REJECTED}.get(
            hook["status"]
        )
        await self._apply(
            event_key,
            routing_key,
            envelope,
            item,
            trigger,
            source_matches=(item is not None and item.atomic_funding_source_id == hook["funding_source_id"]),
        )

    async def plaid_webhook(self, routing_key: str, envelope: dict[str, Any]) -> None:
        hook = envelope["webhook"]
        event_key = f"plaid:{envelope['body_sha256']}"
        item = await self.store.get_by_plaid_id(hook["item_id"]) if hook.get("item_id") else None
        structlog.contextvars.bind_contextvars(
            item_id=str(item.id) if item else None,
            plaid_item_id=hook.get("item_id"),
            event_id=envelope["event_id"],
        )
        await self._apply(event_key, routing_key, envelope, item, None, source_matches=True)

    async def _apply(
        self,
        event_key: str,
        routing_key: str,
        envelope: dict[str, Any],
        item: Any,
        trigger: Trigger | None,
        *,
        source_matches: bool,
    ) -> None:
        """Records the event and applies its transition in one transaction; a duplicate changes nothing."""
        payload = {"event_id": envelope["event_id"], "webhook": envelope["webhook"]}
        try:
            async with self.store.pool.acquire() as conn, conn.transaction():
                outcome = "recorded"
                if item is None:
                    outcome = "unknown_item"
                elif trigger is not None and source_matches and item.state is State.ATOMIC_PENDING:
                    moved = await self.store.transition(
                        item,
                        trigger,
                        cause=routing_key,
                        event_id=envelope["event_id"],
                        detail={"reason": envelope["webhook"].get("reason")},
                        conn=conn,
                    )
                    outcome = "applied" if moved else "stale"
                elif trigger is not None:
                    outcome = "ignored"
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
            return
        except asyncpg.UniqueViolationError:
            log.info("event.duplicate", event_key=event_key)
            return
        log.info("event.processed", outcome=outcome)
