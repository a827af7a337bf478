"""``GET /v1/items``: its query string and its cursor, as pure functions (no HTTP, no database).

Pages are in ``(updated_at, id)`` order, oldest change first, and a cursor is the position of the
last Item a page held. That order makes a cursor a bookmark of "changes seen so far": an Item that
changes while an app pages moves behind the cursor and comes again on a later page, with its new
state, rather than being skipped; an app that stores ``next_cursor`` and asks again later gets
exactly the Items that changed since. ``id`` breaks ties between Items changed in the same
microsecond. (Ordering by ``id`` alone would never show an Item twice, but an Item that changed
behind the cursor would be missed until the next full pass.)

What keyset pagination cannot promise: ``updated_at`` is the time the changing transaction began,
so a transaction that commits after a page was read, yet began before its last Item's change, lands
behind the cursor. paw's transactions last milliseconds; an app that resumes from a stored cursor
may re-read the last few seconds with ``updated_since`` if it must see every single change.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from worker.items.states import State

DEFAULT_LIMIT = 50
MAX_LIMIT = 100
PARAMETERS = ("client_user_id", "state", "updated_since", "cursor", "limit")
# Before every Item: the position a first page starts after.
START = (datetime.min.replace(tzinfo=UTC), uuid.UUID(int=0))
_CURSOR_VERSION = 1


class BadQuery(ValueError):
    """A query parameter paw cannot use; the message names it and says what it must be."""


@dataclasses.dataclass(frozen=True)
class ItemQuery:
    client_user_id: str | None
    states: tuple[State, ...] | None  # None: any state
    after: tuple[datetime, uuid.UUID]  # the page starts after this position
    limit: int


def encode_cursor(updated_at: datetime, item_id: uuid.UUID) -> str:
    """The opaque position of an Item in the listing order (URL-safe, no padding)."""
    raw = json.dumps(
        {"v": _CURSOR_VERSION, "at": updated_at.astimezone(UTC).isoformat(), "id": str(item_id)},
        separators=(",", ":"),
    ).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("v") != _CURSOR_VERSION:
            raise ValueError("unknown cursor")
        at = datetime.fromisoformat(data["at"])
        if at.tzinfo is None:
            raise ValueError("naive time")
        return at, uuid.UUID(data["id"])
    except (binascii.Error, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise BadQuery("cursor is not one this API gave out (pass next_cursor unchanged)") from None


# A '+' in a query string reads as a space: "…T00:00:00 02:00" was meant as "…T00:00:00+02:00".
_SPACED_OFFSET = re.compile(r"(\d) (\d{2}(:?\d{2})?)$")


def parse_since(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(_SPACED_OFFSET.sub(r"\1+\2", text.strip()))
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise BadQuery(
            "updated_since must be an ISO 8601 date-time with a time zone, e.g. 2025-01-31T00:00:00Z"
        )
    return value


def parse_states(text: str) -> tuple[State, ...]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    known = {s.value: s for s in State}
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise BadQuery(f"state must be one or more of {', '.join(known)}, comma-separated")
    return tuple(dict.fromkeys(known[n] for n in names))


def parse_limit(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise BadQuery(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(text)


def parse_query(query: Mapping[str, str], repeated: set[str] | None = None) -> ItemQuery:
    """The query string of ``GET /v1/items``; :class:`BadQuery` for an unknown, repeated or
    malformed parameter. A cursor wins over ``updated_since`` (it lies after it: pass the same
    filters with it)."""
    unknown = sorted(set(query) - set(PARAMETERS))
    if unknown:
        raise BadQuery(f"unknown parameter {unknown[0]!r}; known: {', '.join(PARAMETERS)}")
    if repeated:
        raise BadQuery(f"{sorted(repeated)[0]} may be given once (several states: state=a,b)")
    user = query.get("client_user_id")
    if user is not None and not 1 <= len(user) <= 128:
        raise BadQuery("client_user_id must be 1 to 128 characters")
    after = START
    if "updated_since" in query:
        # Just before the first Item changed at updated_since (uuid4 ids are never zero): inclusive.
        after = (parse_since(query["updated_since"]), uuid.UUID(int=0))
    if "cursor" in query:
        after = decode_cursor(query["cursor"])
    return ItemQuery(
        client_user_id=user,
        states=parse_states(query["state"]) if "state" in query else None,
        after=after,
        limit=parse_limit(query["limit"]) if "limit" in query else DEFAULT_LIMIT,
    )
