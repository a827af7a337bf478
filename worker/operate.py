"""What on-call does to one Item, for ``paw item retry`` and the console alike: one implementation,
two front ends (the CLI prints, the console renders)."""

from __future__ import annotations

import dataclasses
import json
import uuid

import asyncpg
import structlog

import schemas
from worker.bus.publisher import Publisher
from worker.errors import PawError, UpstreamError
from worker.items.rules import Kind, classify, retry_refusal
from worker.items.store import Store

log = structlog.get_logger(__name__)


@dataclasses.dataclass(frozen=True)
class Retry:
    """What a retry did, or why it did nothing (``refused``)."""

    item_id: uuid.UUID
    state: str | None  # None: no such Item
    refused: str | None = None
    message_id: str | None = None
    note_recorded: bool = False

    @property
    def sent(self) -> bool:
        return self.message_id is not None


async def retry_item(
    store: Store, publisher: Publisher, item_id: uuid.UUID, *, actor: str, reason: str | None
) -> Retry:
    """Publishes ``item.drive`` for an Item a drive can move, then notes who did it and why (after
    the send: the note says what was done, not what was meant). Raises
    :class:`worker.errors.PublishFailed` when the broker did not confirm (nothing sent)."""
    item = await store.get(item_id)
    if item is None:
        return Retry(item_id, None, refused=f"no item {item_id}")
    refusal = retry_refusal(item.state)
    if refusal is not None:
        why = f"a retry cannot move Item {item_id} in {item.state.value}: {refusal}"
        return Retry(item_id, item.state.value, refused=why)
    body = {"item_id": str(item_id), "reason": (reason or f"paw item retry by {actor}")[:200]}
    problem = next(iter(schemas.validator("item.drive").iter_errors(body)), None)
    if problem is not None:
        return Retry(item_id, item.state.value, refused=f"item.drive would be invalid: {problem.message}")
    message_id = str(uuid.uuid4())
    await publisher.publish("item.drive", json.dumps(body).encode(), message_id=message_id)
    noted = True
    try:
        await store.add_note(item_id, "retry", actor=actor, text=body["reason"], message_id=message_id)
    except (PawError, OSError, asyncpg.PostgresError) as e:  # sent all the same: say so, do not resend
        noted = False
        log.warning("item.retry_note_lost", item_id=str(item_id), error=type(e).__name__)
    log.info(
        "item.retry_requested",
        item_id=str(item_id),
        state=item.state.value,
        actor=actor,
        reason=body["reason"],
        message_id=message_id,
    )
    return Retry(item_id, item.state.value, message_id=message_id, note_recorded=noted)


def forget_refusal(e: UpstreamError) -> str:
    """Why ``paw item forget`` stopped, in one line: its tokens are kept, whatever failed."""
    where = "Plaid (/item/remove)" if e.service == "plaid" else f"{e.service} (funding source removal)"
    code = f"{e.error_code or 'no error code'}" + (f", request_id {e.request_id}" if e.request_id else "")
    if classify(e) is Kind.TRANSIENT:
        return f"paw: not forgotten: {where} failed transiently ({code}); tokens kept; run it again"
    return (
        f"paw: not forgotten: {where} refused it for good ({code}): {str(e)[:200]}; tokens kept, "
        "the Item may still be live there"
    )
