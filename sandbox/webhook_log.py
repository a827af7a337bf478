"""The record of every webhook the emulator sent: its URL, each attempt, and how it ended."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any, Final

PENDING: Final = "pending"  # an attempt is under way or a retry is scheduled
DELIVERED: Final = "delivered"  # an attempt was answered 2xx
GIVEN_UP: Final = "given_up"  # failed, and no further attempt will be made
CANCELLED: Final = "cancelled"  # the emulator closed while it was pending
OUTCOMES: Final = (PENDING, DELIVERED, GIVEN_UP, CANCELLED)


@dataclasses.dataclass(frozen=True)
class Attempt:
    at: float  # emulator clock (Unix seconds) when it was sent
    elapsed_s: float  # since the webhook's first attempt was sent (monotonic)
    took_s: float  # from sending to the answer (or to the failure)
    status: int | None  # None: no HTTP answer
    error: str | None  # why there was no answer (timeout, refused connection)
    retry_after_s: float | None = None  # a usable Retry-After on the answer

    def public(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class WebhookRecord:
    id: str
    source: str  # "plaid" or "atomic"
    url: str
    created_at: float  # emulator clock
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    outcome: str = PENDING
    next_attempt_at: float | None = None  # emulator clock, while a retry is scheduled

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "url": self.url,
            "created_at": self.created_at,
            "outcome": self.outcome,
            "next_attempt_at": self.next_attempt_at,
            "attempts": [a.public() for a in self.attempts],
        }


class WebhookLog:
    """Every webhook by id, in the order they were made."""

    def __init__(self) -> None:
        self._records: dict[str, WebhookRecord] = {}
        self._ids = itertools.count(1)

    def new(self, source: str, url: str, created_at: float) -> WebhookRecord:
        record = WebhookRecord(f"wh_{next(self._ids):06d}", source, url, created_at)
        self._records[record.id] = record
        return record

    def get(self, webhook_id: str) -> WebhookRecord | None:
        return self._records.get(webhook_id)

    def __iter__(self) -> Iterator[WebhookRecord]:
        return iter(self._records.values())

    def __len__(self) -> int:
        return len(self._records)

    def counts(self) -> dict[str, int]:
        """Webhooks by outcome, plus ``attempts`` (every POST) and ``retries`` (attempts after a first)."""
        counts = dict.fromkeys(OUTCOMES, 0)
        attempts = 0
        retries = 0
        for record in self._records.values():
            counts[record.outcome] += 1
            attempts += len(record.attempts)
            retries += max(0, len(record.attempts) - 1)
        return {"webhooks": len(self._records), **counts, "attempts": attempts, "retries": retries}
