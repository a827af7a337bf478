"""Consumer._process / _settle: ack, retry, dead-letter or defer, and the x-paw-* headers each copy
carries. Runs on a FakePublisher and FakeMessages: needs no RabbitMQ, no Postgres, no HTTP."""

from __future__ import annotations

import pytest

from tests.fakes import FakeMessage, FakePublisher, Published, permanent, transient
from worker.bus.consumer import MAX_DEFERRALS, Consumer, Handler
from worker.bus.topology import Topology
from worker.errors import ItemBusy, Poison
from worker.messages import (
    H_ATTEMPTS,
    H_DEFERRALS,
    H_ERROR_CLASS,
    H_ERROR_CODE,
    H_ERROR_MESSAGE,
    H_FIRST_FAILURE,
    H_QUEUE,
    H_REPLAYS,
    H_REQUEST_ID,
    H_ROUTING_KEY,
)
from worker.settings import Settings

BUDGET = 3
TOPO = Topology.from_settings(Settings(retry_base_ms=100, retry_budget=BUDGET))  # tiers 100, 400, 1600
QUEUE = TOPO.items_queue
TIERS = TOPO.retry_delays_ms


def raising(error: Exception) -> Handler:
    async def handler(rk: str, body: bytes, message_id: str | None) -> None:
        raise error

    return handler


def consumer(handler: Handler) -> tuple[Consumer, FakePublisher]:
    publisher = FakePublisher()
    c = Consumer(publisher=publisher, topo=TOPO, handler=handler, queue=QUEUE, retry_budget=BUDGET)
    return c, publisher


async def deliver(handler: Handler, message: FakeMessage) -> Published | None:
    """Delivers ``message`` to a fresh consumer; the one copy it published (None if none)."""
    c, publisher = consumer(handler)
    await c(message)
    assert c.in_flight == 0 and c.idle.is_set()
    assert len(publisher.published) <= 1
    return publisher.published[0] if publisher.published else None


def assert_retried(copy: Published | None, tier_ms: int) -> Published:
    assert copy is not None
    assert copy.routing_key == TOPO.retry_queue(QUEUE, tier_ms) and copy.to_queue
    assert copy.expiration_ms is not None and 0.75 * tier_ms <= copy.expiration_ms <= tier_ms
    return copy


def assert_dead(copy: Published | None) -> Published:
    assert copy is not None
    assert copy.routing_key == TOPO.dead_queue and copy.to_queue and copy.expiration_ms is None
    return copy


async def test_success_is_acked_once_and_nothing_is_published() -> None:
    seen: list[tuple[str, bytes, str | None]] = []

    async def handler(rk: str, body: bytes, message_id: str | None) -> None:
        seen.append((rk, body, message_id))

    c, publisher = consumer(handler)
    await c(FakeMessage(b'{"a": 1}', routing_key="item.link", message_id="m-9"))
    assert seen == [("item.link", b'{"a": 1}', "m-9")]
    assert publisher.published == []
    assert c.counts == {"acked": 1, "retried": 0, "dead_lettered": 0, "requeued": 0}


async def test_poison_goes_straight_to_the_dead_queue_then_is_acked() -> None:
    message = FakeMessage(b"not json", routing_key="item.link")
    dead = assert_dead(await deliver(raising(Poison("body is not JSON")), message))
    assert message.acked and not message.nacked
    assert dead.body == b"not json" and dead.message_id == "m-1"
    assert dead.headers[H_ATTEMPTS] == 1 and dead.headers[H_DEFERRALS] == 0
    assert dead.headers[H_ERROR_CLASS] == "Poison"
    assert dead.headers[H_ERROR_MESSAGE] == "body is not JSON"
    assert dead.headers[H_ROUTING_KEY] == "item.link" and dead.headers[H_QUEUE] == QUEUE
    assert H_ERROR_CODE not in dead.headers


async def test_transient_upstream_error_goes_to_the_first_delay_queue() -> None:
    message = FakeMessage()
    copy = assert_retried(await deliver(raising(transient()), message), TIERS[0])
    assert message.acked
    assert copy.headers[H_ATTEMPTS] == 1 and copy.headers[H_ERROR_CLASS] == "UpstreamError"


async def test_upstream_error_code_and_request_id_travel_in_headers() -> None:
    error = transient(error_code="INSTITUTION_DOWN", request_id="req-42", status=400)
    copy = assert_retried(await deliver(raising(error), FakeMessage()), TIERS[0])
    assert copy.headers[H_ERROR_CODE] == "INSTITUTION_DOWN" and copy.headers[H_REQUEST_ID] == "req-42"


async def test_error_message_is_redacted() -> None:
    error = RuntimeError("bad access-sandbox-0123abcd token")
    copy = assert_retried(await deliver(raising(error), FakeMessage()), TIERS[0])
    assert "0123abcd" not in copy.headers[H_ERROR_MESSAGE]


@pytest.mark.parametrize(("failed_before", "tier_index"), [(1, 1), (BUDGET - 1, BUDGET - 1)])
async def test_each_attempt_waits_in_its_own_tier(failed_before: int, tier_index: int) -> None:
    message = FakeMessage(headers={H_ATTEMPTS: failed_before})
    copy = assert_retried(await deliver(raising(transient()), message), TIERS[tier_index])
    assert copy.headers[H_ATTEMPTS] == failed_before + 1


async def test_spent_budget_is_dead_lettered() -> None:
    message = FakeMessage(headers={H_ATTEMPTS: BUDGET})
    dead = assert_dead(await deliver(raising(transient()), message))
    assert dead.headers[H_ATTEMPTS] == BUDGET + 1 and message.acked


async def test_permanent_upstream_error_is_dead_lettered_at_once() -> None:
    message = FakeMessage()
    dead = assert_dead(await deliver(raising(permanent("INVALID_PUBLIC_TOKEN")), message))
    assert dead.headers[H_ATTEMPTS] == 1 and dead.headers[H_ERROR_CODE] == "INVALID_PUBLIC_TOKEN"
    assert message.acked


async def test_a_bug_is_retried_not_dropped() -> None:
    copy = assert_retried(await deliver(raising(KeyError("state")), FakeMessage()), TIERS[0])
    assert copy.headers[H_ERROR_CLASS] == "KeyError" and copy.headers[H_ATTEMPTS] == 1


async def test_deferral_counts_deferrals_not_attempts() -> None:
    message = FakeMessage(headers={H_ATTEMPTS: 2, H_DEFERRALS: 4})
    copy = await deliver(raising(ItemBusy()), message)
    assert copy is not None and copy.routing_key == TOPO.retry_queue(QUEUE, TIERS[-1])
    assert copy.headers[H_ATTEMPTS] == 2 and copy.headers[H_DEFERRALS] == 5
    assert copy.headers[H_ERROR_CLASS] == "ItemBusy" and message.acked


@pytest.mark.parametrize(("deferrals", "dead"), [(MAX_DEFERRALS - 1, False), (MAX_DEFERRALS, True)])
async def test_deferrals_have_their_own_budget(deferrals: int, dead: bool) -> None:
    # attempts == budget: a failure now would be dead-lettered, a deferral is not (until its own budget)
    message = FakeMessage(headers={H_ATTEMPTS: BUDGET, H_DEFERRALS: deferrals})
    copy = await deliver(raising(ItemBusy()), message)
    assert copy is not None and (copy.routing_key == TOPO.dead_queue) is dead
    assert copy.headers[H_DEFERRALS] == deferrals + 1


async def test_retry_after_picks_a_tier_at_least_that_long_without_jitter() -> None:
    error = transient(status=429, retry_after=1.0)
    copy = await deliver(raising(error), FakeMessage())
    assert copy is not None and copy.routing_key == TOPO.retry_queue(QUEUE, TIERS[2])
    assert copy.expiration_ms == TIERS[2] >= 1000


@pytest.mark.parametrize("error", [transient(), Poison()], ids=["retry", "dead"])
async def test_unconfirmed_publish_nacks_back_onto_the_queue(error: Exception) -> None:
    c, publisher = consumer(raising(error))
    publisher.failing = True
    message = FakeMessage()
    await c(message)
    assert message.nacked and message.requeued is True and not message.acked
    assert publisher.published == [] and c.counts["requeued"] == 1


async def test_headers_survive_every_hop_until_the_dead_queue() -> None:
    """A message that always fails: retried through each tier, then dead-lettered, keeping its
    original routing key, its first failure time and headers it came with."""
    routing_keys: list[str] = []

    async def handler(rk: str, body: bytes, message_id: str | None) -> None:
        routing_keys.append(rk)
        raise transient()

    c, publisher = consumer(handler)
    message = FakeMessage(routing_key="item.drive", headers={H_REPLAYS: 1})
    for _ in range(BUDGET + 1):
        await c(message)
        assert message.acked
        message = FakeMessage.back_from(publisher.published[-1], QUEUE)
    hops: list[Published] = publisher.published
    assert [p.routing_key for p in hops] == [*(TOPO.retry_queue(QUEUE, t) for t in TIERS), TOPO.dead_queue]
    assert routing_keys == ["item.drive"] * (BUDGET + 1)
    assert [p.headers[H_ATTEMPTS] for p in hops] == [1, 2, 3, 4]
    assert {p.headers[H_ROUTING_KEY] for p in hops} == {"item.drive"}
    assert {p.headers[H_FIRST_FAILURE] for p in hops} == {hops[0].headers[H_FIRST_FAILURE]}
    assert {p.headers[H_REPLAYS] for p in hops} == {1}
    assert c.counts == {"acked": 0, "retried": BUDGET, "dead_lettered": 1, "requeued": 0}


@pytest.mark.parametrize("header", [b"webhook.plaid.ITEM.ERROR", "webhook.plaid.ITEM.ERROR"])
async def test_routing_key_header_wins_over_the_delivery_routing_key(header: bytes | str) -> None:
    seen: list[str] = []

    async def handler(rk: str, body: bytes, message_id: str | None) -> None:
        seen.append(rk)

    c, _ = consumer(handler)
    message = FakeMessage(routing_key=TOPO.webhooks_queue, headers={H_ROUTING_KEY: header})
    await c(message)
    assert seen == ["webhook.plaid.ITEM.ERROR"] and message.acked


async def test_a_later_failure_of_another_kind_does_not_keep_the_earlier_error_code() -> None:
    """The copy describes its last failure: after INSTITUTION_DOWN (with Plaid's request id), a bug
    (KeyError) leaves no error code or request id that would send on-call to the bank or to Plaid."""
    down = transient(error_code="INSTITUTION_DOWN", request_id="req-1")
    first = assert_retried(await deliver(raising(down), FakeMessage()), TIERS[0])
    assert (first.headers[H_ERROR_CODE], first.headers[H_REQUEST_ID]) == ("INSTITUTION_DOWN", "req-1")
    second = await deliver(raising(KeyError("item")), FakeMessage.back_from(first, QUEUE))
    second = assert_retried(second, TIERS[1])
    assert second.headers[H_ERROR_CLASS] == "KeyError"
    assert H_ERROR_CODE not in second.headers and H_REQUEST_ID not in second.headers
