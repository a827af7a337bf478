"""GET /v1/items' query string and cursor, and POST /v1/link_tokens' refusal before any Plaid call."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from aiohttp.test_utils import TestClient, TestServer

from webhooks.app import Receiver, create_app
from webhooks.listing import DEFAULT_LIMIT, START, BadQuery, decode_cursor, encode_cursor, parse_query
from worker.items.states import State
from worker.settings import Settings


def test_a_cursor_keeps_the_position_to_the_microsecond() -> None:
    at, item_id = datetime(2026, 12, 1, 22, 1, 9, 884120, tzinfo=UTC), uuid.uuid4()
    cursor = encode_cursor(at, item_id)
    assert "=" not in cursor and decode_cursor(cursor) == (at, item_id)
    assert parse_query({"cursor": cursor, "updated_since": "2020-01-01T00:00:00Z"}).after == (at, item_id)


def test_defaults_and_filters() -> None:
    q = parse_query({})
    assert (q.client_user_id, q.states, q.after, q.limit) == (None, None, START, DEFAULT_LIMIT)
    q = parse_query({"client_user_id": "u1", "state": "failed, revoked,failed", "limit": "100"})
    assert q.states == (State.FAILED, State.REVOKED) and q.limit == 100
    since = parse_query({"updated_since": "2025-01-31T00:00:00 02:00"}).after  # '+' read as a space
    assert since == (datetime.fromisoformat("2025-01-31T00:00:00+02:00"), uuid.UUID(int=0))


@pytest.mark.parametrize(
    "query",
    [{"limit": "-1"}, {"limit": "1e2"}, {"state": "failed,nope"}, {"cursor": "e30"}, {"since": "x"}],
)
def test_bad_queries_say_what_is_wrong(query: dict[str, str]) -> None:
    with pytest.raises(BadQuery, match=next(iter(query)) if "since" not in query else "unknown"):
        parse_query(query)


async def test_link_token_against_plaid_itself_needs_the_public_webhook_url() -> None:
    settings = Settings()  # Plaid's own host, PAW_PUBLIC_WEBHOOK_URL unset
    receiver = Receiver(settings=settings, publisher=None, store=None, keys=None)  # type: ignore[arg-type]
    auth = {"Authorization": f"Bearer {settings.api_keys[0]}"}
    async with (
        TestClient(TestServer(create_app(receiver))) as client,
        client.post("/v1/link_tokens", json={"client_user_id": "u1"}, headers=auth) as r,
    ):
        assert r.status == 503 and (await r.json())["error"] == "not_configured"
