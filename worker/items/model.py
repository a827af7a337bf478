"""The Item as plain values: its row, the columns a transition sets, a history entry, and the keys
derived from it (the public token's hash, the associated data that binds a sealed token to its row)."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from worker.items.states import State


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclasses.dataclass(frozen=True)
class Item:
    id: uuid.UUID
    client_user_id: str
    state: State
    resume_state: State | None
    requested_account_id: str | None
    plaid_item_id: str | None
    account_id: str | None
    access_token: Sealed | None
    processor_token: Sealed | None
    atomic_funding_source_id: str | None
    error_code: str | None
    error_type: str | None
    error_message: str | None
    plaid_request_id: str | None
    created_at: datetime
    updated_at: datetime
    version: int
    login_changed_at: int | None = None
    consent_expires_at: datetime | None = None
    disconnect_at: datetime | None = None
    disconnect_reason: str | None = None
    atomic_removed_at: datetime | None = None
    atomic_refresh_needed_at: datetime | None = None
    plaid_removed_at: datetime | None = None

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> Item:
        def sealed(prefix: str) -> Sealed | None:
            blob = r[f"{prefix}_sealed"]
            return None if blob is None else Sealed(r[f"{prefix}_key_id"], bytes(blob))

        return cls(
            id=r["id"],
            client_user_id=r["client_user_id"],
            state=State(r["state"]),
            resume_state=State(r["resume_state"]) if r["resume_state"] else None,
            requested_account_id=r["requested_account_id"],
            plaid_item_id=r["plaid_item_id"],
            account_id=r["account_id"],
            access_token=sealed("access_token"),
            processor_token=sealed("processor_token"),
            atomic_funding_source_id=r["atomic_funding_source_id"],
            error_code=r["error_code"],
            error_type=r["error_type"],
            error_message=r["error_message"],
            plaid_request_id=r["plaid_request_id"],
            created_at=r["created_at"],
            updated_at=r["updated_at"],
            version=r["version"],
            login_changed_at=r["login_changed_at"],
            consent_expires_at=r["consent_expires_at"],
            disconnect_at=r["disconnect_at"],
            disconnect_reason=r["disconnect_reason"],
            atomic_removed_at=r["atomic_removed_at"],
            atomic_refresh_needed_at=r["atomic_refresh_needed_at"],
            plaid_removed_at=r["plaid_removed_at"],
        )

    def public(self) -> dict[str, Any]:
        """What the HTTP API and the CLI show: never a token, sealed or not."""
        return {
            "id": str(self.id),
            "state": self.state.value,
            "client_user_id": self.client_user_id,
            "plaid_item_id": self.plaid_item_id,
            "account_id": self.account_id,
            "atomic_funding_source_id": self.atomic_funding_source_id,
            "resume_state": self.resume_state.value if self.resume_state else None,
            "error": (
                {
                    "error_code": self.error_code,
                    "error_type": self.error_type,
                    "error_message": self.error_message,
                }
                if self.error_code
                else None
            ),
            "consent_expires_at": _iso(self.consent_expires_at),
            "disconnect_at": _iso(self.disconnect_at),
            "disconnect_reason": self.disconnect_reason,
            "atomic_removed_at": _iso(self.atomic_removed_at),
            "plaid_removed_at": _iso(self.plaid_removed_at),
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclasses.dataclass(frozen=True)
class HistoryEntry:
    from_state: str | None
    to_state: str
    trigger: str
    cause: str
    event_id: str | None
    detail: dict[str, Any]
    at: datetime

    def public(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "at": self.at.isoformat()}


@dataclasses.dataclass(frozen=True)
class HeldEvent:
    """Atomic's answer about a funding source that arrived before the Item committed its submission:
    kept in the inbox (outcome ``held``) and applied in the transaction that commits it."""

    event_key: str
    routing_key: str
    event_id: str | None
    status: str
    funding_source_id: str
    received_at: datetime

    @classmethod
    def from_record(cls, row: Mapping[str, Any]) -> HeldEvent:
        payload = row["payload"]
        hook = payload.get("webhook") or {}
        return cls(
            event_key=row["event_key"],
            routing_key=row["routing_key"],
            event_id=payload.get("event_id"),
            status=str(hook.get("status")),
            funding_source_id=str(hook.get("funding_source_id")),
            received_at=row["received_at"],
        )


@dataclasses.dataclass(frozen=True)
class Changes:
    """Columns a transition sets besides the state. ``None`` leaves a column as it is."""

    plaid_item_id: str | None = None
    account_id: str | None = None
    access_token: Sealed | None = None
    processor_token: Sealed | None = None
    atomic_funding_source_id: str | None = None
    error_code: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    plaid_request_id: str | None = None
    destroy_tokens: bool = False

    def sql_args(self) -> tuple[object, ...]:
        """``$8`` to ``$19`` of the ``transition`` query, in the order its header gives."""
        access, processor = self.access_token, self.processor_token
        return (
            self.plaid_item_id,
            self.account_id,
            access.key_id if access else None,
            access.blob if access else None,
            processor.key_id if processor else None,
            processor.blob if processor else None,
            self.atomic_funding_source_id,
            self.error_code,
            self.error_type,
            self.error_message,
            self.plaid_request_id,
            self.destroy_tokens,
        )


NO_CHANGES = Changes()


@dataclasses.dataclass(frozen=True)
class Cause:
    """Why a transition happened: the routing key and event that caused it."""

    name: str
    event_id: str | None = None


def token_hash(public_token: str) -> str:
    return hashlib.sha256(public_token.encode()).hexdigest()


def api_key_fingerprint(api_key: str) -> str:
    """What paw records of the API key that submitted an Item, and what ``PAW_CALLBACKS`` names a key
    by: the first 16 hex digits of its SHA-256 (``printf %s KEY | sha256sum | cut -c1-16``), never
    the key."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Sealed:
    """A token at rest: which key sealed it, and nonce || ciphertext+tag."""

    key_id: str
    blob: bytes  # nonce || ciphertext+tag


HEX = frozenset("0123456789abcdef")
MIN_ID_PREFIX = 6  # hex digits: fewer would match too much to be meant as an id


def id_range(text: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """The ids a (prefix of a) paw Item id spans, hyphens optional; None if ``text`` is not one."""
    digits = text.strip().lower().replace("-", "")
    if not MIN_ID_PREFIX <= len(digits) <= 32 or not set(digits) <= HEX:
        return None
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))
