"""What a Plaid webhook does to an Item: a pure decision over the Item as locked in Postgres.

Plaid does not guarantee order, so events that set a condition (the bank login broken or repaired)
carry Plaid's send time (the verified JWT ``iat``). An event older than the one that last set the
login condition is recorded but changes nothing: the later truth wins.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from worker.items.model import Item
from worker.states import LINKED, State, Trigger

PENDING_DISCONNECT_NOTICE = timedelta(days=7)  # Plaid sends PENDING_DISCONNECT 7 days ahead


@dataclasses.dataclass(frozen=True)
class Decision:
    outcome: str  # recorded in the inbox: applied, recorded, stale, ignored, unknown_item, ...
    trigger: Trigger | None = None
    error_code: str | None = None
    login_changed_at: int | None = None  # set items.login_changed_at to this send time
    consent_expires_at: datetime | None = None
    disconnect_at: datetime | None = None
    disconnect_reason: str | None = None
    atomic_refresh: bool = False  # the funding account's numbers changed: Atomic must re-pull them


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _login_event(item: Item, sent_at: int, trigger: Trigger) -> Decision:
    if item.login_changed_at is not None and sent_at < item.login_changed_at:
        return Decision("stale")
    wanted = State.LOGIN_REQUIRED if trigger is Trigger.LOGIN_REQUIRED else None
    if trigger is Trigger.LOGIN_REQUIRED and item.state in LINKED:
        return Decision("applied", trigger, error_code="ITEM_LOGIN_REQUIRED", login_changed_at=sent_at)
    if trigger is Trigger.LOGIN_REPAIRED and item.state is State.LOGIN_REQUIRED:
        return Decision("applied", trigger, login_changed_at=sent_at)
    # Nothing to move (already there, or the opposite event has not arrived yet): remember when the
    # condition was last set, so an older opposite event arriving later does not undo it.
    already = wanted is not None and item.state is wanted
    return Decision("recorded" if already else "noted", login_changed_at=sent_at)


def decide(item: Item | None, webhook: dict[str, Any], sent_at: int) -> Decision:
    if item is None:
        return Decision("unknown_item")
    wtype, code = webhook.get("webhook_type"), webhook.get("webhook_code")
    if wtype == "ITEM":
        if code == "ERROR":
            error = webhook.get("error") or {}
            if isinstance(error, dict) and error.get("error_code") == "ITEM_LOGIN_REQUIRED":
                return _login_event(item, sent_at, Trigger.LOGIN_REQUIRED)
            return Decision("recorded")
        if code == "LOGIN_REPAIRED":
            return _login_event(item, sent_at, Trigger.LOGIN_REPAIRED)
        if code == "PENDING_EXPIRATION":
            return Decision("recorded", consent_expires_at=parse_time(webhook.get("consent_expiration_time")))
        if code == "PENDING_DISCONNECT":
            at = parse_time(webhook.get("disconnect_time")) or (
                datetime.fromtimestamp(sent_at, UTC) + PENDING_DISCONNECT_NOTICE
            )
            reason = webhook.get("reason")
            return Decision("recorded", disconnect_at=at, disconnect_reason=str(reason) if reason else None)
        if code == "USER_PERMISSION_REVOKED":
            return _revoke(item, "USER_PERMISSION_REVOKED")
        if code == "USER_ACCOUNT_REVOKED":
            if item.account_id is not None and webhook.get("account_id") == item.account_id:
                return _revoke(item, "USER_ACCOUNT_REVOKED")
            return Decision("recorded")
        if code in ("NEW_ACCOUNTS_AVAILABLE", "WEBHOOK_UPDATE_ACKNOWLEDGED"):
            return Decision("recorded")
        return Decision("unknown_code")
    if wtype == "AUTH":
        if code in ("AUTOMATICALLY_VERIFIED", "VERIFICATION_EXPIRED"):
            if item.state is not State.AWAITING_VERIFICATION or webhook.get("account_id") != item.account_id:
                return Decision("ignored")
            if code == "AUTOMATICALLY_VERIFIED":
                return Decision("applied", Trigger.ACCOUNT_VERIFIED)
            return Decision("applied", Trigger.FAILED, error_code="VERIFICATION_EXPIRED")
        if code == "DEFAULT_UPDATE":
            updated = webhook.get("account_ids_with_updated_auth") or {}
            if item.account_id is not None and isinstance(updated, dict) and item.account_id in updated:
                return Decision("numbers_changed", atomic_refresh=item.atomic_funding_source_id is not None)
            return Decision("recorded")
        return Decision("unknown_code")
    return Decision("unknown_type")


def _revoke(item: Item, code: str) -> Decision:
    if item.state in (State.REVOKED, State.LINK, State.FAILED):
        return Decision("ignored")
    return Decision("applied", Trigger.REVOKED, error_code=code)
