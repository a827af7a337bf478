"""Plain helpers the tests share (fixtures live in conftest.py): polling with a deadline, reading
queues, running ``paw`` as a subprocess, driving the sandbox, submitting Items."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import os
import random
import re
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiohttp
import asyncpg
import plaid
from plaid.api import plaid_api

from sandbox import webhook_bodies
from sandbox.app import SandboxConfig
from sandbox.state import SandboxState
from webhooks.app import Receiver
from worker.bus.dlq import DeadLetter
from worker.bus.topology import undeclare
from worker.cli.demo import sandbox_public_token
from worker.items.model import Item, token_hash
from worker.items.states import State
from worker.messages import (
    H_ATTEMPTS,
    H_ERROR_CLASS,
    H_ERROR_CODE,
    H_ERROR_MESSAGE,
    H_FIRST_FAILURE,
    H_LAST_FAILURE,
    H_QUEUE,
    H_REPLAYS,
    H_REQUEST_ID,
    H_ROUTING_KEY,
)
from worker.services import Services, open_services
from worker.settings import Settings

# The repository, wherever a test file sits under tests/.
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"


def service_answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2):
            return True
    except OSError:
        return False


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def create_database(admin_dsn: str, name: str, *, template: str | None = None) -> str:
    """A new database (a copy of ``template`` if given); returns its DSN."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    finally:
        await admin.close()
    return with_database(admin_dsn, name)


async def drop_database(admin_dsn: str, name: str) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@dataclasses.dataclass
class Sandbox:
    url: str
    state: SandboxState
    config: SandboxConfig


_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    """Where the kernel's ephemeral port range starts."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A port nothing listens on, for a server a test starts later. Chosen below the kernel's
    ephemeral range: a port the kernel hands out (bind to 0) can be given to any outgoing
    connection (Postgres, RabbitMQ, HTTP) before the server binds it, which failed a test's setup
    once with "address already in use"."""
    low = _ephemeral_low()
    start = 20000 if low > 21000 else 1024
    for _ in range(100):
        port = random.randrange(start, low)
        if port in _HANDED_OUT:  # not yet bound by the test it was given to
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port found in {start}-{low - 1}")


@contextlib.asynccontextmanager
async def services_for(settings: Settings, name: str) -> AsyncIterator[Services]:
    """Services for a test; the test's queues and exchange are deleted afterwards."""
    async with open_services(settings, name) as svc:
        try:
            yield svc
        finally:
            channel = await svc.connection.channel()
            await undeclare(channel, svc.topo)
            await channel.close()


@dataclasses.dataclass
class RunningWorker:
    stop: asyncio.Event
    task: asyncio.Task[dict[str, int]]

    async def shutdown(self) -> dict[str, int]:
        self.stop.set()
        return await self.task


async def eventually(
    check: Callable[[], Awaitable[Any]], *, timeout: float = 15.0, interval: float = 0.02
) -> Any:
    """Polls ``check`` until it returns something truthy, or fails the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)


async def queue_messages(amqp_url: str, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Takes every message currently on ``queue`` (acking them)."""
    conn = await aio_pika.connect(amqp_url)
    try:
        channel = await conn.channel()
        q = await channel.get_queue(queue, ensure=False)
        out = []
        while True:
            msg = await q.get(fail=False, no_ack=True)
            if msg is None:
                return out
            out.append(msg)
    finally:
        await conn.close()


@dataclasses.dataclass
class BrokerControl:
    """Stops and starts the local RabbitMQ application (``rabbitmqctl stop_app``/``start_app``)."""

    amqp_url: str
    stopped: bool = False

    async def _ctl(self, *args: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            "rabbitmqctl", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        if proc.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {out.decode(errors='replace')[-500:]}")

    async def stop(self) -> None:
        self.stopped = True
        await self._ctl("stop_app")

    async def start(self) -> None:
        """Starts the broker and returns once it accepts AMQP connections again."""
        await self._ctl("start_app")
        await self._ctl("await_startup")

        async def amqp_answers() -> bool:
            if not await asyncio.to_thread(service_answers, self.amqp_url, 5672):
                return False
            try:
                conn = await aio_pika.connect(self.amqp_url, timeout=5)
            except Exception:
                return False
            await conn.close()
            return True

        await eventually(amqp_answers, timeout=60, interval=0.2)
        self.stopped = False


def paw_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a ``paw`` subprocess needs to work on this test's database, broker names and
    sandbox."""
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "AMQP_URL": settings.amqp_url,
        "PLAID_BASE_URL": settings.plaid_base_url,
        "ATOMIC_BASE_URL": settings.atomic_base_url,
        "PAW_EXCHANGE": settings.exchange,
        "PAW_QUEUE_PREFIX": settings.queue_prefix,
        "PAW_RETRY_BASE_MS": str(settings.retry_base_ms),
        "PAW_RETRY_BUDGET": str(settings.retry_budget),
        "PAW_LOG_FORMAT": "json",
        **extra,
    }


async def run_paw(
    settings: Settings, *args: str, timeout: float = 60, **env: str
) -> tuple[int, bytes, bytes]:
    """Runs ``paw <args>`` to completion; returns (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.cli",
        *args,
        env=paw_env(settings, **env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out, err


def take_demo_log(out: bytes) -> bytes:
    """The log file that ``paw demo`` names on its ``logs:`` line: its contents; the file is removed."""
    (path,) = re.findall(rb"^logs: (.+)$", out, re.M)
    log = Path(path.decode())
    try:
        return log.read_bytes()
    finally:
        log.unlink()


TOKEN_PATTERNS = (b"access-sandbox-", b"processor-sandbox-", b"public-sandbox-")


def plaid_api_for(sandbox: Sandbox) -> plaid_api.PlaidApi:
    config = plaid.Configuration(
        host=sandbox.url,
        api_key={
            "clientId": sandbox.config.client_id,
            "secret": sandbox.config.secret,
            "plaidVersion": "2020-09-14",
        },
    )
    return plaid_api.PlaidApi(plaid.ApiClient(config))


async def new_public_token(
    sandbox: Sandbox, username: str = "user_good", webhook: str = "http://127.0.0.1:9/x"
) -> str:
    return await asyncio.to_thread(sandbox_public_token, plaid_api_for(sandbox), username, webhook)


async def submit_http(
    url: str, settings: Settings, body: Any, *, raw: bytes | None = None, auth: bool = True
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {settings.api_keys[0]}"} if auth else {}
    async with aiohttp.ClientSession() as http:
        data = raw if raw is not None else json.dumps(body).encode()
        async with http.post(f"{url}/v1/items", data=data, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)


async def submit_amqp(services: Services, body: dict[str, Any] | bytes) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    await services.publisher.publish("item.link", raw, message_id=str(uuid.uuid4()))


async def settled(services: Services, public_token: str, *states: State) -> Item:
    async def check() -> Item | None:
        item = await services.store.get_by_token_hash(token_hash(public_token))
        return item if item is not None and item.state in states else None

    result: Item = await eventually(check)
    return result


async def all_cells(database_url: str) -> list[tuple[str, str, Any]]:
    conn = await asyncpg.connect(database_url)
    try:
        tables = [
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        ]
        cells = []
        for t in tables:
            for row in await conn.fetch(f'SELECT * FROM "{t}"'):
                cells += [(t, k, v) for k, v in row.items()]
        return cells
    finally:
        await conn.close()


def access_token_of(sandbox: Sandbox, plaid_item_id: str) -> str:
    return sandbox.state.plaid.access_token_for(plaid_item_id)


def dead_headers(
    routing_key: str,
    *,
    code: str = "INSTITUTION_DOWN",
    error_class: str = "UpstreamError",
    message: str = "the institution is down",
    attempts: int = 5,
    replays: int | None = None,
    last: datetime | None = None,
    queue: str = "paw.items",
) -> dict[str, Any]:
    """Headers as the consumer writes them on a dead letter."""
    last = last or datetime.now(UTC)
    headers: dict[str, Any] = {
        H_ROUTING_KEY: routing_key,
        H_ATTEMPTS: attempts,
        H_FIRST_FAILURE: (last - timedelta(seconds=340)).isoformat(),
        H_LAST_FAILURE: last.isoformat(),
        H_ERROR_CLASS: error_class,
        H_ERROR_MESSAGE: message,
        H_QUEUE: queue,
    }
    if error_class == "UpstreamError":
        headers[H_ERROR_CODE] = code
        headers[H_REQUEST_ID] = f"req-{uuid.uuid4().hex[:8]}"
    if replays is not None:
        headers[H_REPLAYS] = replays
    return headers


@dataclasses.dataclass
class Letter:
    body: bytes
    headers: dict[str, Any]
    message_id: str  # aiormq gives every publish one anyway

    @property
    def key(self) -> str:
        return DeadLetter.parse(self.body, self.headers, self.message_id).key


def drive_letter(i: int = 0, **kw: Any) -> Letter:
    body = json.dumps({"item_id": str(uuid.uuid4()), "reason": f"test {i}"}).encode()
    return Letter(body, dead_headers("item.drive", **kw), str(uuid.uuid4()))


def plaid_hook(wtype: str, code: str, **fields: Any) -> dict[str, Any]:
    return {"webhook_type": wtype, "webhook_code": code, "item_id": "pi", "environment": "sandbox", **fields}


LOGIN_ERROR = plaid_hook(
    "ITEM", "ERROR", error={"error_code": "ITEM_LOGIN_REQUIRED", "error_type": "ITEM_ERROR"}
)


HEADER = "Plaid-Verification"


@dataclasses.dataclass
class Rx:
    url: str
    receiver: Receiver
    http: aiohttp.ClientSession

    async def post(self, body: bytes, token: str | None, *, chunked: bool = False) -> tuple[int, Any, float]:
        """(status, JSON answer, seconds taken)."""
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers[HEADER] = token
        data: Any = io.BytesIO(body) if len(body) > 64 * 1024 else body  # aiohttp warns on big bytes
        if chunked:

            async def chunks() -> AsyncIterator[bytes]:
                for start in range(0, len(body), 64 * 1024):
                    yield body[start : start + 64 * 1024]

            data = chunks()
        started = time.monotonic()
        async with self.http.post(f"{self.url}/webhooks/plaid", data=data, headers=headers) as resp:
            answer = await resp.json(content_type=None)
            return resp.status, answer, time.monotonic() - started

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(f"{self.url}{path}") as resp:
            return resp.status, await resp.json(content_type=None)


def item_error_body(item_id: str | None = None) -> bytes:
    """An ITEM ERROR webhook, as Plaid sends it (2-space indented JSON)."""
    return webhook_bodies.encode(webhook_bodies.item_error(item_id or f"item-{uuid.uuid4().hex}"))


async def take_envelopes(
    settings: Settings, services: Services
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    return await queue_messages(settings.amqp_url, services.topo.webhooks_queue)


async def call(fn: Callable[..., Any], *args: Any) -> Any:
    """plaid-python is synchronous: run it off the event loop that serves the sandbox."""
    return await asyncio.to_thread(fn, *args)


async def stored_item(
    services: Services,
    client_user_id: str = "u-1",
    *,
    public_token: str | None = None,
    request_id: str | None = None,
    owner: str | None = None,
) -> Item:
    """An Item made in the store as `item.link` would make it (in `link`, with its history row and
    first outcome event), without driving it."""
    item, _ = await services.store.create_item(
        public_token_sha256=token_hash(public_token or f"public-sandbox-{uuid.uuid4()}"),
        client_user_id=client_user_id,
        requested_account_id=None,
        request_id=request_id,
        cause="test",
        event_id=None,
        api_key_fingerprint=owner,
    )
    return item


async def verified_item(
    services: Services, sandbox: Sandbox, receiver: str, username: str = "user_good"
) -> Item:
    token = await new_public_token(sandbox, username, webhook=f"{receiver}/webhooks/plaid")
    await submit_amqp(services, {"public_token": token, "client_user_id": f"u-{uuid.uuid4().hex[:6]}"})
    want = (
        State.AWAITING_VERIFICATION if username == "user_automated_microdeposits" else State.ATOMIC_VERIFIED
    )
    return await settled(services, token, want)


async def state_of(services: Services, item: Item, *states: State) -> Item:
    async def check() -> Item | None:
        got = await services.store.get(item.id)
        return got if got is not None and got.state in states else None

    result: Item = await eventually(check)
    return result


async def post_signed(
    receiver: str, sandbox: Sandbox, body: dict[str, Any], *, iat: int | None = None
) -> int:
    raw = json.dumps(body, indent=2).encode()
    headers = {"Plaid-Verification": sandbox.state.sign(raw, iat=iat), "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{receiver}/webhooks/plaid", data=raw, headers=headers) as r,
    ):
        return r.status
