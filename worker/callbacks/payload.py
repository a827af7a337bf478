"""What a callback carries and how it is signed: the Standard Webhooks form. Pure.

The body is the Standard Webhooks envelope ``{"type", "timestamp", "data"}``: ``type`` the event's
routing key (``item.state.<to_state>``), ``timestamp`` its ``occurred_at``, ``data`` the outcome
event exactly as published on the bus. Headers: ``webhook-id`` the event's ``event_id`` (the same on
every attempt and replay, so a receiver deduplicates on it), ``webhook-timestamp`` the attempt's
Unix time (receivers refuse one older than 5 minutes: a replay hours later is signed afresh),
``webhook-signature`` ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, computed by the
``standardwebhooks`` package (the specification's reference implementation), so paw signs exactly
what every Standard Webhooks library verifies.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from standardwebhooks import Webhook

from worker.errors import Poison
from worker.messages import checked, parse_json

EVENT_PREFIX = "item.state."
SCHEMA = "item.state"


def parse_event(routing_key: str, body: bytes) -> dict[str, Any]:
    """The outcome event in ``body``, valid against ``schemas/messages/item.state.json`` (fields a
    later version adds pass through); :class:`Poison` if it is not one."""
    if not routing_key.startswith(EVENT_PREFIX):
        raise Poison(f"{routing_key!r} is not an outcome event (item.state.*)")
    return checked(SCHEMA, parse_json(body))


def envelope(routing_key: str, event: dict[str, Any]) -> bytes:
    """The callback's body (see the module docstring)."""
    return json.dumps(
        {"type": routing_key, "timestamp": event["occurred_at"], "data": event},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def signed_headers(secret: str, msg_id: str, body: bytes, now: datetime) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` for ``body`` sent at ``now``."""
    at = datetime.fromtimestamp(int(now.timestamp()), UTC)
    signature: str = Webhook(secret).sign(msg_id, at, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }
