"""Finding any Item by the id support has (`paw item show`), listing Items (`paw item list`), and ids
that are not ids: one line, exit 2."""

from __future__ import annotations

import json
import uuid
from typing import Any

from tests.helpers import run_paw, stored_item
from worker.bus.topology import queue_depth
from worker.items.model import token_hash
from worker.services import Services
from worker.settings import Settings
from worker.sql import query


async def make(services: Services, user: str, **columns: Any) -> uuid.UUID:
    item = await stored_item(services, user, request_id=columns.pop("request_id", None))
    if columns:  # what the pipeline would have recorded by now
        sets = ", ".join(f"{k} = ${n}" for n, k in enumerate(columns, 2))
        await services.pool.execute(f"UPDATE items SET {sets} WHERE id = $1", item.id, *columns.values())
    return item.id


async def show(settings: Settings, text: str) -> tuple[int, Any, str]:
    code, out, err = await run_paw(settings, "item", "show", text, "--json", timeout=30)
    return code, json.loads(out) if out.strip() else None, err.decode()


async def test_item_show_finds_an_item_by_any_id_support_has(settings: Settings, services: Services) -> None:
    target = await make(
        services,
        "user-lookup-1",
        request_id="upstream-req-77",
        plaid_item_id="pl-item-Xy12",
        atomic_funding_source_id="fs_lookup_9",
        plaid_request_id="plaid-req-5",
        state="atomic_verified",
    )
    await make(services, "someone-else", plaid_item_id="pl-item-other")
    for text in (
        str(target),
        str(target)[:8],
        str(target).upper()[:13],
        "user-lookup-1",
        "pl-item-Xy12",
        "fs_lookup_9",
        "upstream-req-77",
        "plaid-req-5",
    ):
        code, shown, err = await show(settings, text)
        assert code == 0, (text, err)
        assert shown["id"] == str(target) and shown["history"][0]["to_state"] == "link", text
    # its outcome events: written with the history, not published (no worker runs here)
    assert [(e["sequence"], e["to_state"], e["sent_at"]) for e in shown["outcome_events"]] == [
        (1, "link", None)
    ]
    code, shown, err = await show(settings, "nobody-has-this-id")
    assert (code, shown, err) == (1, None, "paw: no Item matches 'nobody-has-this-id'\n")


async def test_an_ambiguous_id_lists_the_candidates(settings: Settings, services: Services) -> None:
    first = await make(services, "user-twice")
    second = await make(services, "user-twice")
    code, shown, err = await show(settings, "user-twice")
    assert code == 1 and err == "paw: 2 Items match 'user-twice': give one id\n"
    assert {i["id"] for i in shown} == {str(first), str(second)}
    # two ids sharing their first 8 hex digits (made so here; rare in life): the prefix is ambiguous
    twins = [uuid.UUID(f"abcdef12-0000-4000-8000-00000000000{n}") for n in (1, 2)]
    for n, twin in enumerate(twins):
        await services.pool.execute(
            "INSERT INTO items (id, public_token_sha256, client_user_id, state) VALUES ($1, $2, $3, 'link')",
            twin,
            token_hash(f"twin-{n}-{uuid.uuid4()}"),
            f"twin-{n}",
        )
    code, out, err = await run_paw(settings, "item", "show", "abcdef12", timeout=30)
    assert code == 1 and err.decode() == "paw: 2 Items match 'abcdef12': give one id\n"
    assert all(str(t) in out.decode() for t in twins)  # the table is whole off a terminal
    code, shown, _ = await show(settings, "abcdef12-0000-4000-8000-000000000002")
    assert code == 0 and shown["id"] == str(twins[1])


async def test_each_way_of_finding_an_item_is_an_index_lookup(services: Services) -> None:
    async with services.pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        low, high = uuid.UUID(int=0), uuid.UUID(int=1)
        plan = "\n".join(
            r[0] for r in await conn.fetch(f"EXPLAIN {query('find_items')}", "some-id", low, high, 20)
        )
    assert "Seq Scan" not in plan, plan


async def test_item_list_filters_and_bad_input_is_one_line(settings: Settings, services: Services) -> None:
    failed = await make(services, "user-list", state="failed", error_code="INVALID_PUBLIC_TOKEN")
    verified = await make(services, "user-list", state="atomic_verified")
    await make(services, "user-list-other", state="atomic_verified")

    async def listed(*args: str) -> list[str]:
        code, out, err = await run_paw(settings, "item", "list", "--json", *args, timeout=30)
        assert code == 0, err.decode()
        return [i["id"] for i in json.loads(out)]

    assert await listed("--user", "user-list") == [str(verified), str(failed)]  # latest change first
    assert await listed("--state", "failed", "--code", "INVALID_PUBLIC_TOKEN") == [str(failed)]
    assert len(await listed("--since", "1h", "--limit", "2")) == 2
    assert await listed("--until", "2000-01-01") == []
    code, out, err = await run_paw(settings, "item", "list", "--state", "verified", timeout=30)
    assert code == 2 and err.decode().startswith("paw: no state verified (states: link, exchanged")
    for command in (["forget", "not-a-uuid", "--yes"], ["retry", "not-a-uuid"]):
        code, out, err = await run_paw(settings, "item", *command, timeout=30)
        assert (code, out) == (2, b"") and err.decode().count("\n") == 1, err
        assert "not an Item id" in err.decode()


async def test_item_retry_refuses_what_a_drive_cannot_move_and_sends_nothing(
    settings: Settings, services: Services
) -> None:
    failed = await make(services, "user-retry", state="failed", error_code="INVALID_PUBLIC_TOKEN")
    code, out, err = await run_paw(settings, "item", "retry", str(failed), timeout=30)
    assert (code, out) == (1, b"")
    assert err.decode().startswith(f"paw: nothing sent: a retry cannot move Item {failed} in failed: ")
    channel = await services.connection.channel()
    try:
        assert await queue_depth(channel, services.topo.items_queue) == 0
    finally:
        await channel.close()
    movable = await make(services, "user-retry", state="exchanged")
    code, out, err = await run_paw(settings, "item", "retry", str(movable), timeout=30)
    assert code == 0 and b"item.drive sent" in out, err
    code, out, err = await run_paw(
        settings,
        "item",
        "retry",
        str(movable),
        "--reason",
        "stuck after the outage",
        "--actor",
        "dana",
        "--json",
    )
    sent = json.loads(out)
    assert code == 0 and (sent["item_id"], sent["state"], sent["sent"]) == (
        str(movable),
        "exchanged",
        "item.drive",
    )
    # the requests are noted beside the history (which holds transitions only), with who and why
    code, shown, _ = await show(settings, str(movable))
    assert [(n["kind"], n["actor"], n["text"]) for n in shown["notes"]][-1] == (
        "retry",
        "dana",
        "stuck after the outage",
    )
    assert shown["notes"][-1]["message_id"] == sent["message_id"] and len(shown["notes"]) == 2
    assert [h["to_state"] for h in shown["history"]] == ["link"]  # no transition was invented
    _, refused, _ = await show(settings, str(failed))
    assert refused["notes"] == []  # refused: nothing sent, nothing noted
