"""Plaid webhook bodies, field for field as Plaid documents them (pure functions)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sandbox.plaid_errors import error_object, item_login_required_object

ENVIRONMENT = "sandbox"
SEVEN_DAYS_S = 7 * 24 * 3600

ITEM_CODES = frozenset(
    {
        "ERROR",
        "LOGIN_REPAIRED",
        "PENDING_EXPIRATION",
        "PENDING_DISCONNECT",
        "USER_PERMISSION_REVOKED",
        "USER_ACCOUNT_REVOKED",
        "NEW_ACCOUNTS_AVAILABLE",
        "WEBHOOK_UPDATE_ACKNOWLEDGED",
    }
)
AUTH_CODES = frozenset({"AUTOMATICALLY_VERIFIED", "VERIFICATION_EXPIRED", "DEFAULT_UPDATE"})
CODES_BY_TYPE = {"ITEM": ITEM_CODES, "AUTH": AUTH_CODES}


def webhook_type_for(code: str) -> str | None:
    for webhook_type, codes in CODES_BY_TYPE.items():
        if code in codes:
            return webhook_type
    return None


def iso8601(epoch_s: float) -> str:
    moment = dt.datetime.fromtimestamp(epoch_s, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode(body: dict[str, Any]) -> bytes:
    """The bytes Plaid sends: JSON indented with 2 spaces."""
    return json.dumps(body, indent=2).encode()


def _base(webhook_type: str, code: str, item_id: str) -> dict[str, Any]:
    return {"webhook_type": webhook_type, "webhook_code": code, "item_id": item_id}


def item_error(item_id: str, error: dict[str, Any] | None = None) -> dict[str, Any]:
    err = error if error is not None else item_login_required_object()
    return {**_base("ITEM", "ERROR", item_id), "error": err, "environment": ENVIRONMENT}


def login_repaired(item_id: str) -> dict[str, Any]:
    return {**_base("ITEM", "LOGIN_REPAIRED", item_id), "environment": ENVIRONMENT}


def pending_expiration(item_id: str, consent_expiration_time: float) -> dict[str, Any]:
    return {
        **_base("ITEM", "PENDING_EXPIRATION", item_id),
        "consent_expiration_time": iso8601(consent_expiration_time),
        "environment": ENVIRONMENT,
    }


def pending_disconnect(item_id: str, disconnect_time: float, reason: str) -> dict[str, Any]:
    return {
        **_base("ITEM", "PENDING_DISCONNECT", item_id),
        "reason": reason,
        "disconnect_time": iso8601(disconnect_time),
        "environment": ENVIRONMENT,
    }


def user_permission_revoked(item_id: str) -> dict[str, Any]:
    error = error_object(
        error_type="ITEM_ERROR",
        error_code="USER_PERMISSION_REVOKED",
        error_message="the holder of this account has revoked their permission for your application to "
        "access it",
    )
    return {**_base("ITEM", "USER_PERMISSION_REVOKED", item_id), "error": error, "environment": ENVIRONMENT}


def user_account_revoked(item_id: str, account_id: str) -> dict[str, Any]:
    return {
        **_base("ITEM", "USER_ACCOUNT_REVOKED", item_id),
        "account_id": account_id,
        "environment": ENVIRONMENT,
    }


def new_accounts_available(item_id: str) -> dict[str, Any]:
    return {**_base("ITEM", "NEW_ACCOUNTS_AVAILABLE", item_id), "error": None, "environment": ENVIRONMENT}


def webhook_update_acknowledged(item_id: str, new_webhook_url: str) -> dict[str, Any]:
    return {
        **_base("ITEM", "WEBHOOK_UPDATE_ACKNOWLEDGED", item_id),
        "new_webhook_url": new_webhook_url,
        "error": None,
        "environment": ENVIRONMENT,
    }


def automatically_verified(item_id: str, account_id: str) -> dict[str, Any]:
    return {
        **_base("AUTH", "AUTOMATICALLY_VERIFIED", item_id),
        "account_id": account_id,
        "environment": ENVIRONMENT,
    }


def verification_expired(item_id: str, account_id: str) -> dict[str, Any]:
    return {
        **_base("AUTH", "VERIFICATION_EXPIRED", item_id),
        "account_id": account_id,
        "environment": ENVIRONMENT,
    }


def default_update(item_id: str, new_auth: list[str], updated_auth: dict[str, list[str]]) -> dict[str, Any]:
    return {
        **_base("AUTH", "DEFAULT_UPDATE", item_id),
        "account_ids_with_new_auth": new_auth,
        "account_ids_with_updated_auth": updated_auth,
        "error": None,
        "environment": ENVIRONMENT,
    }
