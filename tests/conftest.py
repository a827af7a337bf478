"""Test fixtures on the real Postgres and RabbitMQ.

Isolation: one migrated template database per session, a fresh database copied from it per test,
and exchange/queue names unique to the test (deleted afterwards). Where Postgres or RabbitMQ don't
answer on their URLs and a Docker engine is available, testcontainers starts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# Strip the project's own settings so a developer's shell cannot leak into the tests.
for _var in list(os.environ):
    if _var.startswith(("PAW_", "PLAID_", "ATOMIC_")) or _var in ("DATABASE_URL", "AMQP_URL"):
        os.environ.pop(_var)

import aio_pika
import asyncpg
import pytest

from sandbox.app import SANDBOX, SandboxConfig, serve
from sandbox.state import SandboxState
from webhooks.server import start_receiver
from worker.bus import undeclare
from worker.migrate import migrate
from worker.runner import run_worker
from worker.services import Services, open_services
from worker.settings import Settings, load

RUN = uuid.uuid4().hex[:8]
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"


def _answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def service_urls() -> Iterator[tuple[str, str]]:
    """(postgres admin DSN, AMQP URL): the local services, else testcontainers."""
    pg = os.environ.get("PAW_TEST_DATABASE_URL", DEFAULT_PG)
    amqp = os.environ.get("PAW_TEST_AMQP_URL", DEFAULT_AMQP)
    containers: list[Any] = []
    if not _answers(pg, 5432) or not _answers(amqp, 5672):
        from testcontainers.postgres import PostgresContainer
        from testcontainers.rabbitmq import RabbitMqContainer

        if not _answers(pg, 5432):
            pgc = PostgresContainer("postgres:15-alpine", driver=None).start()
            containers.append(pgc)
            pg = pgc.get_connection_url()
        if not _answers(amqp, 5672):
            mq = RabbitMqContainer("rabbitmq:3.10-management-alpine").start()
            containers.append(mq)
            amqp = f"amqp://guest:guest@{mq.get_container_host_ip()}:{mq.get_exposed_port(5672)}/"
    yield pg, amqp
    for c in containers:
        c.stop()


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Runs a coroutine on a private loop, leaving the global event loop (pytest-asyncio's) alone."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(coro)
    finally:
        loop.close()


def _with_db(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def template_db(service_urls: tuple[str, str]) -> Iterator[str]:
    admin_dsn, _ = service_urls
    name = f"paw_tmpl_{RUN}"

    async def create() -> None:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(_with_db(admin_dsn, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    _run(create())
    yield name
    _run(_drop(admin_dsn, name))


async def _drop(admin_dsn: str, name: str) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def database_url(
    service_urls: tuple[str, str], template_db: str, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    admin_dsn, _ = service_urls
    name = f"paw_test_{RUN}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    finally:
        await admin.close()
    yield _with_db(admin_dsn, name)
    await _drop(admin_dsn, name)


@pytest.fixture
def sandbox_config() -> SandboxConfig:
    return SandboxConfig()


@dataclasses.dataclass
class Sandbox:
    url: str
    state: SandboxState
    config: SandboxConfig


@pytest.fixture
async def sandbox(sandbox_config: SandboxConfig) -> AsyncIterator[Sandbox]:
    runner, url = await serve(sandbox_config, "127.0.0.1", 0)
    try:
        yield Sandbox(url, runner.app[SANDBOX], sandbox_config)
    finally:
        await runner.cleanup()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def receiver_port() -> int:
    return free_port()


@pytest.fixture
def sandbox_config_for_receiver(receiver_port: int) -> SandboxConfig:
    return SandboxConfig(atomic_webhook_url=f"http://127.0.0.1:{receiver_port}/webhooks/atomic")


@pytest.fixture
def settings(
    service_urls: tuple[str, str], database_url: str, sandbox: Sandbox, request: pytest.FixtureRequest
) -> Settings:
    _, amqp = service_urls
    prefix = f"paw-test-{RUN}-{uuid.uuid4().hex[:6]}"
    return load(
        {},
        database_url=database_url,
        amqp_url=amqp,
        plaid_base_url=sandbox.url,
        atomic_base_url=f"{sandbox.url}/atomic",
        exchange=f"{prefix}.events",
        queue_prefix=prefix,
        retry_base_ms=50,
        retry_budget=4,
        plaid_threads=16,
        publish_timeout=3.0,
        atomic_pending_reconcile_s=1,
    )


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


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    async with services_for(settings, "paw-test") as svc:
        yield svc


@dataclasses.dataclass
class RunningWorker:
    stop: asyncio.Event
    task: asyncio.Task[dict[str, int]]

    async def shutdown(self) -> dict[str, int]:
        self.stop.set()
        return await self.task


@pytest.fixture
async def worker(services: Services) -> AsyncIterator[RunningWorker]:
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_worker(services, stop, ready=ready, drain_timeout=10))
    await asyncio.wait_for(ready.wait(), 10)
    running = RunningWorker(stop, task)
    yield running
    if not task.done():
        await running.shutdown()


@pytest.fixture
async def receiver(services: Services, receiver_port: int) -> AsyncIterator[str]:
    runner, url = await start_receiver(services, "127.0.0.1", receiver_port)
    try:
        yield url
    finally:
        await runner.cleanup()


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


import shutil


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
            if not await asyncio.to_thread(_answers, self.amqp_url, 5672):
                return False
            try:
                conn = await aio_pika.connect(self.amqp_url, timeout=5)
            except Exception:
                return False
            await conn.close()
            return True

        await eventually(amqp_answers, timeout=60, interval=0.2)
        self.stopped = False


@pytest.fixture
async def broker(service_urls: tuple[str, str]) -> AsyncIterator[BrokerControl]:
    """Control over the local broker; whatever the test does, the broker runs again afterwards."""
    _, amqp = service_urls
    host = urlsplit(amqp).hostname
    if shutil.which("rabbitmqctl") is None or host not in ("127.0.0.1", "localhost", "::1"):
        pytest.skip("needs a local RabbitMQ controlled with rabbitmqctl")
    control = BrokerControl(amqp)
    try:
        yield control
    finally:
        await control.start()  # idempotent: start_app on a running broker is a no-op


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
    import sys

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
