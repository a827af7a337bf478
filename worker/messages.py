"""What travels on the bus: parsing untrusted JSON, validation by routing key against ``schemas/``,
and the ``x-paw-*`` header names the consumer writes and the dead-letter tools read. Pure."""

from __future__ import annotations

from typing import Any

import orjson

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
# Beyond this a number is refused (orjson reads an integer beyond 64 bits as a float).
TOO_BIG = float(2**63)


def _refuse_beyond_64_bits(value: Any) -> None:
    """orjson reads an integer it cannot hold in 64 bits as a float; such a number would not travel
    on as the body wrote it, so it is refused."""
    if type(value) is float and not -TOO_BIG < value < TOO_BIG:
        raise Poison("body holds a number beyond 64 bits")


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """How deeply ``value`` nests, counting up to ``limit + 1`` (iterative: no recursion to exhaust).
    Raises :class:`Poison` for a number beyond 64 bits met on the way (:func:`_refuse_beyond_64_bits`)."""
    if type(value) is not dict and type(value) is not list:
        _refuse_beyond_64_bits(value)
        return 0
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        for child in node.values() if type(node) is dict else node:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
            elif type(child) is float:
                _refuse_beyond_64_bits(child)
    return deepest


def parse_json(body: bytes) -> Any:
    """Parses untrusted JSON (RFC 8259, UTF-8: orjson, a third of json's CPU); anything else, NaN,
    Infinity, numbers beyond 64 bits, or nesting deeper than ``MAX_JSON_DEPTH`` is poison."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        if str(e).startswith("depth limit"):  # orjson stops at 1,024 levels
            raise Poison(f"body nests deeper than {MAX_JSON_DEPTH} levels") from None
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
