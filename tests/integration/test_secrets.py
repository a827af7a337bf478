"""Nothing leaked: after a whole demo run no table, log line or dead letter holds a token in clear,
and the log redaction catches tokens however they arrive (fields, messages, exceptions)."""

from __future__ import annotations

import asyncio
import json
import re
import sys

from tests.helpers import all_cells, paw_env, queue_messages
from worker.settings import Settings

TOKEN = re.compile(rb"(access|public|processor)-(sandbox|production|development)-[0-9a-f]{8}")


async def test_a_whole_demo_leaves_no_token_in_tables_logs_or_dead_letters(settings: Settings) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.cli",
        "demo",
        "--keep",
        env=paw_env(settings, PAW_LOG_LEVEL="debug", PAW_LOG_FORMAT="json", PLAID_BASE_URL="http://unused:1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"every Item ended where expected" in out
    assert len(err.splitlines()) >= 10  # the logs really were captured
    for line in (out + err).splitlines():
        assert not TOKEN.search(line), f"token in output: {line[:200]!r}"
    cells = await all_cells(settings.database_url)
    assert any(table == "items" for table, _, _ in cells)
    for table, column, value in cells:
        raw = value if isinstance(value, bytes) else str(value).encode()
        assert not TOKEN.search(raw), f"{table}.{column} holds a token"
    # the demo kept its queues: read every dead letter it left (the invalid public token is not one:
    # a permanent Plaid error is a state, not a dead letter) and scan them too
    demo_prefix = next(
        json.loads(line)["queues"][0].rsplit(".", 1)[0]
        for line in err.splitlines()
        if line.startswith(b"{") and b"worker.started" in line
    )
    for message in await queue_messages(settings.amqp_url, f"{demo_prefix}.dead"):
        assert not TOKEN.search(message.body) and not TOKEN.search(str(message.headers).encode())
