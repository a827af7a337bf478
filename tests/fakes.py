"""In-memory stand-ins for the broker message, the publisher, the store and the Plaid and Atomic
clients (in the spirit of procrastinate's ``InMemoryConnector`` and dramatiq's ``StubBroker``), so the
consumer's and the pipeline's decisions can be unit-tested without Postgres, RabbitMQ or HTTP.

``FakeStore`` mirrors the SQL of ``worker/sql/queries.sql`` (``claim_item``, ``release_item``,
``transition``, ``destroy_tokens``, ``mark_atomic_removed``) on a clock the test moves by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from worker.atomic_api import FundingSource
from worker.errors import PublishFailed, UpstreamError
from worker.items.model import NO_CHANGES, Changes, HeldEvent, HistoryEntry, Item, Sealed
from worker.items.sealing import Sealer, aad
from worker.items.states import State, Trigger, next_state
from worker.plaid_api import Account, Exchange, ItemHealth

T = TypeVar("T")
ACCESS_TOKEN = "access-sandbox-1"  # what FakePlaid's exchange returns, and linked_item's default
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
TEST_SEALER = Sealer((("test1", b"paw-unit-test-key-of-32-bytes!!!"),))


# -- The broker side ------------------------------------------------------------------------------


class FakeMessage:
    """What ``Consumer`` uses of aio-pika's ``AbstractIncomingMessage``. Settling twice fails, as
    aio-pika's ``MessageProcessError`` would."""

    def __init__(
        self,
        body: bytes = b"{}",
        *,
        routing_key: str = "item.link",
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = "m-1",
    ) -> None:
        self.body = body
        self.routing_key = routing_key
        self.headers: dict[str, Any] = dict(headers or {})
        self.message_id = message_id
        self.acked = False
        self.nacked = False
        self.requeued: bool | None = None

    @property
    def processed(self) -> bool:
        return self.acked or self.nacked

    async def ack(self) -> None:
        assert not self.processed, "message settled twice"
        self.acked = True

    async def nack(self, requeue: bool = True) -> None:
        assert not self.processed, "message settled twice"
        self.nacked, self.requeued = True, requeue

    @classmethod
    def back_from(cls, published: Published, work_queue: str) -> FakeMessage:
        """The copy a delay queue dead-letters back to its work queue when its TTL runs out."""
        return cls(
            published.body, routing_key=work_queue, headers=published.headers, message_id=published.message_id
        )


@dataclasses.dataclass(frozen=True)
class Published:
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    message_id: str | None
    expiration_ms: int | None
    to_queue: bool


class FakePublisher:
    """Records what would have been published; with ``failing`` set, the broker never confirms."""

    def __init__(self) -> None:
        self.published: list[Published] = []
        self.failing = False

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        expiration_ms: int | None = None,
        to_queue: bool = False,
    ) -> None:
        if self.failing:
            raise PublishFailed("fake broker did not confirm")
        self.published.append(
            Published(routing_key, body, dict(headers or {}), message_id, expiration_ms, to_queue)
        )


# -- Items and the store --------------------------------------------------------------------------


def new_item(state: State = State.LINK, **fields: Any) -> Item:
    """An Item with every field filled (no tokens, no lease); ``fields`` override."""
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "client_user_id": "user-1",
        "state": state,
        "resume_state": None,
        "requested_account_id": None,
        "plaid_item_id": None if state is State.LINK else "plaid-item-1",
        "account_id": None,
        "access_token": None,
        "processor_token": None,
        "atomic_funding_source_id": None,
        "error_code": None,
        "error_type": None,
        "error_message": None,
        "plaid_request_id": None,
        "created_at": EPOCH,
        "updated_at": EPOCH,
        "version": 1,
    }
    return Item(**{**values, **fields})


def seal(item_id: uuid.UUID, column: str, plaintext: str) -> Sealed:
    return TEST_SEALER.seal(plaintext, aad=aad(item_id, column))


def unseal(item_id: uuid.UUID, column: str, sealed: Sealed) -> str:
    return TEST_SEALER.open(sealed, aad=aad(item_id, column))


def linked_item(state: State, *, access: str = ACCESS_TOKEN, processor: str | None = None) -> Item:
    """An Item past its exchange, its tokens sealed with ``TEST_SEALER``."""
    item_id = uuid.uuid4()
    return new_item(
        state,
        id=item_id,
        access_token=seal(item_id, "access_token", access),
        processor_token=seal(item_id, "processor_token", processor) if processor else None,
        account_id="acc-checking" if processor else None,
    )


def _coalesce(new: T | None, old: T | None) -> T | None:
    return old if new is None else new


@dataclasses.dataclass(frozen=True)
class Lease:
    owner: uuid.UUID
    until: float  # on the store's clock


class FakeStore:
    """Items, their leases and history in dicts; ``clock`` (seconds) only moves when a test moves it."""

    def __init__(self) -> None:
        self.clock = 0.0
        self.items: dict[uuid.UUID, Item] = {}
        self.leases: dict[uuid.UUID, Lease] = {}
        self.history: dict[uuid.UUID, list[HistoryEntry]] = {}
        self.calls: list[str] = []
        self.held: list[HeldEvent] = []
        self.held_for: dict[str, uuid.UUID] = {}
        self.settled: dict[str, str] = {}
        self.committed_triggers: list[Trigger] = []
        self._refusals: list[Callable[[], None] | None] = []

    def now(self) -> datetime:
        return EPOCH + timedelta(seconds=self.clock)

    def add(self, item: Item, *, lease: tuple[uuid.UUID, float] | None = None) -> Item:
        """Inserts ``item`` as ``create_item`` would (leased to ``lease`` if given)."""
        self.items[item.id] = item
        self.history[item.id] = [
            HistoryEntry(None, item.state.value, "submitted", "test", None, {}, self.now())
        ]
        if lease is not None:
            self.leases[item.id] = Lease(lease[0], self.clock + lease[1])
        return item

    def path(self, item_id: uuid.UUID) -> list[str]:
        """The states the Item went through, in order."""
        return [h.to_state for h in self.history[item_id]]

    def lease_of(self, item_id: uuid.UUID) -> Lease | None:
        return self.leases.get(item_id)

    def hold(self, item_id: uuid.UUID, owner: uuid.UUID, seconds: float) -> None:
        """Another worker holds the Item's lease for ``seconds`` from now."""
        self.leases[item_id] = Lease(owner, self.clock + seconds)

    def move(self, item_id: uuid.UUID, state: State, **fields: Any) -> Item:
        """Another worker (or a webhook handler) moved the row meanwhile."""
        row = self.items[item_id]
        moved = dataclasses.replace(
            row, state=state, version=row.version + 1, updated_at=self.now(), **fields
        )
        self.items[item_id] = moved
        self.history[item_id].append(
            HistoryEntry(row.state.value, state.value, "elsewhere", "other-worker", None, {}, self.now())
        )
        return moved

    def refuse_next_transition(self, meanwhile: Callable[[], None] | None = None) -> None:
        """The next ``transition`` is refused, after ``meanwhile`` ran (what moved the row)."""
        self._refusals.append(meanwhile)

    # -- what Pipeline calls, with the semantics of the SQL ----------------------------------------

    async def get(self, item_id: uuid.UUID) -> Item | None:
        self.calls.append("get")
        return self.items.get(item_id)

    async def claim(self, item_id: uuid.UUID, owner: uuid.UUID, lease_s: float) -> Item | None:
        """claim_item: taken when the lease is free, expired or already ``owner``'s."""
        self.calls.append("claim")
        item = self.items.get(item_id)
        lease = self.leases.get(item_id)
        if item is None or (lease is not None and lease.until >= self.clock and lease.owner != owner):
            return None
        self.leases[item_id] = Lease(owner, self.clock + lease_s)
        return item

    async def release(self, item_id: uuid.UUID, owner: uuid.UUID) -> None:
        """release_item: only the holder's lease goes."""
        self.calls.append("release")
        lease = self.leases.get(item_id)
        if lease is not None and lease.owner == owner:
            del self.leases[item_id]

    async def transition(
        self,
        item: Item,
        trigger: Trigger,
        *,
        cause: str,
        event_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
        changes: Changes = NO_CHANGES,
        conn: object = None,
        lease: tuple[uuid.UUID, float | None] | None = None,
        unless_held: bool = False,
        same_version: bool = False,
    ) -> Item | None:
        self.calls.append("transition")
        to_state = next_state(item.state, trigger, resume=item.resume_state)  # IllegalTransition
        allowed = {item.state}  # as the SQL: only from the state the caller decided on
        if self._refusals:
            meanwhile = self._refusals.pop(0)
            if meanwhile is not None:
                meanwhile()
            return None
        row = self.items.get(item.id)
        if row is None or row.state not in allowed:
            return None
        if unless_held and any(self.held_for[e.event_key] == item.id for e in self.held):
            return None  # as the SQL: the Item's held_at, set with a held event, cleared with it
        if same_version and row.version != item.version:
            return None
        c = changes
        keep = not c.destroy_tokens
        repaired = trigger is Trigger.LOGIN_REPAIRED
        moved = dataclasses.replace(
            row,
            state=to_state,
            resume_state=row.state if to_state is State.LOGIN_REQUIRED else None,
            plaid_item_id=_coalesce(c.plaid_item_id, row.plaid_item_id),
            account_id=_coalesce(c.account_id, row.account_id),
            access_token=_coalesce(c.access_token, row.access_token) if keep else None,
            processor_token=_coalesce(c.processor_token, row.processor_token) if keep else None,
            atomic_funding_source_id=_coalesce(c.atomic_funding_source_id, row.atomic_funding_source_id),
            # as the SQL: a repaired login clears the error that made the Item wait for its user
            error_code=None if repaired else _coalesce(c.error_code, row.error_code),
            error_type=None if repaired else _coalesce(c.error_type, row.error_type),
            error_message=None if repaired else _coalesce(c.error_message, row.error_message),
            plaid_request_id=_coalesce(c.plaid_request_id, row.plaid_request_id),
            updated_at=self.now(),
            version=row.version + 1,
        )
        held = self.leases.get(item.id)
        if lease is not None and held is not None and held.owner == lease[0]:
            if lease[1] is None:
                del self.leases[item.id]
            else:
                self.leases[item.id] = Lease(held.owner, self.clock + lease[1])
        self.items[item.id] = moved
        entry = HistoryEntry(row.state.value, to_state.value, trigger.value, cause, event_id, {}, self.now())
        self.history[item.id].append(dataclasses.replace(entry, detail=dict(detail or {})))
        return moved

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield None  # one dict, one task at a time: already atomic

    async def held_events(self, conn: object, item_id: uuid.UUID) -> list[HeldEvent]:
        return [e for e in self.held if self.held_for.get(e.event_key) == item_id]

    async def settle_event(self, conn: object, event_key: str, outcome: str) -> None:
        self.held = [e for e in self.held if e.event_key != event_key]
        self.settled[event_key] = outcome

    def hold_event(self, item_id: uuid.UUID, event: HeldEvent) -> None:
        """Atomic's webhook about the Item arrived before its submission committed."""
        self.held.append(event)
        self.held_for[event.event_key] = item_id

    def committed(self, trigger: Trigger, moved: Item) -> None:
        self.committed_triggers.append(trigger)

    async def touch(self, item_id: uuid.UUID) -> None:
        self.calls.append("touch")
        self.items[item_id] = dataclasses.replace(self.items[item_id], updated_at=self.now())

    async def awaiting_since(self, item_id: uuid.UUID) -> datetime | None:
        self.calls.append("awaiting_since")
        return min(
            (h.at for h in self.history[item_id] if h.to_state == "awaiting_verification"), default=None
        )

    async def destroy_tokens(self, item_id: uuid.UUID) -> None:
        self.calls.append("destroy_tokens")
        row = self.items[item_id]
        self.items[item_id] = dataclasses.replace(row, access_token=None, processor_token=None)

    async def mark_atomic_removed(self, item_id: uuid.UUID) -> None:
        self.calls.append("mark_atomic_removed")
        row = self.items[item_id]
        if row.atomic_removed_at is None:
            self.items[item_id] = dataclasses.replace(row, atomic_removed_at=self.now())

    async def mark_plaid_removed(self, item_id: uuid.UUID) -> None:
        self.calls.append("mark_plaid_removed")
        row = self.items[item_id]
        if row.plaid_removed_at is None:
            self.items[item_id] = dataclasses.replace(row, plaid_removed_at=self.now())


# -- Plaid and Atomic -----------------------------------------------------------------------------


def transient(service: str = "plaid", **kw: Any) -> UpstreamError:
    """An error worth retrying (503 unless ``status``/``error_code`` say otherwise)."""
    return UpstreamError("upstream unavailable", service=service, **{"status": 503, **kw})


def permanent(error_code: str = "INVALID_PUBLIC_TOKEN", service: str = "plaid", **kw: Any) -> UpstreamError:
    """An error not worth retrying (a 400 with ``error_code``)."""
    return UpstreamError(
        f"{error_code} from {service}", service=service, **{"status": 400, "error_code": error_code, **kw}
    )


class _Upstream:
    """Records every call as (name, args); ``fail_on`` makes a named call raise, ``on_call`` runs a
    hook while a named call is in flight (another worker acting meanwhile)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._failures: dict[str, list[Exception]] = {}
        self._hooks: dict[str, Callable[[], None]] = {}

    def fail_on(self, name: str, error: Exception, *, times: int = 1) -> None:
        self._failures.setdefault(name, []).extend([error] * times)

    def on_call(self, name: str, hook: Callable[[], None]) -> None:
        self._hooks[name] = hook

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def _enter(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        if name in self._hooks:
            self._hooks[name]()
        if self._failures.get(name):
            raise self._failures[name].pop(0)


CHECKING = Account("acc-checking", "depository", "checking", None, "0000")


class FakePlaid(_Upstream):
    def __init__(self, *, accounts: list[Account] | None = None, access_token: str = ACCESS_TOKEN) -> None:
        super().__init__()
        self.accounts_list = [CHECKING] if accounts is None else accounts
        self.access_token = access_token
        self.item_error: str | None = None  # what /item/get says of the Item's login

    async def exchange_public_token(self, public_token: str) -> Exchange:
        self._enter("exchange_public_token", public_token)
        await asyncio.sleep(0)  # a real call yields to the event loop: another drive may run meanwhile
        return Exchange(self.access_token, "plaid-item-1", "req-exchange")

    async def accounts(
        self, access_token: str, account_ids: list[str] | None = None
    ) -> tuple[list[Account], str]:
        self._enter("accounts", access_token, account_ids)
        return list(self.accounts_list), "req-accounts"

    async def create_processor_token(self, access_token: str, account_id: str) -> tuple[str, str]:
        self._enter("create_processor_token", access_token, account_id)
        return f"processor-sandbox-{account_id}", "req-processor"

    async def remove_item(self, access_token: str) -> str:
        self._enter("remove_item", access_token)
        return "req-remove"

    async def item_get(self, access_token: str) -> ItemHealth:
        self._enter("item_get", access_token)
        await asyncio.sleep(0)
        return ItemHealth(self.item_error, "ITEM_ERROR" if self.item_error else None, "req-item-get")


class FakeAtomic(_Upstream):
    async def submit_funding_source(
        self, *, processor_token: str, account_ref: str, customer_ref: str, idempotency_key: str
    ) -> FundingSource:
        self._enter("submit_funding_source", processor_token, account_ref, customer_ref, idempotency_key)
        return FundingSource("fs-1", "PENDING")

    async def remove_funding_source(self, funding_source_id: str) -> None:
        self._enter("remove_funding_source", funding_source_id)
