"""Pipeline.drive: the lease loop (claim, step, commit with lease renewal, release), refused
transitions, a lease lost to another worker, and permanent vs transient upstream errors. Runs on
FakeStore, FakePlaid and FakeAtomic with the real Sealer: needs no Postgres, RabbitMQ or HTTP."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from tests.fakes import (
    EPOCH,
    TEST_SEALER,
    FakeAtomic,
    FakePlaid,
    FakeStore,
    Lease,
    linked_item,
    new_item,
    permanent,
    seal,
    transient,
    unseal,
)
from worker.errors import ItemBusy, UpstreamError
from worker.items.model import Cause, HeldEvent, Item
from worker.items.pipeline import Pipeline
from worker.items.states import State, Trigger
from worker.plaid_api import Account

LEASE_S = 30.0
CAUSE = Cause("item.link", "evt-1")
PUBLIC = "public-sandbox-abc"
ALL_CALLS = ["exchange_public_token", "accounts", "create_processor_token", "submit_funding_source"]


class World:
    """A pipeline wired to fakes, and the fakes to look at afterwards."""

    def __init__(self, *, accounts: list[Account] | None = None) -> None:
        self.store = FakeStore()
        self.plaid = FakePlaid(accounts=accounts)
        self.atomic = FakeAtomic()
        self.pipeline = Pipeline(
            store=self.store,
            sealer=TEST_SEALER,
            plaid=self.plaid,
            atomic=self.atomic,
            lease_s=LEASE_S,
        )

    def add(self, item: Item) -> Item:
        return self.store.add(item)

    async def drive(
        self,
        item: Item,
        public_token: str | None = None,
        *,
        leased: Item | None = None,
        owner: uuid.UUID | None = None,
    ) -> Item | None:
        return await self.pipeline.drive(
            item.id, public_token=public_token, cause=CAUSE, leased=leased, owner=owner
        )

    def calls(self) -> list[str]:
        return self.plaid.names() + self.atomic.names()


async def test_link_with_a_public_token_goes_all_the_way_to_atomic_pending() -> None:
    w = World()
    item = w.add(new_item(State.LINK))
    done = await w.drive(item, PUBLIC)
    assert done is not None and done.state is State.ATOMIC_PENDING
    assert w.store.items[item.id] == done and done.version == 4
    assert w.store.path(item.id) == ["link", "exchanged", "processor_token_issued", "atomic_pending"]
    assert {(h.cause, h.event_id) for h in w.store.history[item.id][1:]} == {("item.link", "evt-1")}
    assert w.calls() == ALL_CALLS
    assert w.plaid.calls[0] == ("exchange_public_token", (PUBLIC,))
    assert w.plaid.calls[2] == ("create_processor_token", ("access-sandbox-1", "acc-checking"))
    processor = "processor-sandbox-acc-checking"
    assert w.atomic.calls == [("submit_funding_source", (processor, str(item.id), "user-1", str(item.id)))]
    assert done.atomic_funding_source_id == "fs-1" and done.plaid_item_id == "plaid-item-1"
    # tokens are sealed at rest, bound to this Item and column
    assert done.access_token is not None and done.processor_token is not None
    assert b"access-sandbox-1" not in done.access_token.blob
    assert unseal(item.id, "access_token", done.access_token) == "access-sandbox-1"
    assert unseal(item.id, "processor_token", done.processor_token) == processor
    assert w.store.lease_of(item.id) is None


def _unrecorded() -> tuple[float, float]:
    count = REGISTRY.get_sample_value("paw_result_unrecorded_seconds_count") or 0.0
    return count, REGISTRY.get_sample_value("paw_result_unrecorded_seconds_sum") or 0.0


async def test_each_result_made_durable_measures_its_kill_window() -> None:
    """Every upstream answer's time to its commit is observed (the window a killed process loses it
    in): one observation per committed step, none for a step that fails."""
    w = World()
    item = w.add(new_item(State.LINK))
    before = _unrecorded()
    await w.drive(item, PUBLIC)
    after = _unrecorded()
    assert after[0] - before[0] == 3  # exchanged, processor token issued, submitted
    assert after[1] > before[1]
    failing = World()
    failing.plaid.fail_on("exchange_public_token", permanent("INVALID_PUBLIC_TOKEN"))
    await failing.drive(failing.add(new_item(State.LINK)), PUBLIC)
    assert _unrecorded()[0] == after[0]


async def test_each_commit_renews_the_lease_and_the_last_one_releases_it() -> None:
    w = World()
    item = w.add(new_item(State.LINK))
    leases: list[Lease | None] = []

    def tick() -> None:  # each upstream call takes 10 s; note the lease while it is in flight
        w.store.clock += 10
        leases.append(w.store.lease_of(item.id))

    for name in ALL_CALLS[:3]:
        w.plaid.on_call(name, tick)
    w.atomic.on_call("submit_funding_source", tick)
    await w.drive(item, PUBLIC)
    (owner,) = {lease.owner for lease in leases}  # one drive, one lease owner throughout
    # claimed at 0 s; renewed by the commits at 10 s and 30 s; released by the last commit itself
    assert leases == [Lease(owner, 30), Lease(owner, 40), Lease(owner, 40), Lease(owner, 60)]
    assert w.store.lease_of(item.id) is None and "release" not in w.store.calls


async def test_link_without_a_public_token_waits_and_releases() -> None:
    w = World()
    item = w.add(new_item(State.LINK))
    assert await w.drive(item) == item
    assert w.calls() == [] and w.store.path(item.id) == ["link"]
    assert w.store.lease_of(item.id) is None and w.store.calls == ["claim", "release"]


async def test_another_workers_lease_makes_the_item_busy() -> None:
    w = World()
    item = w.add(new_item(State.LINK))
    other = uuid.uuid4()
    w.store.hold(item.id, other, LEASE_S)
    with pytest.raises(ItemBusy):
        await w.drive(item, PUBLIC)
    assert w.calls() == [] and w.store.lease_of(item.id) == Lease(other, LEASE_S)


async def test_an_expired_lease_is_taken_over() -> None:
    w = World()
    item = w.add(new_item(State.LINK))
    w.store.hold(item.id, uuid.uuid4(), LEASE_S)
    w.store.clock = LEASE_S + 1
    done = await w.drive(item, PUBLIC)
    assert done is not None and done.state is State.ATOMIC_PENDING


async def test_unknown_item_is_none() -> None:
    w = World()
    assert await w.pipeline.drive(uuid.uuid4(), public_token=PUBLIC, cause=CAUSE) is None
    assert w.calls() == [] and w.store.calls == ["claim", "get"]


async def test_transient_error_leaves_the_last_committed_state_and_the_next_drive_resumes() -> None:
    w = World()
    item = w.add(new_item(State.LINK))
    w.plaid.fail_on("accounts", transient(error_code="INSTITUTION_DOWN", status=400))
    with pytest.raises(UpstreamError) as raised:
        await w.drive(item, PUBLIC)
    assert raised.value.error_code == "INSTITUTION_DOWN"
    stuck = w.store.items[item.id]
    assert stuck.state is State.EXCHANGED and stuck.access_token is not None and stuck.error_code is None
    assert w.store.lease_of(item.id) is None
    # redelivered as item.drive (no public token): it goes on from exchanged, never exchanging again
    done = await w.drive(item)
    assert done is not None and done.state is State.ATOMIC_PENDING
    assert w.calls() == ["exchange_public_token", "accounts", *ALL_CALLS[1:]]


async def test_permanent_error_at_exchange_fails_the_item() -> None:
    w = World()
    item = w.add(new_item(State.LINK))
    w.plaid.fail_on("exchange_public_token", permanent("INVALID_PUBLIC_TOKEN", request_id="req-x"))
    done = await w.drive(item, PUBLIC)
    assert done is not None and done.state is State.FAILED
    assert done.error_code == "INVALID_PUBLIC_TOKEN" and done.plaid_request_id == "req-x"
    assert w.store.history[item.id][-1].detail["error_code"] == "INVALID_PUBLIC_TOKEN"
    assert w.calls() == ["exchange_public_token"]  # no access token: nothing to remove
    assert w.store.lease_of(item.id) is None


async def test_permanent_error_after_exchange_removes_the_item_and_destroys_its_tokens() -> None:
    w = World(accounts=[])  # no checking or savings account: NO_USABLE_ACCOUNT
    item = w.add(linked_item(State.EXCHANGED, access="access-sandbox-9"))
    done = await w.drive(item)
    assert done is not None and done.state is State.FAILED and done.error_code == "NO_USABLE_ACCOUNT"
    assert w.plaid.calls == [("accounts", ("access-sandbox-9", None)), ("remove_item", ("access-sandbox-9",))]
    stored = w.store.items[item.id]
    assert stored.state is State.FAILED and stored.access_token is None and stored.processor_token is None
    assert w.store.path(item.id) == ["exchanged", "failed"] and w.store.lease_of(item.id) is None


async def test_login_required_waits_for_the_user_and_keeps_the_tokens() -> None:
    w = World()
    item = w.add(linked_item(State.EXCHANGED))
    w.plaid.fail_on("accounts", permanent("ITEM_LOGIN_REQUIRED"))
    done = await w.drive(item)
    assert done is not None and done.state is State.LOGIN_REQUIRED
    assert done.resume_state is State.EXCHANGED and done.error_code == "ITEM_LOGIN_REQUIRED"
    assert done.access_token == item.access_token and "remove_item" not in w.plaid.names()
    assert w.store.lease_of(item.id) is None


async def test_a_repaired_login_resumes_and_drives_on_in_the_same_lease() -> None:
    """item.repaired / item.drive / the periodic check: /item/get says no error, the Item goes back
    to where it stopped and carries on."""
    w = World()
    item = w.add(linked_item(State.EXCHANGED))
    w.plaid.fail_on("accounts", permanent("ITEM_LOGIN_REQUIRED"))
    broken = await w.drive(item)
    assert broken is not None and broken.state is State.LOGIN_REQUIRED
    w.plaid.item_error = "ITEM_LOGIN_REQUIRED"
    still = await w.drive(broken)  # any drive of a login_required Item asks Plaid first
    assert still is not None and still.state is State.LOGIN_REQUIRED
    w.plaid.item_error = None
    done = await w.drive(broken)
    assert done is not None and done.state is State.ATOMIC_PENDING
    assert w.store.path(item.id) == [
        "exchanged",
        "login_required",
        "exchanged",
        "processor_token_issued",
        "atomic_pending",
    ]
    assert w.plaid.names().count("item_get") == 2 and w.store.lease_of(item.id) is None


async def test_a_login_check_of_a_working_item_finds_it_broken() -> None:
    w = World()
    item = w.add(linked_item(State.ATOMIC_VERIFIED, processor="processor-sandbox-x"))
    w.plaid.item_error = "ITEM_LOCKED"
    done = await w.pipeline.drive(item.id, public_token=None, cause=CAUSE, check_login=True)
    assert done is not None and done.state is State.LOGIN_REQUIRED
    assert done.error_code == "ITEM_LOCKED" and done.resume_state is State.ATOMIC_VERIFIED
    assert w.plaid.names() == ["item_get"] and w.store.lease_of(item.id) is None


@pytest.mark.parametrize("error", [permanent("ITEM_NOT_FOUND"), transient()])
async def test_a_login_check_plaid_cannot_answer_changes_nothing(error: UpstreamError) -> None:
    w = World()
    item = w.add(linked_item(State.LOGIN_REQUIRED))
    w.plaid.fail_on("item_get", error)
    if error.status == 503:
        with pytest.raises(UpstreamError):  # retried through the broker
            await w.drive(item)
    else:
        done = await w.drive(item)
        assert done is not None and done.state is State.LOGIN_REQUIRED
    assert w.store.items[item.id].state is State.LOGIN_REQUIRED and w.store.lease_of(item.id) is None


async def test_awaiting_verification_releases_the_lease_with_its_transition() -> None:
    pending = Account("acc-md", "depository", "checking", "pending_manual_verification", "1111")
    w = World(accounts=[pending])
    item = w.add(linked_item(State.EXCHANGED))
    done = await w.drive(item)
    assert done is not None and done.state is State.AWAITING_VERIFICATION and done.account_id == "acc-md"
    assert w.calls() == ["accounts"] and w.store.lease_of(item.id) is None


def moved_on(w: World, item: Item, *, taken_by: uuid.UUID | None = None) -> Callable[[], None]:
    """While our call is in flight, the row moves to processor_token_issued with another worker's
    token (that worker having taken over our expired lease, if ``taken_by``)."""

    def meanwhile() -> None:
        if taken_by is not None:
            w.store.clock += LEASE_S + 1
            w.store.hold(item.id, taken_by, LEASE_S)
        token = seal(item.id, "processor_token", "processor-sandbox-other")
        w.store.move(item.id, State.PROCESSOR_TOKEN_ISSUED, processor_token=token, account_id="acc-other")

    return meanwhile


async def test_refused_transition_reclaims_and_goes_on_from_the_state_it_finds() -> None:
    w = World()
    item = w.add(linked_item(State.EXCHANGED))
    w.store.refuse_next_transition(moved_on(w, item))
    done = await w.drive(item)
    assert done is not None and done.state is State.ATOMIC_PENDING
    assert w.store.calls.count("claim") == 2
    # it submitted the token it found, not the one its own refused step created
    assert w.atomic.calls[0][1][0] == "processor-sandbox-other"
    assert w.store.path(item.id) == ["exchanged", "processor_token_issued", "atomic_pending"]
    assert w.store.lease_of(item.id) is None


async def test_lease_lost_after_a_refusal_leaves_the_item_to_the_other_worker() -> None:
    w = World()
    item = w.add(linked_item(State.EXCHANGED))
    other = uuid.uuid4()
    # no forced refusal: the guard itself refuses, since the row is no longer exchanged
    w.plaid.on_call("create_processor_token", moved_on(w, item, taken_by=other))
    done = await w.drive(item)
    assert done is not None and done.state is State.PROCESSOR_TOKEN_ISSUED
    assert w.atomic.calls == [] and "release" not in w.store.calls
    assert w.store.lease_of(item.id) == Lease(other, w.store.clock + LEASE_S)
    assert w.store.path(item.id) == ["exchanged", "processor_token_issued"]


async def test_a_leased_item_is_driven_without_claiming() -> None:
    w = World()
    owner = uuid.uuid4()
    item = w.store.add(new_item(State.LINK), lease=(owner, LEASE_S))
    done = await w.drive(item, PUBLIC, leased=item, owner=owner)
    assert done is not None and done.state is State.ATOMIC_PENDING
    assert "claim" not in w.store.calls and w.calls() == ALL_CALLS
    assert w.store.lease_of(item.id) is None


async def test_two_drives_in_one_process_do_not_drive_one_item_at_once() -> None:
    """The same public token submitted twice, both messages in one worker: the lease is the drive's,
    not the process's, so the second drive finds the Item busy while the first is exchanging, and
    the spent public token is exchanged once."""
    w = World()
    item = w.add(new_item(State.LINK))
    first, second = await asyncio.gather(w.drive(item, PUBLIC), w.drive(item, PUBLIC), return_exceptions=True)
    assert isinstance(first, Item) and first.state is State.ATOMIC_PENDING
    assert isinstance(second, ItemBusy)
    assert w.plaid.names().count("exchange_public_token") == 1


async def test_a_failing_step_moves_the_item_only_from_the_state_it_started_in() -> None:
    """A drive that started in `link` and gets INVALID_PUBLIC_TOKEN (the token was spent by another
    drive that exchanged it meanwhile) must not fail the Item that drive moved on."""
    w = World()
    item = w.add(new_item(State.LINK))

    def exchanged_meanwhile() -> None:
        w.store.move(item.id, State.EXCHANGED, access_token=seal(item.id, "access_token", "access-other"))

    w.plaid.on_call("exchange_public_token", exchanged_meanwhile)
    w.plaid.fail_on("exchange_public_token", permanent("INVALID_PUBLIC_TOKEN"))
    done = await w.drive(item, PUBLIC)
    # the failure was refused (the row had left `link`); the drive looked again and went on from there
    assert done is not None and done.state is State.ATOMIC_PENDING
    assert "failed" not in w.store.path(item.id) and "remove_item" not in w.plaid.names()


class BrokenOnce(FakeStore):
    """The database as a Postgres restart leaves it: the first commit after the exchange meets a
    pooled connection broken mid-protocol, and the lease's release fails too."""

    def __init__(self) -> None:
        super().__init__()
        self.broken_commits = 1
        self.broken_releases = 1

    async def transition(self, item: Item, trigger: Trigger, **kw: Any) -> Item | None:
        if self.broken_commits:
            self.broken_commits -= 1
            raise asyncpg.exceptions.InternalClientError(
                "cannot switch to state 12; another operation (2) is in progress"
            )
        return await super().transition(item, trigger, **kw)

    async def release(self, item_id: uuid.UUID, owner: uuid.UUID) -> None:
        if self.broken_releases:
            self.broken_releases -= 1
            raise asyncpg.exceptions.CannotConnectNowError("the database system is shutting down")
        await super().release(item_id, owner)


async def test_a_connection_broken_by_a_postgres_restart_does_not_spend_the_public_token_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found in the Postgres-restart chaos runs: the commit after the exchange met asyncpg's
    InternalClientError, gave up at once, and the redelivered message exchanged the spent token."""
    w = World()
    w.store = BrokenOnce()
    w.pipeline.store = w.store
    monkeypatch.setattr(asyncio, "sleep", _no_wait)
    item = w.add(new_item(State.LINK))
    done = await w.drive(item, PUBLIC)
    assert done is not None and done.state is State.ATOMIC_PENDING
    assert w.plaid.names().count("exchange_public_token") == 1 and w.store.broken_commits == 0


async def test_a_release_the_database_refuses_does_not_hide_why_the_drive_stopped() -> None:
    w = World()
    w.store = BrokenOnce()
    w.store.broken_commits = 0
    w.pipeline.store = w.store
    w.plaid.fail_on("accounts", transient(error_code="INSTITUTION_DOWN", status=400))
    item = w.add(linked_item(State.EXCHANGED))
    with pytest.raises(UpstreamError) as stopped:  # not CannotConnectNowError from the release
        await w.drive(item)
    assert stopped.value.error_code == "INSTITUTION_DOWN" and w.store.broken_releases == 0


async def _no_wait(_: float) -> None:
    return None


def held(key: str, status: str, funding_source_id: str) -> HeldEvent:
    return HeldEvent(key, "webhook.atomic.x", f"evt-{key}", status, funding_source_id, EPOCH)


async def test_atomic_answers_held_before_the_submission_committed_are_applied_with_it() -> None:
    w = World()
    item = w.add(linked_item(State.PROCESSOR_TOKEN_ISSUED, processor="processor-sandbox-1"))
    w.store.hold_event(item.id, held("other", "VERIFIED", "fs-someone-else"))
    w.store.hold_event(item.id, held("ours", "VERIFIED", "fs-1"))
    done = await w.drive(item)
    assert done is not None and done.state is State.ATOMIC_VERIFIED
    assert w.store.path(item.id) == ["processor_token_issued", "atomic_pending", "atomic_verified"]
    assert w.store.history[item.id][-1].event_id == "evt-ours"
    assert w.store.settled == {"other": "ignored", "ours": "applied"}
    assert w.store.committed_triggers == [Trigger.ATOMIC_SUBMITTED, Trigger.ATOMIC_VERIFIED]
    assert w.store.lease_of(item.id) is None
    # the one-statement commit was refused (the Item held answers); the transaction applied them
    assert w.store.calls == ["claim", "transition", "transition", "transition"]


async def test_without_held_answers_the_submission_waits_for_atomic() -> None:
    w = World()
    item = w.add(linked_item(State.PROCESSOR_TOKEN_ISSUED, processor="processor-sandbox-1"))
    done = await w.drive(item)
    assert done is not None and done.state is State.ATOMIC_PENDING
    assert w.store.settled == {}
    assert w.store.calls == ["claim", "transition"]  # one statement, no transaction
