"""Group commit of transitions (worker/items/batch.py): concurrent transitions share round trips, and
each caller still gets its own row, its own ``None`` or its own error. Real Postgres, the worker's
own Store."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
from prometheus_client import REGISTRY

from tests.helpers import stored_item
from worker.items.model import Changes, Item
from worker.items.states import State, Trigger
from worker.items.store import Store
from worker.services import Services


def batched(statement: str) -> tuple[float, float]:
    """(round trips, statements) the batcher of ``statement`` has sent so far in this process."""
    labels = {"statement": statement}
    trips = REGISTRY.get_sample_value("paw_db_batch_size_count", labels) or 0.0
    return trips, REGISTRY.get_sample_value("paw_db_batch_size_sum", labels) or 0.0


async def items(services: Services, n: int) -> list[Item]:
    return [await stored_item(services, f"u-{uuid.uuid4().hex[:8]}") for _ in range(n)]


def exchange(store: Store, item: Item, plaid_item_id: str | None = None) -> asyncio.Task[Item | None]:
    changes = Changes(plaid_item_id=plaid_item_id or f"pi-{item.id}")
    return asyncio.create_task(store.transition(item, Trigger.EXCHANGED, cause="test", changes=changes))


async def test_concurrent_transitions_share_round_trips_and_each_gets_its_own_row(services: Services) -> None:
    made = await items(services, 40)
    trips, statements = batched("transition")
    moved = await asyncio.gather(*(exchange(services.store, item) for item in made))
    trips_after, statements_after = batched("transition")
    assert statements_after - statements == 40
    # one lane carries transitions: the first leaves alone, the 39 behind it together
    assert trips_after - trips <= 3
    for item, got in zip(made, moved, strict=True):
        assert got is not None
        assert (got.id, got.state, got.plaid_item_id, got.version) == (
            item.id, State.EXCHANGED, f"pi-{item.id}", item.version + 1,
        )  # fmt: skip
    for item in made:
        stored = await services.store.get(item.id)
        assert stored is not None and stored.state is State.EXCHANGED
        assert [h.to_state for h in await services.store.history(item.id)] == ["link", "exchanged"]


async def test_a_refused_transition_in_a_batch_gets_none_and_the_others_their_rows(
    services: Services,
) -> None:
    made = await items(services, 12)
    stale = made[::3]  # moved on before the batch: their copies here still say `link`
    for item in stale:
        assert await services.store.transition(item, Trigger.EXCHANGED, cause="test") is not None
    moved = await asyncio.gather(*(exchange(services.store, item) for item in made))
    for item, got in zip(made, moved, strict=True):
        if item in stale:
            assert got is None
        else:
            assert got is not None and got.id == item.id and got.state is State.EXCHANGED


async def test_two_transitions_of_one_item_at_once_apply_once(services: Services) -> None:
    """Both callers hold the Item in `link`; the database applies one, refuses the other. (One
    batch returning one row for two statements of the same Item would have told both it applied.)"""
    made = await items(services, 8)
    twice = made[0]
    calls = [exchange(services.store, item) for item in made] + [exchange(services.store, twice)]
    moved = await asyncio.gather(*calls)
    of_twice = [moved[0], moved[-1]]
    assert sorted(m is None for m in of_twice) == [False, True]
    assert all(m is not None for m in moved[1:-1])
    assert [h.to_state for h in await services.store.history(twice.id)] == ["link", "exchanged"]


async def test_a_failing_statement_fails_its_own_caller_only(services: Services) -> None:
    """Two Items claim the same Plaid Item id (unique): the batch they share rolls back, each
    statement runs again alone, and only the second to arrive fails."""
    made = await items(services, 10)
    clash = f"pi-clash-{uuid.uuid4()}"
    calls = [exchange(services.store, item, clash if i in (2, 7) else None) for i, item in enumerate(made)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert len(failed) == 1 and failed[0] in (2, 7)
    assert isinstance(results[failed[0]], asyncpg.UniqueViolationError)
    for i, item in enumerate(made):
        stored = await services.store.get(item.id)
        assert stored is not None
        assert stored.state is (State.LINK if i == failed[0] else State.EXCHANGED)


async def test_a_caller_that_stops_waiting_leaves_the_others_their_answers(services: Services) -> None:
    made = await items(services, 6)
    calls = [exchange(services.store, item) for item in made]
    await asyncio.sleep(0)  # every call is waiting for its batch
    calls[2].cancel()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[2], asyncio.CancelledError)
    assert all(isinstance(r, Item) and r.state is State.EXCHANGED for i, r in enumerate(results) if i != 2)


async def test_concurrent_submissions_share_round_trips_and_one_token_makes_one_item(
    services: Services,
) -> None:
    tokens = [f"public-sandbox-{uuid.uuid4()}" for _ in range(20)]
    before, _ = batched("create_item")
    made = await asyncio.gather(
        *(stored_item(services, "u-batch", public_token=t) for t in [*tokens, tokens[5]])
    )
    assert batched("create_item")[0] - before < 21
    assert len({item.id for item in made}) == 20
    assert made[5].id == made[-1].id  # the same public token twice: one Item, found by the second
    assert [h.to_state for h in await services.store.history(made[5].id)] == ["link"]


async def test_concurrent_reads_share_round_trips_and_each_gets_its_own_item(services: Services) -> None:
    made = await items(services, 15)
    unknown = uuid.uuid4()
    before, _ = batched("get_item")
    got = await asyncio.gather(*(services.store.get(i) for i in [*(m.id for m in made), unknown]))
    assert batched("get_item")[0] - before < 16
    assert [g.id if g else None for g in got] == [*(m.id for m in made), None]
