"""What travels on the bus: parsing untrusted JSON, validation by routing key against ``schemas/``,
and the ``x-paw-*`` header names the consumer writes and the dead-letter tools read. Pure."""

from __future__ import annotations

import json
from typing import Any

import schemas
from worker.errors import Poison

# Headers the consumer writes on retried and dead-lettered copies (and the DLQ tools read).
H_ROUTING_KEY = "x-paw-routing-key"
H_ATTEMPTS = "x-paw-attempts"
H_FIRST_FAILURE = "x-paw-first-failure"
H_LAST_FAILURE = "x-paw-last-failure"
H_ERROR_CLASS = "x-paw-error-class"
H_ERROR_MESSAGE = "x-paw-error-message"
H_ERROR_CODE = "x-paw-error-code"
H_REQUEST_ID = "x-paw-request-id"
H_QUEUE = "x-paw-queue"
H_REPLAYS = "x-paw-replays"
H_DEFERRALS = "x-paw-deferrals"


MAX_JSON_DEPTH = 32


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """How deeply ``value`` nests, counting up to ``limit + 1`` (iterative: no recursion to exhaust)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def parse_json(body: bytes) -> Any:
    """Parses untrusted JSON; anything unparseable, with NaN or Infinity, or nested deeper than
    ``MAX_JSON_DEPTH`` is poison."""
    try:
        data = json.loads(body, parse_constant=_no_constants)
    except RecursionError:
        raise Poison(f"body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise Poison(f"body is not JSON: {e}") from None
    if json_depth(data) > MAX_JSON_DEPTH:
        raise Poison(f"body nests deeper than {MAX_JSON_DEPTH} levels")
    return data


def checked(schema_name: str, data: Any) -> dict[str, Any]:
    """``data`` if it is valid against ``schemas/messages/<schema_name>.json``; else :class:`Poison`
    naming where it is not."""
    violation = schemas.first_violation(schema_name, data)
    if violation is not None:
        raise Poison(f"{schema_name} schema: {violation.path}: {violation.message[:300]}")
    assert isinstance(data, dict)
    return data


def validated(schema_name: str, body: bytes) -> dict[str, Any]:
    """The parsed body, if it is JSON valid against its schema; else :class:`Poison`."""
    return checked(schema_name, parse_json(body))


def schema_for(routing_key: str) -> str | None:
    if routing_key == "item.link":
        return "item.link"
    if routing_key == "item.drive":
        return "item.drive"
    if routing_key == "item.repaired":
        return "item.repaired"
    if routing_key.startswith("webhook.plaid."):
        return "webhook.plaid"
    if routing_key.startswith("webhook.atomic."):
        return "webhook.atomic"
    return None
