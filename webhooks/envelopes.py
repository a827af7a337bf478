"""Pure: a webhook's raw body becomes (routing key, envelope), for Plaid and for Atomic, parsed once.

Whatever cannot make an envelope valid against its schema is :class:`Refused` with the status and
reason the receiver answers, so every envelope that reaches the broker is one the worker accepts.
"""

from __future__ import annotations

import hashlib
from typing import Any

import schemas
from webhooks.verification import VerifiedWebhook
from worker.errors import PawError, Poison
from worker.messages import checked, parse_json


class Refused(PawError):
    """The webhook was refused."""

    def __init__(self, status: int, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.detail = detail


def parse_webhook_body(body: bytes) -> dict[str, Any]:
    """The verified body as a JSON object; Refused(400, "malformed_json") for anything else."""
    try:
        hook = parse_json(body)
    except Poison as e:
        raise Refused(400, "malformed_json", str(e)[:300]) from None
    if not isinstance(hook, dict):
        raise Refused(400, "malformed_json", "body is not a JSON object")
    return hook


def plaid_envelope(
    hook: dict[str, Any], verified: VerifiedWebhook, *, event_id: str, received_at: str
) -> tuple[str, dict[str, Any]]:
    """(routing key, envelope) for a verified webhook; Refused(400, "invalid_webhook") when the
    envelope would not be valid against ``webhook.plaid`` (so every published one is)."""
    envelope = {
        "event_id": event_id,
        "source": "plaid",
        "received_at": received_at,
        "body_sha256": verified.body_sha256,
        "sent_at": verified.iat,
        "kid": verified.kid,
        "webhook": hook,
    }
    violation = schemas.first_violation("webhook.plaid", envelope)
    if violation is not None:
        # The path only: the schema's message quotes the offending value, which is body content.
        raise Refused(400, "invalid_webhook", f"not a valid webhook at {violation.path}")
    return f"webhook.plaid.{hook['webhook_type']}.{hook['webhook_code']}", envelope


def atomic_envelope(body: bytes, *, event_id: str, received_at: str) -> tuple[str, dict[str, Any]]:
    """(routing key, envelope) for an Atomic webhook whose signature was checked; Refused(400,
    "invalid_webhook") for a body that is not a valid Atomic webhook."""
    try:
        envelope = checked(
            "webhook.atomic",
            {
                "event_id": event_id,
                "source": "atomic",
                "received_at": received_at,
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "webhook": parse_json(body),
            },
        )
    except Poison as e:
        raise Refused(400, "invalid_webhook", str(e)[:300]) from None
    return f"webhook.atomic.{envelope['webhook']['status'].lower()}", envelope
