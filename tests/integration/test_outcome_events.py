"""Outcome events (``item.state.<to_state>``) through the real worker, Postgres and RabbitMQ: every
transition an Item's history shows is published once, in sequence order, by the outbox relay; the
events reach only the queues bound for them; a publish the broker does not confirm holds back that
Item's later events and nothing else.

(The same under a RabbitMQ outage and worker SIGKILLs, 1,000 Items: tests/chaos/test_outcome_events.py.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractQueue

from sandbox.app import SandboxConfig
from tests.helpers import (
    RunningWorker,
    Sandbox,
    eventually,
    new_public_token,
    settled,
    stored_item,
    submit_amqp,
)
from worker import metrics
from worker.bus.publisher import Publisher
from worker.bus.relay import Relay
from worker.bus.topology import declare, queue_depth
from worker.errors import PublishFailed, Unroutable
from worker.items.model import Item
from worker.items.states import State, Trigger
from worker.services import Services


@pytest.fixture
def sandbox_config(sandbox_config_for_receiver: SandboxConfig) -> SandboxConfig:
    return sandbox_config_for_receiver


@pytest.fixture
async def subscriber(services: Services) -> AsyncIterator[AbstractQueue]:
    """An upstream app's own queue, bound as the AsyncAPI document says."""
    channel = await services.connection.channel()
    exchange = await channel.get_exchange(services.topo.exchange)
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(exchange, "item.state.#")
    try:
        yield queue
    finally:
        await channel.close()


async def take_all(queue: AbstractQueue) -> list[aio_pika.abc.AbstractIncomingMessage]:
    out = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        out.append(message)
    return out


async def outbox_drained(services: Services) -> bool:
    unsent, _ = await services.store.outbox_backlog()
    return unsent == 0


def by_item(messages: list[aio_pika.abc.AbstractIncomingMessage]) -> dict[str, list[dict[str, Any]]]:
    events: dict[str, list[dict[str, Any]]] = {}
    for m in messages:
        event = json.loads(m.body)
        assert m.message_id == event["event_id"] and m.routing_key == f"item.state.{event['to_state']}"
        assert m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        events.setdefault(event["item_id"], []).append(event)
    return events


async def test_every_transition_is_published_once_in_history_order(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox, subscriber: AbstractQueue
) -> None:
    good = await new_public_token(sandbox)
    await submit_amqp(services, {"public_token": good, "client_user_id": "u-good", "request_id": "req-good"})
    spent = f"public-sandbox-{uuid.uuid4()}"  # never issued by Plaid: the exchange fails for good
    await submit_amqp(services, {"public_token": spent, "client_user_id": "u-spent"})
    verified = await settled(services, good, State.ATOMIC_VERIFIED)
    failed = await settled(services, spent, State.FAILED)
    await eventually(lambda: outbox_drained(services))

    events = by_item(await take_all(subscriber))
    assert set(events) == {str(verified.id), str(failed.id)}
    for item in (verified, failed):
        history = await services.store.history(item.id)
        got = events[str(item.id)]
        assert [e["sequence"] for e in got] == list(range(1, len(history) + 1))
        assert [(e["from_state"], e["to_state"], e["trigger"]) for e in got] == [
            (h.from_state, h.to_state, h.trigger) for h in history
        ]
        assert len({e["event_id"] for e in got}) == len(got)
        assert {e["client_user_id"] for e in got} == {item.client_user_id}
    assert [e["to_state"] for e in events[str(verified.id)]] == [
        "link",
        "exchanged",
        "processor_token_issued",
        "atomic_pending",
        "atomic_verified",
    ]
    last = events[str(verified.id)][-1]
    assert last["atomic_funding_source_id"] == verified.atomic_funding_source_id is not None
    assert {e["request_id"] for e in events[str(verified.id)]} == {"req-good"}
    assert events[str(failed.id)][-1]["error_code"] == "INVALID_PUBLIC_TOKEN"
    # every row is marked sent, and `paw item show`'s source lists the same events
    rows = await services.store.events(verified.id)
    assert [r["event_id"] for r in rows] == [e["event_id"] for e in events[str(verified.id)]]
    assert all(r["sent_at"] is not None for r in rows)


async def callbacks_unbound(services: Services) -> None:
    """paw.callbacks without its ``item.state.#`` binding."""
    channel = await services.connection.channel()
    try:
        exchange = await channel.get_exchange(services.topo.exchange)
        queue = await channel.declare_queue(services.topo.callbacks_queue, passive=True)
        await queue.unbind(exchange, "item.state.#")
    finally:
        await channel.close()


async def item_with_its_link_event(services: Services, name: str) -> Item:
    """A new Item, as a submission makes it: its `link` outcome event waits in the outbox."""
    item, _ = await services.store.create_item(
        public_token_sha256=hashlib.sha256(f"public-sandbox-{name}".encode()).hexdigest(),
        client_user_id=f"u-{name}",
        requested_account_id=None,
        request_id=f"req-{name}",
        cause="item.link",
        event_id=None,
    )
    return item


@pytest.mark.parametrize("callbacks", [True, False], ids=["callbacks configured", "no callbacks"])
async def test_outcome_events_reach_only_the_queues_bound_for_them(
    services: Services, callbacks: bool
) -> None:
    """With callbacks configured, an outcome event reaches paw.callbacks (and subscribers) and never
    a work queue. Without, paw.callbacks is not bound (the worker would take five messages per Item
    only to ack them unread): the event reaches no paw queue, and the relay, finding no queue bound
    for it, counts it and marks it sent instead of retrying it forever."""
    topo = dataclasses.replace(services.topo, callbacks_bound=callbacks)
    await callbacks_unbound(services)  # as where callbacks never were; declare binds it if asked
    channel = await services.connection.channel()
    try:
        exchange = await channel.get_exchange(topo.exchange)
        items = await channel.declare_queue(topo.items_queue, passive=True)
        # an items queue left bound with `item.#` by an earlier version loses that binding at declare
        await items.bind(exchange, "item.#")
        callbacks_queue = await channel.declare_queue(topo.callbacks_queue, passive=True)
        await declare(channel, topo)
        unrouted = metrics.OUTBOX_UNROUTED._value.get()
        if callbacks:
            await services.publisher.publish("item.state.atomic_verified", b"{}", message_id="e-1")
        else:
            with pytest.raises(Unroutable):
                await services.publisher.publish("item.state.atomic_verified", b"{}", message_id="e-1")
            item = await item_with_its_link_event(services, "unrouted")
            relay = Relay(services.pool, services.publisher, retention_s=3600)
            assert await relay.relay_once() == 1  # the `link` event: confirmed as "nobody to tell"
            assert await services.store.outbox_backlog() == (0, 0.0)
            assert metrics.OUTBOX_UNROUTED._value.get() == unrouted + 1
            assert (await services.store.events(item.id))[0]["sent_at"] is not None
        await services.publisher.publish("item.drive", b"{}", message_id="d-1")
        expected = {
            topo.items_queue: 1,
            topo.webhooks_queue: 0,
            topo.callbacks_queue: 1 if callbacks else 0,
            topo.parked_queue: 0,
        }

        async def depths() -> bool:  # a quorum queue's count can follow the confirm by a moment
            return {q: await queue_depth(channel, q) for q in topo.consumed_queues} == expected

        await eventually(depths, timeout=5)
        assert [m.routing_key for m in await take_all(callbacks_queue)] == (
            ["item.state.atomic_verified"] if callbacks else []
        )
        assert [m.routing_key for m in await take_all(items)] == ["item.drive"]
    finally:
        await channel.close()


async def test_where_callbacks_are_configured_an_event_no_queue_takes_stays_unsent(
    services: Services,
) -> None:
    """With callbacks configured paw.callbacks should take every event: if its binding is gone (an
    operator removed it), the relay keeps the event and fails, so the backlog alert fires, rather
    than counting it as having nobody to tell."""
    topo = dataclasses.replace(services.topo, callbacks_bound=True)
    await callbacks_unbound(services)
    publisher = Publisher(services.connection, topo, timeout=services.publisher.timeout)
    await item_with_its_link_event(services, "unbound")
    unrouted = metrics.OUTBOX_UNROUTED._value.get()
    with pytest.raises(Unroutable):
        await Relay(services.pool, publisher, retention_s=3600).relay_once()
    assert (await services.store.outbox_backlog())[0] == 1
    assert metrics.OUTBOX_UNROUTED._value.get() == unrouted


class RefusesOnce(Publisher):
    """The real publisher, except that the broker 'does not confirm' one event the first time."""

    def __init__(self, inner: Publisher, event_id: str) -> None:
        super().__init__(inner.connection, inner.topo, timeout=inner.timeout)
        self.event_id = event_id
        self.refused = 0

    async def publish(self, routing_key: str, body: bytes, **kw: Any) -> None:
        if kw.get("message_id") == self.event_id and not self.refused:
            self.refused += 1
            raise PublishFailed("no confirm (test)")
        await super().publish(routing_key, body, **kw)


async def test_an_unconfirmed_event_holds_back_its_items_later_events_only(
    services: Services, subscriber: AbstractQueue
) -> None:
    made = []
    for n in range(3):
        item = await stored_item(services, f"u-{n}")
        moved = await services.store.transition(item, Trigger.EXCHANGED, cause="test")
        assert moved is not None
        made.append(await services.store.transition(moved, Trigger.FAILED, cause="test"))
    stuck = made[1]
    assert stuck is not None
    first = (await services.store.events(stuck.id))[0]["event_id"]
    publisher = RefusesOnce(services.publisher, first)
    relay = Relay(services.pool, publisher)

    with pytest.raises(PublishFailed):
        await relay.relay_once()
    got = by_item(await take_all(subscriber))
    assert str(stuck.id) not in got  # its second and third events waited for the first
    assert {k: [e["sequence"] for e in v] for k, v in got.items()} == {
        str(i.id): [1, 2, 3] for i in made if i is not stuck
    }
    assert (await services.store.outbox_backlog())[0] == 3

    assert await relay.relay_once() == 3
    got = by_item(await take_all(subscriber))
    assert {k: [e["sequence"] for e in v] for k, v in got.items()} == {str(stuck.id): [1, 2, 3]}
    assert await relay.relay_once() == 0


async def test_sent_events_are_deleted_after_the_retention_unsent_ones_never(
    services: Services, subscriber: AbstractQueue
) -> None:
    async def new_item() -> uuid.UUID:
        return (await stored_item(services, "u-r")).id

    kept = await new_item()
    assert await Relay(services.pool, services.publisher).relay_once() == 1
    assert [e["sent_at"] is not None for e in await services.store.events(kept)] == [True]

    gone = await new_item()
    failing = RefusesOnce(services.publisher, "")
    failing.event_id = (await services.store.events(gone))[0]["event_id"]
    relay = Relay(services.pool, failing, retention_s=0)
    with pytest.raises(PublishFailed):
        await relay.relay_once()  # nothing confirmed: nothing to prune
    assert len(await services.store.events(gone)) == 1
    assert await relay.relay_once() == 1  # published, marked, and (retention 0) deleted
    assert await services.store.events(gone) == []
    assert await services.store.events(kept) == []  # sent before the mark: older than the retention too
    assert len(await take_all(subscriber)) == 2
