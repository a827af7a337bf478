"""The on-call dead-letter tools on the real broker and database: list, show, replay, purge, item retry;
and the pure decisions under them."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterable, MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest
from structlog.testing import capture_logs

from sandbox.app import SandboxConfig
from tests.helpers import (
    ROOT,
    Letter,
    RunningWorker,
    Sandbox,
    dead_headers,
    drive_letter,
    eventually,
    new_public_token,
    paw_env,
    queue_messages,
    run_paw,
    settled,
    stored_item,
    submit_amqp,
)
from worker import metrics
from worker.bus import dead_index, dead_queue, dlq, topology
from worker.bus.consumer import Consumer
from worker.bus.dlq import DeadLetter
from worker.cli import build_parser
from worker.errors import DlqError, Poison
from worker.items.model import token_hash
from worker.items.states import State
from worker.items.store import create_pool
from worker.messages import (
    H_ATTEMPTS,
    H_ERROR_CLASS,
    H_ERROR_CODE,
    H_ERROR_MESSAGE,
    H_FIRST_FAILURE,
    H_LAST_FAILURE,
    H_REPLAYS,
    H_ROUTING_KEY,
)
from worker.runner import run_worker
from worker.services import Services
from worker.settings import Settings

# -- Helpers -----------------------------------------------------------------------------------


async def put_dead(settings: Settings, letters: Iterable[Letter], *, index: bool = True) -> None:
    """Publishes straight onto the dead queue (with confirms) and indexes each one, as the consumer
    would (``index=False``: as a worker whose database refused the index row)."""
    letters = list(letters)
    conn = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await conn.channel(publisher_confirms=True)
        dead = f"{settings.queue_prefix}.dead"
        await asyncio.gather(
            *(
                channel.default_exchange.publish(
                    aio_pika.Message(
                        x.body,
                        headers=x.headers,
                        message_id=x.message_id,
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=dead,
                    mandatory=True,
                )
                for x in letters
            )
        )
    finally:
        await conn.close()
    if index:
        pool = await create_pool(settings.database_url, min_size=1, max_size=1)
        try:
            for x in letters:
                await dead_index.record(pool, DeadLetter.parse(x.body, x.headers, x.message_id))
        finally:
            await pool.close()


async def depth(settings: Settings, queue: str | None = None) -> int:
    conn = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await conn.channel()
        q = await channel.declare_queue(queue or f"{settings.queue_prefix}.dead", passive=True)
        return int(q.declaration_result.message_count or 0)
    finally:
        await conn.close()


@dataclasses.dataclass
class Ran:
    code: int
    out: str
    logs: list[MutableMapping[str, Any]]

    def json(self) -> Any:
        return json.loads(self.out)


async def paw(settings: Settings, capsys: pytest.CaptureFixture[str], *argv: str) -> Ran:
    """Runs one `paw ...` command in-process (the parser and the command function main() would use)."""
    args = build_parser().parse_args(list(argv))
    capsys.readouterr()
    with capture_logs() as logs:
        code = await args.func(settings, args)
    return Ran(code, capsys.readouterr().out, logs)


async def fetch(settings: Settings, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


@pytest.fixture
async def target(services: Services, settings: Settings) -> AsyncIterator[str]:
    """A queue bound to the test exchange with '#': every replayed message lands here (and nobody
    consumes it)."""
    name = f"{settings.queue_prefix}.replayed"
    conn = await aio_pika.connect(settings.amqp_url)
    channel = await conn.channel()
    exchange = await channel.get_exchange(settings.exchange)
    queue = await channel.declare_queue(name, durable=True)
    await queue.bind(exchange, "#")
    try:
        yield name
    finally:
        await channel.queue_delete(name)
        await conn.close()


# -- Pure --------------------------------------------------------------------------------------


# -- list / show on the real broker ------------------------------------------------------------


async def test_list_shows_every_dead_letter_and_gives_them_all_back_in_order(
    services: Services, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    letters = [drive_letter(i) for i in range(30)]
    for x in letters:  # one by one, so the queue order is known
        await put_dead(settings, [x])
    ran = await paw(settings, capsys, "dlq", "list", "--json")
    assert ran.code == 0
    rows = ran.json()
    assert [r["key"] for r in rows] == [x.key for x in letters]
    assert rows[0]["routing_key"] == "item.drive" and rows[0]["attempts"] == 5
    assert rows[0]["item_id"] == json.loads(letters[0].body)["item_id"]
    assert rows[0]["error_code"] == "INSTITUTION_DOWN" and 0 <= rows[0]["age_s"] < 60
    # listing twice (and a human table in between) loses nothing and keeps the order
    table = await paw(settings, capsys, "dlq", "list")
    assert f"{settings.queue_prefix}.dead: 30 dead letters" in table.out.replace("\n", "")
    assert all(x.key[:12] in table.out for x in letters) and "INSTITUTION_DOWN 30" in table.out
    assert [r["key"] for r in (await paw(settings, capsys, "dlq", "list", "--json")).json()] == [
        x.key for x in letters
    ]
    assert await dead_queue.dlq_depth(services.connection, services.topo) == 30
    left = await queue_messages(settings.amqp_url, services.topo.dead_queue)
    assert [m.body for m in left] == [x.body for x in letters]


async def test_list_filters_and_resolves_item_ids(
    services: Services, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    token = "public-sandbox-" + str(uuid.uuid4())
    item = await stored_item(services, "u-1", public_token=token)
    link = Letter(
        json.dumps({"public_token": token, "client_user_id": "u-1"}).encode(),
        dead_headers("item.link", code="INSTITUTION_DOWN", last=datetime.now(UTC) - timedelta(hours=3)),
        str(uuid.uuid4()),
    )
    plaid = Letter(
        json.dumps(
            {"event_id": str(uuid.uuid4()), "webhook": {"item_id": "pl-7", "webhook_type": "ITEM"}}
        ).encode(),
        dead_headers("webhook.plaid.ITEM.ERROR", code="INTERNAL_SERVER_ERROR", message="Plaid said 500"),
        str(uuid.uuid4()),
    )
    poison = Letter(
        b"{not json",
        dead_headers("item.link", error_class="Poison", message="body is not JSON", attempts=1),
        "m-p",
    )
    await put_dead(settings, [link, plaid, poison])

    async def keys(*argv: str) -> list[str]:
        ran = await paw(settings, capsys, "dlq", "list", "--json", *argv)
        assert ran.code == 0
        return [r["key"] for r in ran.json()]

    assert await keys() == [link.key, plaid.key, poison.key]
    assert await keys("--item", str(item.id)) == [link.key]  # found through the public-token hash
    assert await keys("--item", "pl-7") == [plaid.key]
    assert await keys("--code", "internal_server_error") == [plaid.key]
    assert await keys("--error", "not json") == [poison.key]
    assert await keys("--since", "1h") == [plaid.key, poison.key]
    assert await keys("--routing-key", "webhook.#") == [plaid.key]
    assert await keys("--routing-key", "item.link", "--error", "Poison") == [poison.key]
    assert await keys("--limit", "2") == [link.key, plaid.key]
    rows = (await paw(settings, capsys, "dlq", "list", "--json", "--item", str(item.id))).json()
    assert rows[0]["item_id"] == str(item.id) and token not in json.dumps(rows)
    assert await depth(settings) == 3


async def test_show_prints_everything_redacted(
    services: Services, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    token = "public-sandbox-" + str(uuid.uuid4())
    letter = Letter(
        json.dumps({"public_token": token, "client_user_id": "u-show"}).encode(),
        {
            **dead_headers("item.link", message=f"exchange failed for {token}"),
            "x-death": [
                {
                    "queue": "paw.items.retry.50",
                    "reason": "expired",
                    "count": 1,
                    "routing-keys": ["paw.items.retry.50"],
                }
            ],
        },
        "msg-show-1",
    )
    await put_dead(settings, [letter, drive_letter()])
    ran = await paw(settings, capsys, "dlq", "show", letter.key[:8])
    assert ran.code == 0
    assert letter.key in ran.out and "msg-show-1" in ran.out and "INSTITUTION_DOWN" in ran.out
    assert "paw.items.retry.50" in ran.out and "u-show" in ran.out and "x-paw-attempts" in ran.out
    assert token.split("-", 2)[2] not in ran.out and "[redacted]" in ran.out
    shown = (await paw(settings, capsys, "dlq", "show", letter.key, "--json")).json()
    assert shown["body"] == {"public_token": "[redacted]", "client_user_id": "u-show"}
    assert shown["headers"][H_ERROR_MESSAGE] == "exchange failed for public-sandbox-[redacted]"
    assert shown["history"][0]["queue"] == "paw.items.retry.50" and shown["copies"] == 1
    with pytest.raises(DlqError, match="no such dead letter"):
        await paw(
            settings, capsys, "dlq", "show", "0" * 12 if not letter.key.startswith("0" * 12) else "1" * 12
        )
    assert await depth(settings) == 2


async def test_filters_pick_in_the_index(services: Services) -> None:
    """What each filter picks, decided by dead_letters_matching() in Postgres."""
    now = datetime.now(UTC)
    item = str(uuid.uuid4())
    old = DeadLetter.parse(
        json.dumps({"item_id": item, "reason": "r"}).encode(),
        dead_headers("item.drive", code="INSTITUTION_DOWN", last=now - timedelta(hours=3)),
        "m1",
    )
    new = DeadLetter.parse(
        b'{"event_id": "e", "webhook": {"item_id": "pl-1"}}',
        dead_headers("webhook.plaid.ITEM.ERROR", code="INTERNAL_SERVER_ERROR", message="Plaid 5%_", last=now),
        "m2",
    )
    for d in (old, new):
        assert await dead_index.record(services.pool, d)

    async def picked(**kw: Any) -> list[DeadLetter]:
        keys = await dead_index.chosen_keys(services.pool, dlq.Filters(**kw))
        return [d for d in (old, new) if d.key in keys]

    both = [old, new]
    assert await picked() == both and dlq.Filters().empty
    assert await picked(code="institution_down") == [old]
    assert await picked(error="plaid 5%_") == [new]  # text, not a LIKE pattern
    assert await picked(error="plaid 5%x") == []
    assert await picked(error="UpstreamError") == both
    assert await picked(since=now - timedelta(hours=1)) == [new]
    assert await picked(until=now - timedelta(hours=1)) == [old]
    assert await picked(routing_key="webhook.#") == [new]
    assert await picked(routing_key="webhook.plaid.*") == []  # '*' is one word
    assert await picked(routing_key="webhook.plaid.*.*") == [new]
    assert await picked(routing_key="#.ERROR") == [new]
    assert await picked(routing_key="item.drive") == [old]
    assert await picked(item=item.upper()) == [old]
    assert await picked(item="pl-1") == [new]
    assert await picked(ids=(new.key[:8],)) == [new]
    assert await picked(ids=(new.key[:8], old.key[:6])) == both
    assert await picked(ids=(new.key[:8],), code="INSTITUTION_DOWN") == []  # every criterion must hold
    assert await picked(min_attempts=5) == both and await picked(min_attempts=6) == []
    assert await dead_index.chosen_keys(services.pool, dlq.Filters(), 1) == [old.key]
    assert dlq.Filters(code="X", since=now).public() == {"code": "X", "since": now.isoformat()}
    assert not await dead_index.record(services.pool, old)  # a second copy of one message
    (row,) = await dead_index.by_prefix(services.pool, old.key[:8])
    assert row.copies == 2 and row.status == "dead"


async def test_a_hundred_lists_and_shows_leave_every_delivery_count_unchanged(
    services: Services, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """Looking reads the index only: a quorum queue counts every basic.get given back as a delivery
    (and RabbitMQ 4 drops a message past 20 by default)."""
    letters = [drive_letter(i) for i in range(5)]
    await put_dead(settings, letters)
    for i in range(50):
        assert (await paw(settings, capsys, "dlq", "list", "--json")).code == 0
        assert (await paw(settings, capsys, "dlq", "show", letters[i % 5].key[:10], "--json")).code == 0
    left = await queue_messages(settings.amqp_url, services.topo.dead_queue)
    assert [m.body for m in left] == [x.body for x in letters]  # still in order, none taken
    assert [m.headers.get("x-delivery-count") for m in left] == [0] * 5  # never delivered before
    assert [m.redelivered for m in left] == [False] * 5


async def test_list_pages_and_the_new_filters(
    services: Services, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC)
    old = [drive_letter(i, last=now - timedelta(hours=5), attempts=2) for i in range(3)]
    new = [drive_letter(10 + i, attempts=6) for i in range(4)]
    await put_dead(settings, [*old, *new])
    item = await stored_item(services, "u-state")
    mine = Letter(json.dumps({"item_id": str(item.id)}).encode(), dead_headers("item.drive"), "m-state")
    await put_dead(settings, [mine])

    async def keys(*argv: str) -> list[str]:
        ran = await paw(settings, capsys, "dlq", "list", "--json", *argv)
        assert ran.code == 0
        return [r["key"] for r in ran.json()]

    everything = [x.key for x in [*old, *new, mine]]
    assert await keys() == everything
    assert await keys("--until", "1h") == [x.key for x in old]
    assert await keys("--min-attempts", "6") == [x.key for x in new]
    assert await keys("--state", item.state.value) == [mine.key]
    # pages: the cursor is a dead letter's id, and the next page starts after it
    first = await keys("--limit", "3")
    assert first == everything[:3]
    capsys.readouterr()
    args = build_parser().parse_args(["dlq", "list", "--limit", "3"])
    await args.func(settings, args)
    assert f"--after {everything[2][:12]}" in capsys.readouterr().err
    assert await keys("--limit", "3", "--after", everything[2][:12]) == everything[3:6]
    assert await keys("--limit", "3", "--after", everything[5][:12]) == everything[6:]
    table = await paw(settings, capsys, "dlq", "list", "--min-attempts", "6", "--limit", "2")
    flat = " ".join(table.out.split())
    assert "8 dead letters, 4 match, 2 shown" in flat and "INSTITUTION_DOWN 4" in flat


async def test_reindex_adds_what_the_worker_could_not_index(
    services: Services, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    indexed, unindexed = drive_letter(0), [drive_letter(i) for i in range(1, 4)]
    await put_dead(settings, [indexed])
    await put_dead(settings, unindexed, index=False)  # the worker's database refused the rows
    capsys.readouterr()
    args = build_parser().parse_args(["dlq", "list", "--json"])
    assert await args.func(settings, args) == 0
    out = capsys.readouterr()
    assert [r["key"] for r in json.loads(out.out)] == [indexed.key]
    assert "holds 4 messages but the index knows 1" in out.err and "paw dlq reindex" in out.err
    # a purge killed between its record and its ack: the row says purged, the message is there
    await dead_index.mark(services.pool, indexed.key, "purged", None)

    ran = await paw(settings, capsys, "dlq", "reindex", "--json")
    assert ran.code == 0
    assert {k: v for k, v in ran.json().items() if k != "action_id"} == {
        "on_queue": 4,
        "added": 3,
        "restored": 1,
        "missing": 0,
    }
    listed = (await paw(settings, capsys, "dlq", "list", "--json")).json()
    assert sorted(r["key"] for r in listed) == sorted(x.key for x in [indexed, *unindexed])
    again = await paw(settings, capsys, "dlq", "reindex", "--json")
    assert (again.json()["added"], again.json()["restored"]) == (0, 0)
    assert [r["action"] for r in await actions(settings)] == ["reindex", "reindex"]
    assert await depth(settings) == 4  # reindex takes nothing


async def test_a_worker_whose_database_refuses_the_index_still_dead_letters(
    services: Services, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """The dead letter is on the dead queue and the original acked; the row is missing, which the
    log, the metric and `paw dlq list` say."""
    broken = await create_pool(settings.database_url, min_size=1, max_size=1)
    await broken.close()

    async def poison(rk: str, body: bytes, message_id: str | None) -> None:
        raise Poison("not what an item.drive looks like")

    consumer = Consumer(
        publisher=services.publisher,
        topo=services.topo,
        handler=poison,
        queue=services.topo.items_queue,
        retry_budget=0,
        index=broken,
    )
    channel = await services.connection.channel()
    queue = await channel.get_queue(services.topo.items_queue, ensure=False)
    before = metrics.DEAD_LETTERS_UNINDEXED._value.get()
    await services.publisher.publish("item.drive", b'{"item_id": 7}', message_id="m-broken")
    message = await _get(queue)
    with capture_logs() as logs:
        await consumer(message)
    assert message.processed and consumer.counts["dead_lettered"] == 1
    assert metrics.DEAD_LETTERS_UNINDEXED._value.get() == before + 1
    assert [x["event"] for x in logs if x["log_level"] == "error"] == ["message.dead_letter_unindexed"]
    assert await depth(settings) == 1 and await depth(settings, services.topo.items_queue) == 0
    assert (await paw(settings, capsys, "dlq", "reindex", "--json")).json()["added"] == 1
    (row,) = (await paw(settings, capsys, "dlq", "list", "--json")).json()
    assert (row["message_id"], row["error_class"]) == ("m-broken", "Poison")
    await channel.close()


async def _get(queue: aio_pika.abc.AbstractQueue) -> aio_pika.abc.AbstractIncomingMessage:
    async def one() -> aio_pika.abc.AbstractIncomingMessage | None:
        return await queue.get(no_ack=False, fail=False)

    message: aio_pika.abc.AbstractIncomingMessage = await eventually(one)
    return message


# -- replay ------------------------------------------------------------------------------------


async def actions(settings: Settings) -> list[asyncpg.Record]:
    return await fetch(settings, "SELECT * FROM dlq_actions ORDER BY id")


async def test_replay_by_id_republishes_with_the_original_routing_key_and_a_fresh_count(
    services: Services, settings: Settings, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    chosen = Letter(
        b'{"event_id": "e-1", "webhook": {"item_id": "pl-1", "webhook_type": "ITEM", "webhook_code": "ERROR"}}',
        {**dead_headers("webhook.plaid.ITEM.ERROR", replays=2), "x-death": [{"queue": "q", "count": 4}]},
        "msg-1",
    )
    others = [drive_letter(i) for i in range(3)]
    await put_dead(settings, [others[0], chosen, *others[1:]])
    ran = await paw(settings, capsys, "dlq", "replay", chosen.key[:10], "--actor", "alice")
    assert ran.code == 0 and "replayed 1 " in ran.out
    (copy,) = await queue_messages(settings.amqp_url, target)
    assert copy.routing_key == "webhook.plaid.ITEM.ERROR" and copy.exchange == settings.exchange
    assert copy.body == chosen.body and copy.message_id == "msg-1"
    headers = copy.headers
    assert headers[H_REPLAYS] == 3 and headers[H_ROUTING_KEY] == "webhook.plaid.ITEM.ERROR"
    assert headers[dlq.H_REPLAYED_BY] == "alice"
    for gone in (H_ATTEMPTS, H_FIRST_FAILURE, H_LAST_FAILURE, H_ERROR_CODE, H_ERROR_CLASS, "x-death"):
        assert gone not in headers
    # the others stay, in their order
    left = await queue_messages(settings.amqp_url, services.topo.dead_queue)
    assert [m.body for m in left] == [x.body for x in others]
    (action,) = await actions(settings)
    assert action["action"] == "replay" and action["actor"] == "alice" and not action["dry_run"]
    assert action["filters"] == {"ids": [chosen.key[:10]]} and action["message_count"] == 1
    assert action["finished_at"] is not None
    rows = await fetch(settings, "SELECT * FROM dlq_replayed")
    assert [(r["message_key"], r["routing_key"], r["action_id"]) for r in rows] == [
        (chosen.key, "webhook.plaid.ITEM.ERROR", action["id"])
    ]


async def test_replay_dry_run_changes_nothing(
    services: Services, settings: Settings, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    down = [drive_letter(i, code="INSTITUTION_DOWN") for i in range(3)]
    other = drive_letter(9, code="INVALID_FIELD")
    await put_dead(settings, [*down, other])
    await fetch(  # one of them was replayed by an earlier, killed run (recorded, never acked)
        settings, "INSERT INTO dlq_replayed (message_key, routing_key) VALUES ($1, 'item.drive')", down[2].key
    )
    ran = await paw(
        settings, capsys, "dlq", "replay", "--code", "INSTITUTION_DOWN", "--dry-run", "--actor", "bob"
    )
    assert ran.code == 0
    out = " ".join(ran.out.split())
    assert "would publish 2 and ack 1 without publishing" in out and "nothing changed" in out
    assert down[0].key[:12] in out and other.key[:12] not in out
    assert "ack only: replayed before" in out and "publish item.drive (replay #1)" in out
    assert await depth(settings, target) == 0
    left = await queue_messages(settings.amqp_url, services.topo.dead_queue)
    assert [m.body for m in left] == [x.body for x in (*down, other)]
    (action,) = await actions(settings)
    assert (
        action["dry_run"] and action["actor"] == "bob" and action["filters"] == {"code": "INSTITUTION_DOWN"}
    )


async def test_replay_by_filter_and_a_recorded_one_is_only_acked(
    services: Services, settings: Settings, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    old = drive_letter(0, last=datetime.now(UTC) - timedelta(hours=5))
    new = [drive_letter(i) for i in range(1, 4)]
    atomic = Letter(
        json.dumps(
            {"event_id": "e", "webhook": {"account_ref": str(uuid.uuid4()), "status": "VERIFIED"}}
        ).encode(),
        dead_headers("webhook.atomic.verified", code="ATOMIC_503"),
        "m-atomic",
    )
    await put_dead(settings, [old, *new, atomic])
    # new[1] was republished by a run killed between its record and its ack
    await fetch(
        settings, "INSERT INTO dlq_replayed (message_key, routing_key) VALUES ($1, 'item.drive')", new[1].key
    )
    ran = await paw(
        settings, capsys, "dlq", "replay", "--since", "1h", "--routing-key", "item.*", "--rate", "200"
    )
    assert ran.code == 0
    assert "replayed 2 " in ran.out and "1 replayed before" in ran.out
    assert sorted(m.body for m in await queue_messages(settings.amqp_url, target)) == sorted(
        [new[0].body, new[2].body]
    )
    left = await queue_messages(settings.amqp_url, services.topo.dead_queue)
    assert [m.body for m in left] == [old.body, atomic.body]
    assert {e["event"] for e in ran.logs} >= {
        "dlq.replay_started",
        "dlq.replayed",
        "dlq.already_replayed",
    }


async def test_replay_needs_a_selection_and_known_ids(
    services: Services, settings: Settings, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    letter = drive_letter()
    await put_dead(settings, [letter])
    assert (await paw(settings, capsys, "dlq", "replay")).code == 2
    with pytest.raises(DlqError, match="no such dead letter"):
        await paw(settings, capsys, "dlq", "replay", letter.key[:8], "abcdef0123")
    with pytest.raises(SystemExit):  # not an id at all
        build_parser().parse_args(["dlq", "replay", "xyz"])
    assert (await paw(settings, capsys, "dlq", "replay", "--code", "NOPE")).out.startswith(
        "nothing to replay"
    )
    assert await depth(settings) == 1 and await depth(settings, target) == 0


async def test_an_unroutable_replay_stays_on_the_dead_queue(
    services: Services, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    # no target queue: 'nothing.bound' routes nowhere, so the broker returns it (mandatory)
    lost = Letter(b'{"x": 1}', dead_headers("nothing.bound"), "m-unroutable")
    fine = drive_letter()
    await put_dead(settings, [lost, fine])
    ran = await paw(settings, capsys, "dlq", "replay", "--all", "--yes")
    assert ran.code == 1 and "1 failed" in ran.out  # item.drive routes to the items queue
    left = await queue_messages(settings.amqp_url, services.topo.dead_queue)
    assert [m.body for m in left] == [lost.body]
    assert [r["message_key"] for r in await fetch(settings, "SELECT message_key FROM dlq_replayed")] == [
        fine.key
    ]
    assert any(e["event"] == "dlq.replay_failed" for e in ran.logs)


async def test_two_replayers_of_one_dead_letter_publish_it_once(
    services: Services, settings: Settings, target: str
) -> None:
    """Engineer B holds the claim (its transaction is open, publishing); A's claim waits on it and,
    once B commits, only acks. If B had died instead (rollback), A publishes."""
    for b_commits in (True, False):
        letter = drive_letter()
        await put_dead(settings, [letter])
        b = await asyncpg.connect(settings.database_url)
        tx = b.transaction()
        await tx.start()
        await b.execute(
            "INSERT INTO dlq_replayed (message_key, routing_key) VALUES ($1, 'item.drive')", letter.key
        )
        action_id = await dead_queue.start_action(
            services.pool, "replay", actor="a", filters={}, dry_run=False
        )
        async with dead_queue.held_dead_letters(services.connection, services.topo) as (held, _):
            replaying = dead_queue.replay(
                services.pool, services.publisher, held, action_id=action_id, actor="a"
            )
            a = asyncio.create_task(replaying)

            async def a_waits() -> bool:
                rows = await services.pool.fetch(
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
                return bool(rows)

            await eventually(a_waits)
            assert not a.done()
            await (tx.commit() if b_commits else tx.rollback())
            result = await a
        await b.close()
        published = await queue_messages(settings.amqp_url, target)
        assert (result.replayed, result.already, len(published)) == ((0, 1, 0) if b_commits else (1, 0, 1))
        assert await depth(settings) == 0


async def test_two_engineers_replaying_everything_at_once(
    services: Services, settings: Settings, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    letters = [drive_letter(i) for i in range(150)]
    copies = letters[::10]  # a dead letter twice (the worker died between its DLQ confirm and its ack)
    await put_dead(settings, [*letters, *copies])
    parser = build_parser()
    runs = [parser.parse_args(["dlq", "replay", "--all", "--yes", "--actor", who]) for who in ("ann", "ben")]
    with capture_logs():
        codes = await asyncio.gather(*(args.func(settings, args) for args in runs))
    assert codes == [0, 0]
    published = [m.body for m in await queue_messages(settings.amqp_url, target)]
    assert sorted(published) == sorted(x.body for x in letters)  # each once
    assert await depth(settings) == 0
    rows = await actions(settings)
    assert sorted(r["actor"] for r in rows) == ["ann", "ben"] and sum(r["message_count"] for r in rows) == 150


# -- purge -------------------------------------------------------------------------------------


async def test_purge_asks_logs_redacted_and_records(
    services: Services,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = "public-sandbox-" + str(uuid.uuid4())
    junk = [
        Letter(
            json.dumps({"public_token": token, "client_user_id": f"u-{i}"}).encode(),
            dead_headers("item.link", code="INVALID_FIELD", message=f"bad {token}"),
            f"m-junk-{i}",
        )
        for i in range(2)
    ]
    keep = drive_letter()
    await put_dead(settings, [junk[0], keep, junk[1]])
    answers = iter(["n", "y"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    declined = await paw(settings, capsys, "dlq", "purge", "--code", "INVALID_FIELD", "--actor", "carol")
    assert declined.code == 1 and "nothing purged" in declined.out
    assert await depth(settings) == 3 and await actions(settings) == []
    ran = await paw(settings, capsys, "dlq", "purge", "--code", "INVALID_FIELD", "--actor", "carol")
    assert ran.code == 0 and "purged 2 dead letters" in ran.out
    left = await queue_messages(settings.amqp_url, services.topo.dead_queue)
    assert [m.body for m in left] == [keep.body]
    purged = [e for e in ran.logs if e["event"] == "dlq.purged"]
    assert [e["message_id"] for e in purged] == ["m-junk-0", "m-junk-1"]
    assert purged[0]["body"] == {"public_token": "[redacted]", "client_user_id": "u-0"}
    assert purged[0]["actor"] == "carol" and purged[0]["error_code"] == "INVALID_FIELD"
    assert token.split("-", 2)[2] not in json.dumps(purged, default=str)
    (action,) = await actions(settings)
    assert (action["action"], action["actor"], action["message_count"]) == ("purge", "carol", 2)
    assert action["filters"] == {"code": "INVALID_FIELD"}


async def test_purge_by_id_with_yes_and_everything_needs_all(
    services: Services, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    letters = [drive_letter(i) for i in range(3)]
    await put_dead(settings, letters)
    assert (await paw(settings, capsys, "dlq", "purge", "--yes")).code == 2
    assert (await paw(settings, capsys, "dlq", "purge", letters[1].key[:7], "--yes")).code == 0
    assert [m.body for m in await queue_messages(settings.amqp_url, services.topo.dead_queue)] == [
        letters[0].body,
        letters[2].body,
    ]


# -- the incident, end to end with a worker ------------------------------------------------------


@pytest.fixture
def sandbox_config(sandbox_config_for_receiver: SandboxConfig) -> SandboxConfig:
    return sandbox_config_for_receiver  # Atomic's webhooks reach the receiver


@pytest.fixture
async def impatient_worker(services: Services) -> AsyncIterator[RunningWorker]:
    """A worker with no retry budget: the first failure is a dead letter (keeps incidents short)."""
    svc = dataclasses.replace(services, settings=dataclasses.replace(services.settings, retry_budget=0))
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_worker(svc, stop, ready=ready, drain_timeout=10))
    await asyncio.wait_for(ready.wait(), 10)
    running = RunningWorker(stop, task)
    yield running
    if not task.done():
        await running.shutdown()


async def test_institution_down_then_list_show_and_replay_brings_the_items_through(
    services: Services,
    impatient_worker: RunningWorker,
    receiver: str,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The README's on-call walk-through: the bank is down, Items dead-letter after their exchange,
    on-call looks, waits for the bank, replays."""
    sandbox.state.set_fault(
        "/accounts/get", status=400, error_code="INSTITUTION_DOWN", error_type="ITEM_ERROR"
    )
    tokens = [await new_public_token(sandbox) for _ in range(3)]
    for i, token in enumerate(tokens):
        await submit_amqp(services, {"public_token": token, "client_user_id": f"u-down-{i}"})
    await eventually(lambda: _depth_is(settings, 3))
    for token in tokens:
        await settled(
            services, token, State.EXCHANGED
        )  # the access token is held: replay needs no public token

    # the worker indexes each dead letter before it acks the original: wait for the third ack
    await eventually(lambda: _indexed(services, 3))
    listed = (await paw(settings, capsys, "dlq", "list", "--code", "INSTITUTION_DOWN", "--json")).json()
    items = [await services.store.get_by_token_hash(token_hash(t)) for t in tokens]
    assert sorted(r["item_id"] for r in listed) == sorted(str(i.id) for i in items if i is not None)
    assert {r["routing_key"] for r in listed} == {"item.link"} and {r["attempts"] for r in listed} == {1}
    assert {r["item_state"] for r in listed} == {"exchanged"} and {r["status"] for r in listed} == {"dead"}
    shown = (await paw(settings, capsys, "dlq", "show", listed[0]["id"], "--json")).json()
    assert shown["error_code"] == "INSTITUTION_DOWN" and shown["body"]["public_token"] == "[redacted]"
    assert "Traceback" in shown["traceback"] and "INSTITUTION_DOWN" in shown["traceback"]
    assert "public-sandbox-" not in json.dumps(shown).replace("public-sandbox-[redacted]", "")

    dry = await paw(settings, capsys, "dlq", "replay", "--code", "INSTITUTION_DOWN", "--dry-run")
    assert "would publish 3" in " ".join(dry.out.split()) and await depth(settings) == 3
    sandbox.state.clear_faults()  # the bank is back
    ran = await paw(
        settings, capsys, "dlq", "replay", "--code", "INSTITUTION_DOWN", "--rate", "20", "--actor", "oncall"
    )
    assert ran.code == 0 and "replayed 3 " in ran.out
    for token in tokens:
        item = await settled(services, token, State.ATOMIC_VERIFIED)
        assert sandbox.state.atomic_funding_sources(str(item.id)) == 1
    assert await depth(settings) == 0
    assert (await paw(settings, capsys, "dlq", "list", "--json")).json() == []
    assert await dead_index.counts(services.pool) == {"replayed": 3}
    replay, dry_run = sorted(await actions(settings), key=lambda r: r["dry_run"])
    assert (replay["actor"], replay["message_count"], dry_run["dry_run"]) == ("oncall", 3, True)


async def _indexed(services: Services, n: int) -> bool:
    return (await dead_index.counts(services.pool)).get("dead", 0) == n


async def _depth_is(settings: Settings, n: int) -> bool:
    return await depth(settings) == n


async def test_item_retry_redrives_an_item_from_its_state(
    services: Services,
    impatient_worker: RunningWorker,
    receiver: str,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sandbox.state.set_fault(
        "/processor/token/create", status=500, error_code="INTERNAL_SERVER_ERROR", error_type="API_ERROR"
    )
    token = await new_public_token(sandbox)
    await submit_amqp(services, {"public_token": token, "client_user_id": "u-stuck"})
    await eventually(lambda: _depth_is(settings, 1))
    stuck = await settled(services, token, State.EXCHANGED)  # exchanged, then the processor token failed
    sandbox.state.clear_faults()

    ran = await paw(settings, capsys, "item", "retry", str(stuck.id), "--actor", "dana")
    assert ran.code == 0 and "item.drive sent" in ran.out and "exchanged" in ran.out
    done = await settled(services, token, State.ATOMIC_VERIFIED)
    causes = [h.cause for h in await services.store.history(done.id)]
    assert causes[:2] == ["item.link", "item.link"] and causes[2] == "item.drive"
    (requested,) = [e for e in ran.logs if e["event"] == "item.retry_requested"]
    assert requested["actor"] == "dana" and requested["reason"] == "paw item retry by dana"
    assert (await paw(settings, capsys, "item", "retry", str(uuid.uuid4()))).code == 1
    refused = await paw(settings, capsys, "item", "retry", "not-a-uuid")  # the line: test_item_lookup.py
    assert (refused.code, refused.out) == (2, "")


# -- a bulk replay, killed midway --------------------------------------------------------------


def cli_env(settings: Settings) -> dict[str, str]:
    """The environment `paw` reads its settings from, for this test's database and broker names."""
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "AMQP_URL": settings.amqp_url,
        "PAW_EXCHANGE": settings.exchange,
        "PAW_QUEUE_PREFIX": settings.queue_prefix,
        "PLAID_BASE_URL": settings.plaid_base_url,
        "ATOMIC_BASE_URL": settings.atomic_base_url,
        "PAW_RETRY_BASE_MS": str(settings.retry_base_ms),
        "PAW_RETRY_BUDGET": str(settings.retry_budget),
        "PAW_LOG_FORMAT": "json",
        "PAW_LOG_LEVEL": "warning",
    }


async def paw_process(settings: Settings, log_file: Path, *argv: str) -> asyncio.subprocess.Process:
    with log_file.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker.cli",
            *argv,
            env=cli_env(settings),
            cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )


async def test_bulk_replay_killed_midway_and_run_again_loses_nothing(
    services: Services, settings: Settings, target: str, tmp_path: Path
) -> None:
    letters = [drive_letter(i) for i in range(1000)]
    await put_dead(settings, letters)
    assert await depth(settings) == 1000
    log_file = tmp_path / "paw.log"

    async def recorded() -> int:
        n: int = await services.pool.fetchval("SELECT count(*) FROM dlq_replayed")
        return n

    first = await paw_process(
        settings, log_file, "dlq", "replay", "--all", "--yes", "--rate", "400", "--actor", "killed"
    )
    try:
        await eventually(lambda: _at_least(recorded, 100), timeout=30)
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    at_kill = await recorded()
    assert first.returncode == -signal.SIGKILL and 100 <= at_kill < 1000, log_file.read_text()

    second = await paw_process(settings, log_file, "dlq", "replay", "--all", "--yes", "--actor", "again")
    assert await asyncio.wait_for(second.wait(), 60) == 0, log_file.read_text()

    published = await queue_messages(settings.amqp_url, target)
    bodies = [m.body for m in published]
    assert set(bodies) == {x.body for x in letters}  # none lost
    # none twice, except at most the one message in flight when the CLI was killed: published and
    # confirmed, but its record not committed yet (see worker/bus/dlq.py)
    assert len(bodies) - 1000 in (0, 1), len(bodies)
    assert all(m.routing_key == "item.drive" and m.headers[H_REPLAYS] == 1 for m in published)
    assert await depth(settings) == 0
    assert await recorded() == 1000
    killed, again = await actions(settings)
    assert (killed["actor"], killed["finished_at"]) == ("killed", None)  # the audit shows it was cut off
    assert again["actor"] == "again" and again["finished_at"] is not None
    per_action = {
        r["action_id"]: r["n"]
        for r in await fetch(settings, "SELECT action_id, count(*) AS n FROM dlq_replayed GROUP BY action_id")
    }
    assert (
        per_action
        == {killed["id"]: at_kill, again["id"]: 1000 - at_kill}
        == {
            killed["id"]: at_kill,
            again["id"]: again["message_count"],
        }
    )


async def _at_least(count: Any, n: int) -> bool:
    return bool(await count() >= n)


async def test_purge_takes_only_what_was_confirmed(
    services: Services,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing is held while a person reads the table; a dead letter that arrives meanwhile and
    matches the same filter is not purged with the others."""
    shown = [drive_letter(i, code="INVALID_FIELD") for i in range(2)]
    await put_dead(settings, shown)
    late = drive_letter(9, code="INVALID_FIELD")

    async def confirm_while_another_arrives(prompt: str) -> bool:
        assert await depth(settings) == 2  # the first pass gave everything back before asking
        await put_dead(settings, [late])
        return True

    monkeypatch.setattr("worker.cli.dlq.confirm", confirm_while_another_arrives)
    ran = await paw(settings, capsys, "dlq", "purge", "--code", "INVALID_FIELD")
    assert ran.code == 0 and "purged 2 dead letters" in ran.out
    assert [m.body for m in await queue_messages(settings.amqp_url, services.topo.dead_queue)] == [late.body]


async def test_a_replay_that_loses_its_channel_after_the_record_stops_and_reruns_cleanly(
    services: Services, settings: Settings, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The broker takes the dead queue's channel (consumer_timeout, a restart) between the record
    and the ack: the run stops with a clear error, the message is back on the dead queue, and the
    next run only acks it."""
    letters = [drive_letter(i) for i in range(3)]
    await put_dead(settings, letters)
    action_id = await dead_queue.start_action(services.pool, "replay", actor="t", filters={}, dry_run=False)
    result = dead_queue.ReplayResult()
    with pytest.raises(DlqError, match="run the same command again"):
        async with dead_queue.held_dead_letters(services.connection, services.topo) as (held, _):
            await held[0].message.channel.close()
            await dead_queue.replay(
                services.pool, services.publisher, held, action_id=action_id, actor="t", result=result
            )
    assert result.replayed == 0 and await depth(settings) == 3  # nothing lost
    assert await depth(settings, target) == 1  # the first one was published and recorded
    ran = await paw(settings, capsys, "dlq", "replay", "--all", "--yes")
    assert ran.code == 0 and "replayed 2 " in ran.out and "1 replayed before" in ran.out
    assert sorted(m.body for m in await queue_messages(settings.amqp_url, target)) == sorted(
        x.body for x in letters
    )
    assert await depth(settings) == 0


async def test_replay_all_asks_first_and_both_actions_answer_json(
    services: Services, settings: Settings
) -> None:
    await put_dead(settings, [drive_letter(1), drive_letter(2)])
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.cli",
        "dlq",
        "replay",
        "--all",
        env=paw_env(settings),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(b"n\n"), 60)
    assert proc.returncode == 1 and out.decode() == "nothing replayed\n"
    assert f"Replay every dead letter (2 on {services.topo.dead_queue})? [y/N]" in err.decode()
    assert await depth(settings) == 2

    code, out, err = await run_paw(settings, "dlq", "replay", "--all", "--yes", "--json")
    assert code == 0, err.decode()
    replayed = json.loads(out)  # stdout is the result alone; people's lines went to stderr
    assert {k: replayed[k] for k in ("selected", "replayed", "already", "failed")} == {
        "selected": 2,
        "replayed": 2,
        "already": 0,
        "failed": 0,
    }
    assert "replayed 2 to" in err.decode() and await depth(settings) == 0

    await put_dead(settings, [drive_letter(3)])
    code, out, err = await run_paw(settings, "dlq", "purge", "--all", "--yes", "--json")
    assert code == 0, err.decode()
    purged = json.loads(out)
    assert (purged["selected"], purged["purged"]) == (1, 1) and isinstance(purged["action_id"], int)


async def test_a_dead_queue_declared_with_a_limit_already_is_kept_with_a_warning(services: Services) -> None:
    """On RabbitMQ 4+ paw declares the dead queue with no delivery limit; one an older paw declared
    keeps its arguments (the broker refuses to change them): paw carries on and names the policy."""
    channel = await services.connection.channel()
    underlay = await channel.get_underlay_channel()
    assert topology.version_of(underlay).startswith("3.")  # what this machine runs
    with capture_logs() as logs:
        kept = await topology.declare_dead_queue(channel, services.topo, version="4.1.0")
    assert kept is False
    (warning,) = [x for x in logs if x["event"] == "broker.dead_queue_has_a_delivery_limit"]
    assert "inequivalent arg 'x-delivery-limit'" in warning["error"]
    assert "rabbitmqctl set_policy paw-dead" in warning["detail"] and "delivery-limit" in warning["detail"]
    assert not channel.is_closed  # the refusal closed only the trial channel
    assert await topology.declare_dead_queue(channel, services.topo) is True  # 3.x: as declared
    await channel.close()
