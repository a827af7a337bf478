"""How a webhook's decision reaches Postgres: decided on the Item as read, then applied and recorded
in one statement that is refused when a transition moved the Item in between (then decided again),
and refused whole when the event is a duplicate. Real Postgres, the worker's own handlers."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest

from tests.helpers import stored_item
from worker.handlers import UNLOCKED_TRIES, Handlers
from worker.items.model import Changes, Item
from worker.items.states import State, Trigger
from worker.items.store import Store
from worker.services import Services


def atomic_envelope(item: Item, status: str, funding_source_id: str = "fs-1") -> dict[str, Any]:
    hook = {"account_ref": str(item.id), "status": status, "funding_source_id": funding_source_id}
    return {
        "event_id": f"evt-{uuid.uuid4()}",
        "webhook": hook,
        "body_sha256": hashlib.sha256(repr(hook).encode()).hexdigest(),
        "sent_at": None,
    }


async def item_in(services: Services, state: State) -> Item:
    """An Item moved along the way to ``state`` (one of the pipeline's), its funding source fs-1."""
    item = await stored_item(services, f"u-{uuid.uuid4().hex[:8]}")
    way = [Trigger.EXCHANGED, Trigger.PROCESSOR_TOKEN_CREATED, Trigger.ATOMIC_SUBMITTED]
    stops = [State.EXCHANGED, State.PROCESSOR_TOKEN_ISSUED, State.ATOMIC_PENDING]
    for trigger, stop in zip(way, stops, strict=True):
        if item.state is state:
            break
        changes = Changes(atomic_funding_source_id="fs-1") if stop is State.ATOMIC_PENDING else Changes()
        moved = await services.store.transition(item, trigger, cause="test", changes=changes)
        assert moved is not None
        item = moved
    assert item.state is state
    return item


class MovesAfterRead(Store):
    """The database as a busy worker sees it: each time the webhook's handler has read the Item, a
    transition elsewhere moves it on (``meanwhile``) before the handler writes."""

    def __init__(self, store: Store, meanwhile: list[list[tuple[Trigger, Changes]]]) -> None:
        super().__init__(store.pool)
        self.meanwhile = meanwhile
        self.reads = 0

    async def get(self, item_id: uuid.UUID) -> Item | None:
        read = await super().get(item_id)
        self.reads += 1
        if read is not None and self.meanwhile:
            row = read
            for trigger, changes in self.meanwhile.pop(0):
                moved = await super().transition(row, trigger, cause="elsewhere", changes=changes)
                assert moved is not None
                row = moved
        return read


async def inbox_outcomes(services: Services, item: Item) -> list[str]:
    rows = await services.pool.fetch("SELECT outcome FROM inbox WHERE item_id = $1", item.id)
    return [r["outcome"] for r in rows]


async def held_at(services: Services, item: Item) -> object:
    return await services.pool.fetchval("SELECT held_at FROM items WHERE id = $1", item.id)


async def test_an_answer_decided_on_a_row_that_moved_is_decided_again(services: Services) -> None:
    """Read in processor_token_issued (which would hold the answer), but the submission commits
    before the handler writes: holding it then would strand it (the submission's commit looked for
    held answers already), so the guarded write is refused and the answer applied to atomic_pending."""
    item = await item_in(services, State.PROCESSOR_TOKEN_ISSUED)
    store = MovesAfterRead(
        services.store, [[(Trigger.ATOMIC_SUBMITTED, Changes(atomic_funding_source_id="fs-1"))]]
    )
    handlers = Handlers(store=store, pipeline=services.pipeline)
    await handlers.atomic_webhook("webhook.atomic.verified", atomic_envelope(item, "VERIFIED"))
    final = await services.store.get(item.id)
    assert final is not None and final.state is State.ATOMIC_VERIFIED
    assert await inbox_outcomes(services, item) == ["applied"]
    assert await held_at(services, item) is None


async def test_an_item_that_keeps_moving_is_decided_under_its_row_lock(services: Services) -> None:
    """Every read is overtaken (a login breaks and is repaired, over and over): after
    UNLOCKED_TRIES the handler decides holding the row's lock, where nothing can overtake it."""
    item = await item_in(services, State.ATOMIC_PENDING)
    flips = [[(Trigger.LOGIN_REQUIRED, Changes())], [(Trigger.LOGIN_REPAIRED, Changes())]]
    store = MovesAfterRead(services.store, (flips * UNLOCKED_TRIES)[:UNLOCKED_TRIES])
    handlers = Handlers(store=store, pipeline=services.pipeline)
    await handlers.atomic_webhook("webhook.atomic.verified", atomic_envelope(item, "VERIFIED"))
    final = await services.store.get(item.id)
    # the last flip left it in login_required, where Atomic's answer is not applied: but recorded once
    assert final is not None and final.state is State.LOGIN_REQUIRED
    assert await inbox_outcomes(services, item) == ["ignored"]
    assert not store.meanwhile


async def test_a_row_that_moved_and_came_back_is_decided_again(services: Services) -> None:
    """The decision is guarded by the row's version, not only its state: between the read and the
    write the login broke and was repaired, back to atomic_pending. What was decided may rest on
    columns those transitions changed, so it is decided again, on the row as it is now."""
    item = await item_in(services, State.ATOMIC_PENDING)
    away_and_back = [(Trigger.LOGIN_REQUIRED, Changes()), (Trigger.LOGIN_REPAIRED, Changes())]
    store = MovesAfterRead(services.store, [away_and_back])
    handlers = Handlers(store=store, pipeline=services.pipeline)
    await handlers.atomic_webhook("webhook.atomic.verified", atomic_envelope(item, "VERIFIED"))
    final = await services.store.get(item.id)
    assert final is not None and final.state is State.ATOMIC_VERIFIED and final.version == item.version + 3
    assert store.reads == 2 and await inbox_outcomes(services, item) == ["applied"]


@pytest.mark.parametrize("status", ["VERIFIED", "PENDING"], ids=["transition", "no-transition"])
async def test_a_duplicate_changes_nothing(services: Services, status: str) -> None:
    """The event's key is in the inbox already (its first delivery was handled): the second one is
    refused whole, its transition included."""
    item = await item_in(services, State.ATOMIC_PENDING)
    envelope = atomic_envelope(item, status)
    key = f"atomic:{envelope['body_sha256']}"
    payload = {"event_id": envelope["event_id"], "webhook": envelope["webhook"]}
    assert await services.store.record_event(
        key, item_id=None, routing_key="webhook.atomic.x", outcome="recorded", payload=payload
    )
    handlers = Handlers(store=services.store, pipeline=services.pipeline)
    await handlers.atomic_webhook("webhook.atomic.verified", envelope)
    final = await services.store.get(item.id)
    assert final is not None and final.state is State.ATOMIC_PENDING and final.version == item.version
    assert [h.to_state for h in await services.store.history(item.id)][-1] == "atomic_pending"
    assert await services.store.seen_event(key)


async def test_a_held_answer_marks_the_item_until_the_submission_applies_it(services: Services) -> None:
    item = await item_in(services, State.PROCESSOR_TOKEN_ISSUED)
    handlers = Handlers(store=services.store, pipeline=services.pipeline)
    await handlers.atomic_webhook("webhook.atomic.verified", atomic_envelope(item, "VERIFIED"))
    assert await inbox_outcomes(services, item) == ["held"]
    assert await held_at(services, item) is not None
    # the one-statement commit of the submission is refused while the Item is marked
    refused = await services.store.transition(
        item,
        Trigger.ATOMIC_SUBMITTED,
        cause="test",
        changes=Changes(atomic_funding_source_id="fs-1"),
        unless_held=True,
    )
    assert refused is None
    async with services.store.transaction() as conn:
        assert [h.status for h in await services.store.held_events(conn, item.id)] == ["VERIFIED"]
    assert await held_at(services, item) is None


async def test_a_key_last_seen_a_day_ago_without_an_item_is_recorded_for_its_item_now(
    services: Services,
) -> None:
    """A body seen more than 24 hours ago is a new event (record_event's rule); recorded again, it
    belongs to the Item it names now, or a held answer would be kept where held_events never looks."""
    item = await item_in(services, State.PROCESSOR_TOKEN_ISSUED)
    envelope, key, rk = atomic_envelope(item, "VERIFIED"), f"test:{uuid.uuid4()}", "webhook.atomic.verified"
    store = services.store
    assert await store.record_event(
        key, item_id=None, routing_key=rk, outcome="unknown_item", payload=envelope
    )
    await services.pool.execute(
        "UPDATE inbox SET received_at = now() - interval '25 hours' WHERE event_key = $1", key
    )
    assert await store.record_event(key, item_id=item.id, routing_key=rk, outcome="held", payload=envelope)
    assert await inbox_outcomes(services, item) == ["held"]
    assert await held_at(services, item) is not None
    async with store.transaction() as conn:
        assert [h.event_key for h in await store.held_events(conn, item.id)] == [key]
