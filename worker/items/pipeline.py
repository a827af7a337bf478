"""Drives one Item from its current state as far as it can go on its own:
link → exchanged → processor_token_issued → atomic_pending.

Each step makes one upstream call and commits one transition, so a worker killed anywhere resumes
from the last committed state when the message is redelivered. Permanent upstream errors move the
Item to its state (``failed``, ``login_required``); transient ones propagate as
:class:`UpstreamError` for the consumer to retry through the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import structlog

from worker import metrics
from worker.atomic_api import AtomicClient
from worker.errors import ItemBusy, PublishFailed, ResultParked, UpstreamError
from worker.items.model import NO_CHANGES, Cause, Changes, Item, Sealed
from worker.items.parking import ParkedResult
from worker.items.rules import (
    AUTOMATED_MICRODEPOSITS_EXPIRY,
    STEPPING,
    Kind,
    Step,
    choose_account,
    classify,
    failure_trigger,
    next_step,
    on_atomic_status,
    on_item_health,
    on_verification_status,
    operator_hint,
)
from worker.items.sealing import Sealer, aad
from worker.items.states import State, Trigger, next_state
from worker.items.store import Store
from worker.items.unavailable import DATABASE_UNAVAILABLE
from worker.plaid_api import PlaidClient

log = structlog.get_logger(__name__)

# What /item/remove answers for an Item removed before (or a token Plaid no longer knows).
GONE_AT_PLAID = frozenset({"ITEM_NOT_FOUND", "INVALID_ACCESS_TOKEN"})


@dataclasses.dataclass(frozen=True)
class Done:
    """What an upstream call leads to: the transition, its history detail and the columns it sets.
    No ``trigger``: the Item stays where it is (an account still waiting for verification)."""

    trigger: Trigger | None
    detail: dict[str, object]
    changes: Changes = NO_CHANGES


# How long a step waits for the database to commit what an upstream call already did, when it cannot
# park the result on the broker (then a fresh access token is removed at Plaid after this).
COMMIT_PATIENCE_S = 30.0
# How long it waits before parking the result instead (a restart of Postgres takes a few seconds).
PARK_AFTER_S = 5.0
# How long a parked result's message is held waiting for the database before it goes through the
# delay queues (whose longest tier would hold it back longer than the database might be away).
PARKED_PATIENCE_S = 600.0

Park = Callable[[ParkedResult], Awaitable[None]]
StepFn = Callable[[Item, str | None], Awaitable[Done]]


class Pipeline:
    def __init__(
        self,
        *,
        store: Store,
        sealer: Sealer,
        plaid: PlaidClient,
        atomic: AtomicClient,
        lease_s: float,
        accept_caution: bool = False,
        automated_expiry: timedelta = AUTOMATED_MICRODEPOSITS_EXPIRY,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        park: Park | None = None,
    ) -> None:
        """``lease_s``: how long this worker may hold an Item between two steps (PAW_ITEM_LEASE_S).
        Renewed by every step's commit, so it only has to outlast one step (at most two upstream
        calls: ``/accounts/get`` and ``/processor/token/create``); a killed worker's Items are free
        again within this time."""
        self.lease_s = lease_s
        self.accept_caution = accept_caution  # fund accounts Database Insights passed with caution
        # an automated micro-deposit account still pending this long after the Item began waiting fails
        self.automated_expiry = automated_expiry
        self.now = now
        # publishes a result the database cannot take, confirmed (worker.services); None: no parking
        self.park = park
        self.store = store
        self.sealer = sealer
        self.plaid = plaid
        self.atomic = atomic
        self._calls: dict[Step, StepFn] = {
            Step.EXCHANGE: self._exchange,
            Step.ISSUE_PROCESSOR_TOKEN: self._issue_processor_token,
            Step.SUBMIT_TO_ATOMIC: self._submit_to_atomic,
            Step.CHECK_VERIFICATION: self._check_verification,
        }

    async def drive(
        self,
        item_id: uuid.UUID,
        *,
        public_token: str | None,
        cause: Cause,
        leased: Item | None = None,
        owner: uuid.UUID | None = None,
        check_login: bool = False,
    ) -> Item | None:
        """Takes the Item's lease (or uses ``leased``, an Item just created with the lease of
        ``owner``) and steps it on until it waits for someone else. Each transition renews the lease;
        the last releases it.

        With ``check_login``, and always for an Item in ``login_required``, it first asks Plaid
        (``/item/get``) what the login is now and applies that (:meth:`_check_login`): a repaired
        Item resumes from where it stopped and is driven on in the same lease.

        The lease belongs to this one drive, not to the process: two messages about the same Item in
        one worker (the same public token submitted twice) do not drive it at once; the second finds
        it busy (:class:`ItemBusy`) and is tried again later, when the first has moved it on."""
        if leased is not None and owner is None:
            raise ValueError("leased= needs the owner= it was leased to")
        owner = owner or uuid.uuid4()
        item = leased or await self.store.claim(item_id, owner, self.lease_s)
        if item is None:
            if await self.store.get(item_id) is None:
                return None
            raise ItemBusy()
        held = True
        try:
            if check_login or item.state is State.LOGIN_REQUIRED:
                checked = await self._check_login(item, cause, owner)
                if checked is None:  # our lease ran out and another worker took the Item over
                    held = False
                    return await self.store.get(item_id)
                item = checked
            for n in range(10):
                step = self._step_for(item, public_token, resuming=n == 0)
                if step is None:
                    return item
                moved, released = await self._take(item, step, public_token, cause, owner)
                if moved is None:  # refused: the row moved on meanwhile; look again, lease renewed
                    moved = await self.store.claim(item_id, owner, self.lease_s)
                    if moved is None:  # our lease ran out and another worker took the Item over
                        held = False
                        return await self.store.get(item_id)
                held = not released
                item = moved
            return item
        finally:
            if held:
                await self._release(item_id, owner)

    async def _release(self, item_id: uuid.UUID, owner: uuid.UUID) -> None:
        """Gives the lease back; with the database away the lease simply runs out (``lease_s``), and
        the error that ended the drive, if any, is the one the consumer sees, not this one."""
        try:
            await self.store.release(item_id, owner)
        except DATABASE_UNAVAILABLE as e:
            log.warning("item.release_failed", item_id=str(item_id), error=type(e).__name__)

    async def _check_login(self, item: Item, cause: Cause, owner: uuid.UUID) -> Item | None:
        """Asks Plaid what the Item's login is now and applies it, holding the Item's lease.

        The call is made outside any transaction (no connection or row lock waits on Plaid); the
        lease, which every drive and check of this Item takes, orders them: no other check or step
        of this Item runs between this ``/item/get`` and its transition, so the last answer applied
        is the last one asked for. Transitions from elsewhere (a revocation, Atomic) are guarded by
        the state this one was decided in: if one won, the Item is read again and decided again.
        ``None``: the lease was lost."""
        for _ in range(3):
            if item.access_token is None or on_item_health(item, None).outcome == "ignored":
                return item
            try:
                health = await self.plaid.item_get(self.access_token(item))
            except UpstreamError as err:
                kind = classify(err)
                if kind is Kind.OPERATOR:
                    await self._operator_alert(err, "check_login")
                if kind is not Kind.PERMANENT:
                    raise
                # ITEM_NOT_FOUND and the like: nothing to learn about the login; the Item stays
                log.warning("item.login_check_failed", item_id=str(item.id), error_code=err.error_code)
                return item
            decision = on_item_health(item, health.error_code)
            log.info(
                "item.login_checked",
                item_id=str(item.id),
                state=item.state.value,
                plaid_error_code=health.error_code,
                outcome=decision.outcome,
                request_id=health.request_id,
            )
            if decision.trigger is None:
                return item
            moved = await self.store.transition(
                item,
                decision.trigger,
                cause=cause.name,
                event_id=cause.event_id,
                detail={
                    k: v
                    for k, v in (
                        ("error_code", decision.error_code),
                        ("request_id", health.request_id),
                        ("checked", "/item/get"),
                    )
                    if v is not None
                },
                changes=decision.changes(),
                lease=(owner, self.lease_s),
            )
            if moved is not None:
                return moved
            refreshed = await self.store.claim(item.id, owner, self.lease_s)  # moved on meanwhile
            if refreshed is None:
                return None
            item = refreshed
        return item

    def _step_for(self, item: Item, public_token: str | None, *, resuming: bool) -> StepFn | None:
        step = next_step(item.state, has_public_token=public_token is not None, resuming=resuming)
        return None if step is None else self._calls[step]

    async def _take(
        self, item: Item, step: StepFn, public_token: str | None, cause: Cause, owner: uuid.UUID
    ) -> tuple[Item | None, bool]:
        """One upstream call and the transition it leads to; returns the Item and whether that
        transition released our lease (it does when the Item goes where no step follows). A
        permanent upstream error moves the Item to its state; a transient one propagates, for the
        consumer to retry."""
        try:
            done = await step(item, public_token)
            answered_at, answered = self.now(), time.perf_counter()  # the kill window opens
        except UpstreamError as err:
            kind = classify(err)
            if (
                kind is Kind.OPERATOR
            ):  # paw's setup, not the Item: it stays where it is; the message is parked
                await self._operator_alert(err, step.__name__.strip("_"))
            if kind is not Kind.PERMANENT:  # transient: retried through the broker
                raise
            return await self.fail(item, err, cause), False
        if done.trigger is None:  # nothing changes; the reconciler asks again after another full wait
            await self.store.touch(item.id)
            log.info("item.still_waiting", item_id=str(item.id), **done.detail)
            return item, False
        release = next_state(item.state, done.trigger) not in STEPPING
        try:
            moved = await self._commit(
                item, done, cause, lease=(owner, None if release else self.lease_s), answered_at=answered_at
            )
        except ResultParked:  # durable on the broker
            metrics.RESULT_UNRECORDED_SECONDS.observe(time.perf_counter() - answered)
            raise
        metrics.RESULT_UNRECORDED_SECONDS.observe(time.perf_counter() - answered)
        return moved, release and moved is not None

    async def _operator_alert(self, err: UpstreamError, step: str) -> None:
        code = err.error_code or "UNKNOWN"
        hint = operator_hint(code) or code
        log.error("setup.broken", error_code=code, service=err.service, step=step, hint=hint)
        with contextlib.suppress(*DATABASE_UNAVAILABLE):  # the alert must not hide the error itself
            await self.store.record_operator_alert(code, err.service, step, hint)

    async def _commit(
        self,
        item: Item,
        done: Done,
        cause: Cause,
        *,
        lease: tuple[uuid.UUID, float | None],
        answered_at: datetime | None = None,
    ) -> Item | None:
        """Commits what an upstream call did, retrying through a database blip: the call has
        happened and may not be repeatable (a public token is spent by its exchange). If the
        database stays away for ``PARK_AFTER_S``, the result is parked on the broker
        (:mod:`worker.items.parking`) and :class:`ResultParked` raised; without parking, or if the
        broker does not confirm either, after ``COMMIT_PATIENCE_S`` a fresh access token is removed
        at Plaid rather than left live and unrecorded, and the database error raised."""
        trigger = done.trigger
        assert trigger is not None
        started = time.monotonic()
        delay = 0.05
        while True:
            try:
                if trigger is Trigger.ATOMIC_SUBMITTED:
                    return await self._submitted(item, done, cause, lease)
                return await self.store.transition(
                    item,
                    trigger,
                    cause=cause.name,
                    event_id=cause.event_id,
                    detail=done.detail,
                    changes=done.changes,
                    lease=lease,
                )
            except DATABASE_UNAVAILABLE as e:
                waited = time.monotonic() - started
                if self.park is not None and waited + delay > PARK_AFTER_S:
                    # returns only if the broker did not confirm: then wait on, as without parking
                    await self._park(item, done, cause, lease[0], answered_at or self.now())
                if waited + delay > COMMIT_PATIENCE_S:
                    log.error(
                        "item.commit_lost",
                        item_id=str(item.id),
                        trigger=trigger.value,
                        error=type(e).__name__,
                    )
                    if done.changes.access_token is not None:
                        await self._remove_unrecorded(done.changes.access_token, item)
                    raise
                log.warning("item.commit_retry", item_id=str(item.id), error=type(e).__name__, delay_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _submitted(
        self,
        item: Item,
        done: Done,
        cause: Cause,
        lease: tuple[uuid.UUID, float | None] | None,
        *,
        parked: bool = False,
    ) -> Item | None:
        """Commits the submission to Atomic and, in the same transaction, applies what Atomic's
        webhook said meanwhile (held in the inbox by :func:`on_atomic_status`). The webhook's
        statement locks the Item's row as this one's update does, so either it committed first and
        its event is held here, or this commits first and the webhook finds ``atomic_pending``.

        Usually nothing is held: then one statement commits it, refused if a held answer marked the
        Item (``held_at``), and only then does the transaction below run."""
        assert done.trigger is Trigger.ATOMIC_SUBMITTED
        detail = {**done.detail, "parked": True} if parked else done.detail
        submit = functools.partial(
            self.store.transition,
            item,
            done.trigger,
            cause=cause.name,
            event_id=cause.event_id,
            detail=detail,
            changes=done.changes,
            lease=lease,
        )
        moved = await submit(unless_held=True)
        if moved is not None:
            return moved
        committed: list[tuple[Trigger, Item]] = []
        async with self.store.transaction() as conn:
            moved = await submit(conn=conn)
            if moved is None:
                return None
            committed.append((done.trigger, moved))
            for held in await self.store.held_events(conn, item.id):
                decision = on_atomic_status(moved, held.status, held.funding_source_id)
                outcome = decision.outcome
                if decision.trigger is not None:
                    later = await self.store.transition(
                        moved,
                        decision.trigger,
                        cause=held.routing_key,
                        event_id=held.event_id,
                        detail={"held_s": round((self.now() - held.received_at).total_seconds(), 3)},
                        changes=decision.changes(),
                        conn=conn,
                    )
                    if later is not None:
                        committed.append((decision.trigger, later))
                        moved = later
                    else:
                        outcome = "refused"
                await self.store.settle_event(conn, held.event_key, outcome)
                log.info(
                    "event.held_applied", item_id=str(item.id), event_key=held.event_key, outcome=outcome
                )
        for trigger, at in committed:
            self.store.committed(trigger, at)
        return moved

    async def _park(
        self, item: Item, done: Done, cause: Cause, owner: uuid.UUID, answered_at: datetime
    ) -> None:
        """Parks the result; raises :class:`ResultParked` once the broker confirmed it. Returns if it
        did not (the caller goes on waiting for the database)."""
        assert self.park is not None and done.trigger is not None
        parked = ParkedResult(
            item_id=item.id,
            from_state=item.state,
            trigger=done.trigger,
            cause=cause,
            detail=dict(done.detail),
            changes=done.changes,
            owner=owner,
            answered_at=answered_at,
            parked_at=self.now(),
        )
        try:
            await self.park(parked)
        except PublishFailed as e:
            log.error("item.park_failed", item_id=str(item.id), trigger=done.trigger.value, error=str(e))
            return
        metrics.PARKED.labels("parked").inc()
        log.warning(
            "item.result_parked",
            item_id=str(item.id),
            trigger=done.trigger.value,
            from_state=item.state.value,
            unrecorded_s=round((parked.parked_at - answered_at).total_seconds(), 3),
        )
        raise ResultParked()

    async def apply_parked(self, parked: ParkedResult) -> Item | None:
        """Applies a parked result as soon as the database answers (waiting for it up to
        ``PARKED_PATIENCE_S``), then drives the Item on. Idempotent: a second copy finds the Item
        moved on with this very result and only drives it."""
        deadline = time.monotonic() + PARKED_PATIENCE_S
        delay = 0.05
        while True:
            try:
                return await self._apply_parked(parked)
            except DATABASE_UNAVAILABLE as e:
                if time.monotonic() + delay > deadline:
                    raise
                log.debug("item.parked_waits", item_id=str(parked.item_id), error=type(e).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _apply_parked(self, parked: ParkedResult) -> Item | None:
        item = await self.store.get(parked.item_id)
        if item is None:
            log.error("item.parked_for_unknown_item", item_id=str(parked.item_id))
            return None
        if item.state is parked.from_state:
            lease = (parked.owner, None) if parked.owner else None
            if parked.trigger is Trigger.ATOMIC_SUBMITTED:  # with what Atomic said meanwhile
                done = Done(parked.trigger, parked.detail, parked.changes)
                moved = await self._submitted(item, done, parked.cause, lease, parked=True)
            else:
                moved = await self.store.transition(
                    item,
                    parked.trigger,
                    cause=parked.cause.name,
                    event_id=parked.cause.event_id,
                    detail={**parked.detail, "parked": True},
                    changes=parked.changes,
                    lease=lease,
                )
            if moved is not None:
                metrics.PARKED.labels("applied").inc()
                log.info(
                    "item.parked_applied",
                    item_id=str(item.id),
                    trigger=parked.trigger.value,
                    parked_s=round((self.now() - parked.parked_at).total_seconds(), 3),
                )
            item = moved or await self.store.get(parked.item_id)
            if item is None:
                return None
        orphan = parked.orphaned_access_token(item.access_token)
        if orphan is not None:  # the Item moved on without it: live at Plaid, recorded nowhere
            metrics.PARKED.labels("orphan_removed").inc()
            log.error("item.parked_orphan", item_id=str(item.id), state=item.state.value)
            await self._remove_unrecorded(orphan, item)
        return await self.drive(item.id, public_token=None, cause=parked.cause)

    async def _remove_unrecorded(self, sealed: Sealed, item: Item) -> None:
        try:
            await self.plaid.remove_item(self.sealer.open(sealed, aad=aad(item.id, "access_token")))
        except UpstreamError as e:
            log.warning("item.remove_failed", item_id=str(item.id), error_code=e.error_code)

    async def fail(self, item: Item, err: UpstreamError, cause: Cause) -> Item | None:
        """Moves the Item to where a permanent upstream error leaves it. A failed Item keeps no live
        access: its Item is removed at Plaid and its tokens destroyed."""
        trigger = failure_trigger(item.state, err)
        log.warning(
            "item.upstream_failed", item_id=str(item.id), error_code=err.error_code, request_id=err.request_id
        )
        moved = await self._fail(item, trigger, err, cause)
        if moved is not None and moved.state is State.FAILED and moved.access_token is not None:
            await self.release_access(moved)
        return moved

    async def release_access(self, item: Item, *, must_remove: bool = False) -> None:
        """Removes the Item at Plaid (its access token, and every processor token, die with it), then
        destroys the stored tokens. ``ITEM_NOT_FOUND`` (or a token Plaid no longer knows) means it
        is gone already. With ``must_remove`` (revocation) any other failure is raised and the
        tokens are kept for the retry; without it (a failed Item) removal is best effort."""
        try:
            await self.remove_at_plaid(item)
        except UpstreamError as e:
            if must_remove:
                raise
            log.warning("item.remove_failed", item_id=str(item.id), error_code=e.error_code)
        await self.store.destroy_tokens(item.id)

    async def remove_at_plaid(self, item: Item) -> None:
        """``/item/remove``, once (marked), unless there is no access token; an Item Plaid no longer
        knows counts as removed. Any other failure is raised (:class:`UpstreamError`)."""
        if item.access_token is None or item.plaid_removed_at is not None:
            return
        try:
            await self.plaid.remove_item(self.access_token(item))
        except UpstreamError as e:
            if e.error_code not in GONE_AT_PLAID:
                raise
        await self.store.mark_plaid_removed(item.id)

    async def forget(self, item: Item, cause: Cause) -> Item | None:
        """``paw item forget``: remove the Item at Plaid and at Atomic, then destroy its tokens, keep
        its history for the audit. A failure at Plaid or Atomic is raised (:class:`UpstreamError`)
        before any token is destroyed: an Item live at Plaid never loses its only handle. What was
        done is marked (``plaid_removed_at``, ``atomic_removed_at``), so running it again goes on."""
        await self.remove_at_plaid(item)
        await self.remove_funding_source(item)
        await self.store.destroy_tokens(item.id)
        if item.state is State.REVOKED:
            return await self.store.get(item.id)
        return await self.store.transition(
            item,
            Trigger.FORGOTTEN,
            cause=cause.name,
            event_id=cause.event_id,
            changes=Changes(destroy_tokens=True),
        )

    async def remove_funding_source(self, item: Item) -> None:
        """Removes the Item's funding source at Atomic, once (404: gone already) and marks it so."""
        if not item.atomic_funding_source_id or item.atomic_removed_at is not None:
            return
        try:
            await self.atomic.remove_funding_source(item.atomic_funding_source_id)
        except UpstreamError as e:
            if e.status != 404:
                raise
        await self.store.mark_atomic_removed(item.id)
        log.info("atomic.funding_source_removed", funding_source_id=item.atomic_funding_source_id)

    async def _fail(self, item: Item, trigger: Trigger, err: UpstreamError, cause: Cause) -> Item | None:
        return await self.store.transition(
            item,
            trigger,
            cause=cause.name,
            event_id=cause.event_id,
            detail={"error_code": err.error_code, "request_id": err.request_id, "service": err.service},
            changes=Changes(
                error_code=err.error_code,
                error_type=err.error_type,
                error_message=str(err)[:500],
                plaid_request_id=err.request_id,
            ),
        )

    async def _exchange(self, item: Item, public_token: str | None) -> Done:
        assert public_token is not None
        ex = await self.plaid.exchange_public_token(public_token)
        return Done(
            Trigger.EXCHANGED,
            {"request_id": ex.request_id, "plaid_item_id": ex.item_id},
            Changes(
                plaid_item_id=ex.item_id,
                access_token=self.sealer.seal(ex.access_token, aad=aad(item.id, "access_token")),
                plaid_request_id=ex.request_id,
            ),
        )

    def access_token(self, item: Item) -> str:
        assert item.access_token is not None, f"item {item.id} in {item.state} has no access token"
        return self.sealer.open(item.access_token, aad=aad(item.id, "access_token"))

    async def _issue_processor_token(self, item: Item, _: str | None) -> Done:
        access_token = self.access_token(item)
        wanted = [item.requested_account_id] if item.requested_account_id else None
        accounts, request_id = await self.plaid.accounts(access_token, wanted)
        choice = choose_account(accounts, item.requested_account_id, accept_caution=self.accept_caution)
        if choice.account_id is None:
            raise UpstreamError(
                choice.reason or "no usable account",
                service="paw",
                status=422,
                error_code=choice.error_code or "NO_USABLE_ACCOUNT",
            )
        if choice.awaiting_verification:
            return Done(
                Trigger.AWAITING_VERIFICATION,
                {"account_id": choice.account_id, "request_id": request_id},
                Changes(account_id=choice.account_id),
            )
        processor_token, request_id = await self.plaid.create_processor_token(access_token, choice.account_id)
        return Done(
            Trigger.PROCESSOR_TOKEN_CREATED,
            {"account_id": choice.account_id, "request_id": request_id},
            Changes(
                account_id=choice.account_id,
                processor_token=self.sealer.seal(processor_token, aad=aad(item.id, "processor_token")),
                plaid_request_id=request_id,
            ),
        )

    async def _check_verification(self, item: Item, _: str | None) -> Done:
        """Asks Plaid again about the account an Item in ``awaiting_verification`` waits for, and
        applies what Plaid says now (:func:`rules.on_verification_status`): verified, the Item goes
        back to ``exchanged`` and on to its processor token in the same drive; refused or expired, it
        fails (and is removed at Plaid) with the code why; still pending, it stays."""
        assert item.account_id is not None, f"item {item.id} waits for verification of no account"
        accounts, request_id = await self.plaid.accounts(self.access_token(item), [item.account_id])
        account = next((a for a in accounts if a.account_id == item.account_id), None)
        if account is None:
            raise UpstreamError(
                "the account waiting for verification is no longer an account of this Item",
                service="paw",
                status=422,
                error_code="NO_USABLE_ACCOUNT",
            )
        verdict = on_verification_status(
            account.verification_status,
            waiting_since=await self.store.awaiting_since(item.id) or item.created_at,
            now=self.now(),
            accept_caution=self.accept_caution,
            automated_expiry=self.automated_expiry,
        )
        detail = {"verification_status": account.verification_status, "request_id": request_id}
        if verdict.trigger is Trigger.FAILED:
            raise UpstreamError(
                verdict.reason or "the account was not verified",
                service="paw",
                status=422,
                error_code=verdict.error_code or "ACCOUNT_NOT_VERIFIED",
            )
        return Done(verdict.trigger, {"account_id": item.account_id, **detail})

    async def _submit_to_atomic(self, item: Item, _: str | None) -> Done:
        assert item.processor_token is not None
        processor_token = self.sealer.open(item.processor_token, aad=aad(item.id, "processor_token"))
        source = await self.atomic.submit_funding_source(
            processor_token=processor_token,
            account_ref=str(item.id),
            customer_ref=item.client_user_id,
            idempotency_key=str(item.id),
        )
        return Done(
            Trigger.ATOMIC_SUBMITTED,
            {"funding_source_id": source.id, "status": source.status},
            Changes(atomic_funding_source_id=source.id),
        )
