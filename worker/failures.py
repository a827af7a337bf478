"""Which failures are worth retrying: a pure decision over Plaid's error_code and HTTP status."""

from __future__ import annotations

from enum import StrEnum

from worker.errors import UpstreamError


class Kind(StrEnum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"


TRANSIENT_CODES = frozenset(
    {
        "RATE_LIMIT_EXCEEDED",
        "ADDITION_LIMIT",
        "INSTITUTION_DOWN",
        "INSTITUTION_NOT_RESPONDING",
        "INSTITUTION_NOT_AVAILABLE",
        "PRODUCT_NOT_READY",
        "INTERNAL_SERVER_ERROR",
        "PLANNED_MAINTENANCE",
        "NETWORK_ERROR",
    }
)
TRANSIENT_TYPES = frozenset({"API_ERROR", "RATE_LIMIT_EXCEEDED"})
# Permanent, but the Item waits for the user rather than failing.
LOGIN_REQUIRED_CODES = frozenset({"ITEM_LOGIN_REQUIRED", "PENDING_EXPIRATION"})


def classify(err: UpstreamError) -> Kind:
    if err.error_code in TRANSIENT_CODES or err.error_type in TRANSIENT_TYPES:
        return Kind.TRANSIENT
    if err.status is None or err.status == 429 or err.status >= 500:
        return Kind.TRANSIENT
    return Kind.PERMANENT


def needs_login(err: UpstreamError) -> bool:
    return err.error_code in LOGIN_REQUIRED_CODES
