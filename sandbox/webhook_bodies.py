"""Plaid webhook bodies, field for field as Plaid documents them (pure functions)."""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from typing import Any

from sandbox.plaid_errors import error_object, invalid_request, item_login_required_object

ENVIRONMENT = "sandbox"
SEVEN_DAYS_S = 7 * 24 * 3600

# Every webhook the emulator can build (the control lever fires any of them).
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
AUTH_CODES = frozenset(
    {"AUTOMATICALLY_VERIFIED", "VERIFICATION_EXPIRED", "DEFAULT_UPDATE", "SMS_MICRODEPOSITS_VERIFICATION"}
)
CODES_BY_TYPE: dict[str, frozenset[str]] = {
    "ITEM": ITEM_CODES,
    "AUTH": AUTH_CODES,
    "TRANSACTIONS": frozenset({"DEFAULT_UPDATE", "SYNC_UPDATES_AVAILABLE", "RECURRING_TRANSACTIONS_UPDATE"}),
    "IDENTITY": frozenset({"DEFAULT_UPDATE"}),
    "HOLDINGS": frozenset({"DEFAULT_UPDATE"}),
    "INVESTMENTS_TRANSACTIONS": frozenset({"DEFAULT_UPDATE"}),
    "LIABILITIES": frozenset({"DEFAULT_UPDATE"}),
    "ASSETS": frozenset({"PRODUCT_READY", "ERROR"}),
}

# What /sandbox/item/fire_webhook fires (its request's enum, as its documentation shows it), and the
# webhook type each code has when the request names none.
FIREABLE_TYPE: dict[str, str] = {
    "DEFAULT_UPDATE": "TRANSACTIONS",
    "NEW_ACCOUNTS_AVAILABLE": "ITEM",
    "SMS_MICRODEPOSITS_VERIFICATION": "AUTH",
    "USER_PERMISSION_REVOKED": "ITEM",
    "USER_ACCOUNT_REVOKED": "ITEM",
    "PENDING_DISCONNECT": "ITEM",
    "RECURRING_TRANSACTIONS_UPDATE": "TRANSACTIONS",
    "LOGIN_REPAIRED": "ITEM",
    "SYNC_UPDATES_AVAILABLE": "TRANSACTIONS",
    "PRODUCT_READY": "ASSETS",
    "ERROR": "ASSETS",
}
# DEFAULT_UPDATE is the one code fired for several products, chosen with webhook_type.
DEFAULT_UPDATE_TYPES = frozenset(
    {"AUTH", "IDENTITY", "TRANSACTIONS", "INVESTMENTS_TRANSACTIONS", "LIABILITIES", "HOLDINGS"}
)
# The request's WebhookType enum, and IDENTITY, which the endpoint documents for DEFAULT_UPDATE.
WEBHOOK_TYPES = frozenset(
    {
        "AUTH",
        "HOLDINGS",
        "IDENTITY",
        "INVESTMENTS_TRANSACTIONS",
        "ITEM",
        "LIABILITIES",
        "TRANSACTIONS",
        "ASSETS",
    }
)
# The product an Item needs for a webhook type to be fired (SANDBOX_PRODUCT_NOT_ENABLED otherwise).
PRODUCT_FOR_TYPE = {
    "AUTH": "auth",
    "IDENTITY": "identity",
    "TRANSACTIONS": "transactions",
    "INVESTMENTS_TRANSACTIONS": "investments",
    "HOLDINGS": "investments",
    "LIABILITIES": "liabilities",
    "ASSETS": "assets",
}


def fireable_type(code: str, webhook_type: str | None) -> str:
    """The webhook type ``/sandbox/item/fire_webhook`` fires ``code`` as; INVALID_FIELD for a code
    or type the endpoint does not take, or a type that does not go with the code."""
    if code not in FIREABLE_TYPE:
        raise invalid_request(
            "INVALID_FIELD", f"webhook_code must be one of {', '.join(sorted(FIREABLE_TYPE))}, got {code!r}"
        )
    if webhook_type is None:
        return FIREABLE_TYPE[code]
    if webhook_type not in WEBHOOK_TYPES:
        raise invalid_request(
            "INVALID_FIELD", f"webhook_type must be one of {', '.join(sorted(WEBHOOK_TYPES))}"
        )
    allowed = DEFAULT_UPDATE_TYPES if code == "DEFAULT_UPDATE" else {FIREABLE_TYPE[code]}
    if webhook_type not in allowed:
        raise invalid_request(
            "INVALID_FIELD", f"webhook_code {code} cannot be fired with webhook_type {webhook_type}"
        )
    return webhook_type


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


def sms_microdeposits_verification(
    item_id: str, account_id: str, status: str = "MANUALLY_VERIFIED"
) -> dict[str, Any]:
    """AUTH SMS_MICRODEPOSITS_VERIFICATION: a Same-Day micro-deposit account verified by text message."""
    return {
        **_base("AUTH", "SMS_MICRODEPOSITS_VERIFICATION", item_id),
        "status": status,
        "account_id": account_id,
        "environment": ENVIRONMENT,
    }


def product_webhook(
    item_id: str, webhook_type: str, code: str, account_ids: list[str], rng: random.Random
) -> dict[str, Any]:
    """The other products' webhooks (Transactions, Identity, Investments, Liabilities, Assets), as
    Plaid documents them; paw ignores them, but the Sandbox fires them."""
    if webhook_type == "ASSETS":
        body: dict[str, Any] = {
            "webhook_type": "ASSETS",
            "webhook_code": code,
            "asset_report_id": str(uuid.UUID(int=rng.getrandbits(128))),
        }
        if code == "ERROR":
            body["error"] = error_object(
                error_type="ASSET_REPORT_ERROR",
                error_code="PRODUCT_NOT_READY",
                error_message="the asset report could not be generated",
            )
        else:
            body["report_type"] = "FULL"
        return {**body, "environment": ENVIRONMENT}
    base = _base(webhook_type, code, item_id)
    if code == "SYNC_UPDATES_AVAILABLE":
        fields: dict[str, Any] = {"initial_update_complete": True, "historical_update_complete": True}
    elif code == "RECURRING_TRANSACTIONS_UPDATE":
        fields = {"account_ids": account_ids}
    elif webhook_type == "TRANSACTIONS":
        fields = {"error": None, "new_transactions": 0}
    elif webhook_type == "IDENTITY":
        fields = {"account_ids_with_updated_identity": {}, "error": None}
    elif webhook_type == "HOLDINGS":
        fields = {"error": None, "new_holdings": 0, "updated_holdings": 0}
    elif webhook_type == "INVESTMENTS_TRANSACTIONS":
        fields = {"error": None, "new_investments_transactions": 0, "cancelled_investments_transactions": 0}
    else:  # LIABILITIES
        fields = {
            "error": None,
            "account_ids_with_new_liabilities": [],
            "account_ids_with_updated_liabilities": {},
        }
    return {**base, **fields, "environment": ENVIRONMENT}
