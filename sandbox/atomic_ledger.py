"""The emulated Atomic: funding sources, idempotency keys and per-account counters."""

from __future__ import annotations

import collections
import dataclasses
import secrets
from typing import Any

PENDING = "PENDING"
VERIFIED = "VERIFIED"
REJECTED = "REJECTED"
REMOVED = "REMOVED"
DECISIONS = frozenset({VERIFIED, REJECTED})
REASON_ACCOUNT = "account_verification_failed"
REASON_CUSTOMER = "customer_rejected"
REJECT_PREFIX = "reject"  # sandbox convention: customer_ref "reject..." is always rejected


@dataclasses.dataclass
class FundingSource:
    id: str
    account_ref: str
    customer_ref: str
    processor_token: str
    created_at: str
    status: str = PENDING
    reason: str | None = None
    refreshes: int = 0  # how often the partner re-pulled the bank numbers (POST .../refresh)
    account_number: str | None = None  # what /processor/auth/get gave at the last refresh

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "reason": self.reason,
            "account_ref": self.account_ref,
            "created_at": self.created_at,
            "refreshes": self.refreshes,
        }


@dataclasses.dataclass(frozen=True)
class Submission:
    processor_token: str
    account_ref: str
    customer_ref: str


@dataclasses.dataclass(frozen=True)
class _Remembered:
    submission: Submission
    response: dict[str, Any]


class IdempotencyKeyReused(Exception):
    """The Idempotency-Key was already used with a different body."""


class AtomicLedger:
    def __init__(self) -> None:
        self.sources: dict[str, FundingSource] = {}
        self.submissions: collections.Counter[str] = collections.Counter()
        self.created: collections.Counter[str] = collections.Counter()
        self._keys: dict[str, _Remembered] = {}

    def submit(
        self, key: str, submission: Submission, created_at: str
    ) -> tuple[FundingSource, dict[str, Any], bool]:
        """(funding source, response body, created?) for a POST with Idempotency-Key ``key``."""
        remembered = self._keys.get(key)
        if remembered is not None:
            if remembered.submission != submission:
                raise IdempotencyKeyReused
            return self.sources[remembered.response["id"]], remembered.response, False
        source = FundingSource(
            id=f"fs_{secrets.token_hex(12)}",
            account_ref=submission.account_ref,
            customer_ref=submission.customer_ref,
            processor_token=submission.processor_token,
            created_at=created_at,
        )
        self.sources[source.id] = source
        self.created[source.account_ref] += 1
        response = {
            "id": source.id,
            "status": source.status,
            "account_ref": source.account_ref,
            "created_at": created_at,
        }
        self._keys[key] = _Remembered(submission, response)
        return source, response, True
