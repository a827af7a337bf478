"""Nothing leaked: after a whole demo run no table, log line or dead letter holds a token in clear,
and the log redaction catches tokens however they arrive (fields, messages, exceptions)."""

from __future__ import annotations

import re

import aio_pika

from tests.helpers import all_cells, paw_env, queue_messages, run_paw, take_demo_log
from worker.bus.topology import Topology, undeclare
from worker.cli.demo import database_name, demo_database_url, shown_url
from worker.settings import Settings

TOKEN = re.compile(rb"(access|public|processor)-(sandbox|production|development)-[0-9a-f]{8}")


async def test_a_whole_demo_leaves_no_token_in_tables_logs_or_dead_letters(settings: Settings) -> None:
    env = {"PAW_LOG_LEVEL": "debug", "PAW_LOG_FORMAT": "json", "PLAID_BASE_URL": "http://unused:1"}
    assert paw_env(settings, **env)["PAW_LOG_FORMAT"] == "json"
    code, out, err = await run_paw(settings, "demo", "--keep", timeout=120, **env)
    demo_url = demo_database_url(settings.database_url)
    prefix = re.search(rb"queues (paw-demo-[0-9a-f]+)\.\*", out)
    try:
        assert code == 0, (out + err).decode()[-2000:]
        assert b"every Item ended where expected" in out
        # --keep: the demo kept its database, and says how to look at it
        assert f"try: DATABASE_URL={shown_url(demo_url)} paw item show ".encode() in out
        logs = take_demo_log(out)
        assert len(logs.splitlines()) >= 10  # the logs really were captured
        for line in (out + err + logs).splitlines():
            assert not TOKEN.search(line), f"token in output: {line[:200]!r}"
        # every table of the database the demo used, and of the configured one it must not touch
        cells = await all_cells(demo_url)
        assert any(table == "items" for table, _, _ in cells)
        cells += await all_cells(settings.database_url)
        for table, column, value in cells:
            raw = value if isinstance(value, bytes) else str(value).encode()
            assert not TOKEN.search(raw), f"{table}.{column} holds a token"
        # the demo kept its queues: read every dead letter it left (the invalid public token is not
        # one: a permanent Plaid error is a state, not a dead letter) and scan them too
        assert prefix
        for message in await queue_messages(settings.amqp_url, f"{prefix[1].decode()}.dead"):
            assert not TOKEN.search(message.body) and not TOKEN.search(str(message.headers).encode())
    finally:
        await drop_what_the_demo_kept(settings, demo_url, prefix[1].decode() if prefix else None)


async def drop_what_the_demo_kept(settings: Settings, demo_url: str, prefix: str | None) -> None:
    import asyncpg

    admin = await asyncpg.connect(settings.database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database_name(demo_url)}" WITH (FORCE)')
    finally:
        await admin.close()
    if prefix is not None:
        topo = Topology(f"{prefix}.events", prefix, settings.retry_delays_ms)
        connection = await aio_pika.connect(settings.amqp_url)
        try:
            await undeclare(await connection.channel(), topo)
        finally:
            await connection.close()
