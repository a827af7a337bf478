"""The upstream app's side (issue 17): link tokens for new Items, and finding Items.

Real path: Postgres, RabbitMQ, the sandbox (Plaid and Atomic), the receiver and the worker.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp
import asyncpg
import pytest

from sandbox.app import SandboxConfig
from tests.helpers import RunningWorker, Sandbox, access_token_of, eventually, state_of
from webhooks.listing import START, encode_cursor
from worker.items.model import token_hash
from worker.items.states import State
from worker.services import Services
from worker.settings import Settings
from worker.sql import query

TOKEN_MARKERS = ("access-sandbox-", "processor-sandbox-", "public-sandbox-", "sealed")


@pytest.fixture
def sandbox_config(sandbox_config_for_receiver: SandboxConfig) -> SandboxConfig:
    return sandbox_config_for_receiver


@pytest.fixture
def settings(settings: Settings, receiver_port: int) -> Settings:
    """paw's public webhook URL is the test receiver, as Plaid would reach it."""
    return dataclasses.replace(
        settings,
        public_webhook_url=f"http://127.0.0.1:{receiver_port}/webhooks/plaid",
        link_client_name="Acme Payroll",
        link_country_codes=("US", "CA"),
    )


async def call(
    settings: Settings, method: str, url: str, body: Any = None, *, auth: bool = True
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {settings.api_keys[0]}"} if auth else {}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, json=body, headers=headers) as r,
    ):
        return r.status, await r.json(content_type=None)


# -- POST /v1/link_tokens --------------------------------------------------------------------------


async def test_link_token_from_paw_makes_an_item_whose_webhooks_come_to_paw(
    services: Services, worker: RunningWorker, receiver: str, sandbox: Sandbox, settings: Settings
) -> None:
    """Done when: POST /v1/link_tokens returns a link token; the sandbox plays the user's Link
    session for it; the Item, submitted to paw, sends its webhooks to the URL paw put in the token."""
    user = f"u-{uuid.uuid4().hex[:8]}"
    status, token = await call(settings, "POST", f"{receiver}/v1/link_tokens", {"client_user_id": user})
    assert status == 200, token
    assert token["link_token"].startswith("link-sandbox-") and token["expiration"] and token["request_id"]
    session = sandbox.state.plaid.link_session(token["link_token"])
    assert session.products == ("auth",) and session.access_token is None  # a new Item
    assert session.webhook == settings.public_webhook_url
    assert session.client_user_id == user

    # the user's Link session (a browser in the real Sandbox; here the emulator's lever)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{sandbox.url}/sandbox/control/link/complete",
            json={"link_token": token["link_token"], "username": "user_automated_microdeposits"},
        ) as r,
    ):
        assert r.status == 200
        public_token = (await r.json())["public_token"]
    assert public_token.startswith("public-sandbox-")

    status, accepted = await call(
        settings, "POST", f"{receiver}/v1/items", {"public_token": public_token, "client_user_id": user}
    )
    assert status == 202, accepted

    async def waiting() -> Any:
        item = await services.store.get_by_token_hash(token_hash(public_token))
        return item if item is not None and item.state is State.AWAITING_VERIFICATION else None

    item = await eventually(waiting)
    plaid_item = sandbox.state.plaid.items[item.plaid_item_id or ""]
    assert plaid_item.webhook == settings.public_webhook_url
    # Plaid's AUTH AUTOMATICALLY_VERIFIED goes to paw's receiver, which drives the Item to the end
    access = access_token_of(sandbox, item.plaid_item_id or "")
    sandbox.state.plaid.set_verification_status(access, item.account_id or "", "automatically_verified")
    done = await state_of(services, item, State.ATOMIC_VERIFIED)
    assert done.client_user_id == user
    mine = [d for d in sandbox.state.webhook_deliveries if (item.plaid_item_id or "-") in d.body.decode()]
    assert mine and {(d.url, d.status) for d in mine} == {(settings.public_webhook_url, 200)}
    history = await services.store.history(item.id)
    assert any(h.cause.startswith("webhook.plaid.AUTH.AUTOMATICALLY_VERIFIED") for h in history), history


async def test_link_token_refusals(
    services: Services, receiver: str, sandbox: Sandbox, settings: Settings
) -> None:
    url = f"{receiver}/v1/link_tokens"
    assert (await call(settings, "POST", url, {"client_user_id": "u1"}, auth=False))[0] == 401
    for body, says in [
        (None, "client_user_id"),
        ({}, "client_user_id"),
        ({"client_user_id": ""}, "client_user_id"),
        ({"client_user_id": "u1", "products": ["transactions"]}, "may only hold"),
        ({"client_user_id": "u1", "country_codes": ["XX"]}, "country_codes"),
        ({"client_user_id": "u1", "language": "xx"}, "language"),
        ([1], "may only hold"),
    ]:
        status, answer = await call(settings, "POST", url, body)
        assert (status, answer["error"]) == (400, "invalid_request"), body
        assert says in answer["detail"], (body, answer)
    # the body's options win over the settings'
    status, token = await call(
        settings, "POST", url, {"client_user_id": "u1", "client_name": "Other", "country_codes": ["GB"]}
    )
    assert status == 200, token
    # Plaid's own errors come back with its error_code and request_id
    sandbox.state.set_fault(
        "/link/token/create", status=400, error_code="INVALID_API_KEYS", error_type="INVALID_INPUT", times=1
    )
    status, answer = await call(settings, "POST", url, {"client_user_id": "u1"})
    assert status == 502 and answer["error"] == "plaid_error"
    assert answer["error_code"] == "INVALID_API_KEYS" and answer["request_id"]
    sandbox.state.set_fault(
        "/link/token/create",
        status=429,
        error_code="RATE_LIMIT_EXCEEDED",
        error_type="RATE_LIMIT_EXCEEDED",
        times=1,
        retry_after=7,
    )
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url, json={"client_user_id": "u1"}, headers={"Authorization": f"Bearer {settings.api_keys[0]}"}
        ) as r,
    ):
        answer = await r.json()
        assert r.status == 503 and answer["error"] == "plaid_unavailable"
        assert answer["error_code"] == "RATE_LIMIT_EXCEEDED" and answer["request_id"]
        assert r.headers["Retry-After"] == "7"


# -- GET /v1/items ---------------------------------------------------------------------------------


async def seed(database_url: str, sql: str, *args: Any) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


# Items straight into the table, as the pipeline leaves them: $1 how many, $2 client_user_id (null:
# user-<n % 50>), $3 updated_at of the first (each next one a millisecond later).
SEED_ITEMS = """
INSERT INTO items (id, public_token_sha256, client_user_id, state, access_token_key_id,
                   access_token_sealed, plaid_item_id, created_at, updated_at)
SELECT gen_random_uuid(), md5(random()::text || g), coalesce($2::text, 'user-' || (g % 50)),
       (ARRAY['atomic_verified', 'failed', 'awaiting_verification', 'atomic_pending'])[1 + g % 4],
       'dev1', '\\x00'::bytea, 'plaid-' || gen_random_uuid(), $3::timestamptz, $3::timestamptz + make_interval(secs => g / 1000.0)
FROM generate_series(1, $1::int) AS g
"""


async def page(settings: Settings, receiver: str, **params: Any) -> tuple[int, dict[str, Any]]:
    return await call(settings, "GET", f"{receiver}/v1/items?{urlencode(params)}")


async def test_items_page_through_in_change_order_without_tokens(
    services: Services, receiver: str, settings: Settings, database_url: str
) -> None:
    t0 = datetime.fromisoformat("2025-01-01T00:00:00+00:00")
    await seed(database_url, SEED_ITEMS, 230, "alice", t0)
    await seed(database_url, SEED_ITEMS, 40, None, t0)  # other users
    # two Items changed in the same microsecond: the id breaks the tie
    await seed(database_url, SEED_ITEMS.replace("g / 1000.0", "0"), 2, "alice", t0 + timedelta(days=1))

    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        status, body = await page(
            settings, receiver, client_user_id="alice", limit=100, **({"cursor": cursor} if cursor else {})
        )
        assert status == 200, body
        seen += body["items"]
        pages += 1
        cursor = body["next_cursor"]
        if not body["has_more"]:
            break
    assert pages == 3 and len(seen) == 232 and len({i["id"] for i in seen}) == 232
    keys = [(i["updated_at"], i["id"]) for i in seen]
    assert keys == sorted(keys) and {i["client_user_id"] for i in seen} == {"alice"}
    assert not any(m in json.dumps(seen) for m in TOKEN_MARKERS)
    assert "history" not in seen[0] and set(seen[0]) >= {"id", "state", "error", "updated_at"}

    # the last cursor is a bookmark: an Item that changes afterwards comes on the next ask, and only it
    status, body = await page(settings, receiver, client_user_id="alice", cursor=cursor)
    assert (status, body["items"], body["next_cursor"], body["has_more"]) == (200, [], cursor, False)
    changed = seen[5]["id"]
    await seed(
        database_url,
        "UPDATE items SET state = 'failed', updated_at = now() WHERE id = $1",
        uuid.UUID(changed),
    )
    status, body = await page(settings, receiver, client_user_id="alice", cursor=cursor)
    assert [(i["id"], i["state"]) for i in body["items"]] == [(changed, "failed")]

    # filters: states (several, comma-separated), updated_since (inclusive), everyone's Items
    status, body = await page(
        settings, receiver, client_user_id="alice", state="failed,atomic_pending", limit=100
    )
    assert body["items"] and {i["state"] for i in body["items"]} <= {"failed", "atomic_pending"}
    since = seen[200]["updated_at"]
    status, body = await page(settings, receiver, client_user_id="alice", updated_since=since, limit=100)
    assert [i["id"] for i in body["items"]][:31] == [i["id"] for i in seen[200:] if i["id"] != changed][:31]
    status, body = await page(settings, receiver, limit=100)
    assert status == 200 and len(body["items"]) == 100 and body["has_more"]
    assert len({i["client_user_id"] for i in body["items"]}) > 1


async def test_items_query_refusals(services: Services, receiver: str, settings: Settings) -> None:
    bad = [
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "ten"},
        {"state": "verified"},
        {"state": ""},
        {"updated_since": "yesterday"},
        {"updated_since": "2025-01-01T00:00:00"},  # no time zone
        {"cursor": "not-a-cursor"},
        {"cursor": encode_cursor(*START)[:-2]},
        {"client_user_id": "x" * 129},
        {"user": "alice"},
    ]
    for params in bad:
        status, body = await page(settings, receiver, **params)
        assert (status, body["error"]) == (400, "invalid_query"), params
        assert body["detail"], params
    status, body = await call(settings, "GET", f"{receiver}/v1/items?state=failed&state=revoked")
    assert (status, body["error"]) == (400, "invalid_query") and "once" in body["detail"]
    assert (await call(settings, "GET", f"{receiver}/v1/items", auth=False))[0] == 401
    # a '+' offset that arrived as a space still reads
    status, body = await call(settings, "GET", f"{receiver}/v1/items?updated_since=2025-01-01T00:00:00+02:00")
    assert status == 200, body


# -- The index ------------------------------------------------------------------------------------


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += nodes(child)
    return found


async def explain(conn: asyncpg.Connection, args: str, *, generic: bool) -> dict[str, Any]:
    """The plan of the prepared statement ``p`` for ``args``, as a custom plan (what the first runs
    of a statement get) or as the generic plan asyncpg's cached statement may switch to."""
    await conn.execute(f"SET plan_cache_mode = {'force_generic_plan' if generic else 'force_custom_plan'}")
    text = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE p({args})")
    plan: dict[str, Any] = json.loads(text)[0]["Plan"]
    return plan


async def test_items_of_a_user_over_10000_items_are_one_index_scan(database_url: str) -> None:
    """Done when: GET /v1/items?client_user_id= over 10,000 Items answers in one index scan."""
    t0 = datetime.fromisoformat("2025-01-01T00:00:00+00:00")
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(SEED_ITEMS, 5_000, "big-user", t0)  # one user with half of them
        await conn.execute(SEED_ITEMS, 5_000, None, t0)  # and 50 users with 100 each
        assert await conn.fetchval("SELECT count(*) FROM items") == 10_000
        await conn.execute("ANALYZE items")
        # the route's own SQL, as the store sends it
        await conn.execute(
            f"PREPARE p(text, timestamptz, uuid, text[], int) AS {query('list_items_for_user')}"
        )
        middle = await conn.fetchrow(
            "SELECT updated_at, id FROM items WHERE client_user_id = 'big-user' ORDER BY updated_at, id OFFSET 2500 LIMIT 1"
        )
        cases = {
            "first page": "'big-user', '-infinity', '00000000-0000-0000-0000-000000000000', NULL, 51",
            "a page deep in": f"'big-user', '{middle['updated_at'].isoformat()}', '{middle['id']}', NULL, 51",
            "a small user": "'user-7', '-infinity', '00000000-0000-0000-0000-000000000000', NULL, 51",
            "with states": "'big-user', '-infinity', '00000000-0000-0000-0000-000000000000', '{failed}', 51",
        }
        for name, args in cases.items():
            for generic in (False, True):
                plan = await explain(conn, args, generic=generic)
                kinds = [n["Node Type"] for n in nodes(plan)]
                assert kinds == ["Limit", "Index Scan"], (name, generic, kinds)
                scan = nodes(plan)[1]
                assert scan["Index Name"] == "items_client_user_updated", (name, scan)
                assert "client_user_id" in scan["Index Cond"] and "updated_at" in scan["Index Cond"]
                # the scan stops after the page: it never reads the user's other Items
                read = scan["Actual Rows"] + scan.get("Rows Removed by Filter", 0)
                assert read <= (51 if "states" not in name else 5 * 51), (name, generic, read)
        # everyone's Items: the other index, no sort either
        await conn.execute(f"PREPARE q(timestamptz, uuid, text[], int) AS {query('list_items')}")
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        text = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) EXECUTE q('-infinity', '00000000-0000-0000-0000-000000000000', NULL, 51)"
        )
        everyone = [(n["Node Type"], n.get("Index Name")) for n in nodes(json.loads(text)[0]["Plan"])]
        assert everyone == [("Limit", None), ("Index Scan", "items_updated")], everyone
    finally:
        await conn.close()
