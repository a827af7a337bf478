"""Nothing leaked: after a whole demo run no table, log line or dead letter holds a token in clear,
and the log redaction catches tokens however they arrive (fields, messages, exceptions). The log
stream is one stream: every stderr line is JSON (paw's lines and the libraries' alike), with no
secret in it, even when the receiver is sent malformed requests that quote credentials."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import signal
import sys
import time
import uuid

import aio_pika

from sandbox.config import SandboxConfig
from tests.helpers import all_cells, free_port, paw_env, queue_messages, run_paw, take_demo_log
from worker.bus.topology import Topology, undeclare
from worker.cli.demo import database_name, demo_database_url, shown_url
from worker.settings import DEV_API_KEYS, DEV_TOKEN_KEYS, Settings

TOKEN = re.compile(rb"(access|public|processor)-(sandbox|production|development)-[0-9a-f]{8}")
# The emulator's credentials (paw's defaults too), paw's default API key and token key.
SECRETS = (
    *(
        v.encode()
        for v in (
            SandboxConfig.client_id,
            SandboxConfig.secret,
            SandboxConfig.atomic_api_key,
            SandboxConfig.atomic_webhook_secret,
            DEV_API_KEYS,
            DEV_TOKEN_KEYS.partition(":")[2],
        )
    ),
    b"Bearer ",  # the value of any Authorization header
)


def json_lines(stderr: bytes, service: str) -> list[dict[str, object]]:
    """Every non-empty line of ``stderr`` as JSON with paw's fields, none with a secret in it."""
    events = []
    for line in filter(None, stderr.splitlines()):
        event = json.loads(line)  # one line, one JSON object: no plain line, no traceback line
        assert isinstance(event, dict), line[:200]
        assert {"event", "level", "severity", "service", "version", "timestamp"} <= event.keys(), line[:200]
        assert event["severity"] == str(event["level"]).upper() and event["service"] == service
        assert not TOKEN.search(line), f"token in a log line: {line[:200]!r}"
        for secret in SECRETS:
            assert secret not in line, f"{secret!r} in a log line: {line[:200]!r}"
        events.append(event)
    return events


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
        events = json_lines(logs, "demo")  # every line of the demo's log is JSON, none with a secret
        assert len(events) >= 10  # the logs really were captured
        started = next(e for e in events if e["event"] == "worker.started")
        config = started["config"]
        assert isinstance(config, dict) and config["plaid_env"] == "sandbox"
        assert "PLAID_SECRET" in config["secrets_default"]
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


GARBAGE_METHODS = (b"NOT A REQUEST", b"G\x00T", b"\x16\x03")


def malformed_requests(secret: str) -> list[bytes]:
    """What the internet sends an HTTP port: broken request lines, headers beyond the limits,
    credentials in the bytes aiohttp quotes back in its error messages."""
    bearer = f"Authorization: Bearer {secret}"
    return [
        b"NOT A REQUEST LINE\r\n\r\n",
        b"G\x00T / HTTP/1.1\r\nHost: x\r\n\r\n",  # invalid method
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
        + secret.encode()
        + b"\r\n\r\n",  # TLS on the HTTP port
        f"GET /v1/items?api_key={secret} HTTP/9.9\r\nHost: x\r\n\r\n".encode(),  # bad version
        f"GET /{'a' * 9000}?k={secret} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),  # request line > 8 KiB
        f"POST /v1/items HTTP/1.1\r\nHost: x\r\n{bearer}{'x' * 9000}\r\n\r\n".encode(),  # header > 8 KiB
        f"POST /v1/items HTTP/1.1\r\nHost: x\r\n{bearer}\x01\r\n\r\n".encode(),  # invalid value character
        f"POST /v1/items HTTP/1.1\r\nHost: x\r\nAuthorization Bearer {secret}\r\n\r\n".encode(),  # no colon
        f"POST /v1/items HTTP/1.1\r\nHost: x\r\n{'Y' * 9000}: {secret}\r\n\r\n".encode(),  # name > 8 KiB
        f"POST /v1/items HTTP/1.1\r\nHost: x\r\n{bearer}\r\nContent-Length: -{secret}\r\n\r\n".encode(),
        f"POST /v1/items HTTP/1.1\r\nHost: x\r\n{bearer}\r\nTransfer-Encoding: chunked\r\n\r\nzz{secret}\r\n\r\n".encode(),
        (
            f"GET /healthz HTTP/1.1\r\nConnection: close\r\n{bearer}\r\n" + "X-H: 1\r\n" * 110 + "\r\n"
        ).encode(),
    ]


async def send(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)  # the receiver answers and closes
    except ConnectionError:
        return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_a_receiver_sent_1000_malformed_requests_logs_only_json_lines_without_secrets(
    settings: Settings,
) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "worker.cli", "receiver", "--port", str(port), "--admin-port", str(free_port())),
        env=paw_env(settings, PAW_LOG_LEVEL="debug", PAW_LOG_FORMAT="json"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    stderr: list[bytes] = []
    started = asyncio.Event()

    async def read_stderr() -> None:  # all along: a full pipe would block the receiver
        assert proc.stderr is not None
        async for line in proc.stderr:
            stderr.append(line)
            if b'"receiver.started"' in line:
                started.set()

    reading = asyncio.create_task(read_stderr())
    secret = f"sk-live-{uuid.uuid4().hex}"
    try:
        await asyncio.wait_for(started.wait(), 20)
        began = time.monotonic()
        gate = asyncio.Semaphore(32)

        async def one(raw: bytes) -> bytes:
            async with gate:
                return await send(port, raw)

        requests = list(itertools.islice(itertools.cycle(malformed_requests(secret)), 1000))
        answers = await asyncio.gather(*(one(raw) for raw in requests))
        took = time.monotonic() - began
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)
        await asyncio.wait_for(reading, 10)
    assert proc.returncode == 0
    assert sum(a.startswith(b"HTTP/1.0 400 Bad Request") for a in answers) >= 900, took
    events = json_lines(b"".join(stderr), "receiver")
    assert not any(secret[8:24] in json.dumps(e) for e in events)
    rejected = [e for e in events if e["event"] == "http.rejected"]
    # one line per malformed request, but for garbage in place of a method: aiohttp logs that at DEBUG
    # (port scanners, TLS on the HTTP port), below the libraries' floor
    assert len(rejected) == sum(not raw.startswith(GARBAGE_METHODS) for raw in requests)
    assert all(e["status"] == 400 and e["level"] == "warning" and "exception" not in e for e in rejected)
    assert {"line_too_long", "bad_status_line", "bad_http_message"} <= {e["reason"] for e in rejected}
    assert not [e for e in events if e["level"] in ("error", "critical")]
    assert next(e for e in events if e["event"] == "receiver.started")["config"]
    assert events[-1]["event"] == "receiver.stopped"
