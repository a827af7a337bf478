"""Test fixtures on the real Postgres and RabbitMQ.

Isolation: one migrated template database per session, a fresh database copied from it per test,
and exchange/queue names unique to the test (deleted afterwards). Where Postgres or RabbitMQ don't
answer on their URLs and a Docker engine is available, testcontainers starts them.
"""

from __future__ import annotations

import asyncio
import os
import uuid
import warnings
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any
from urllib.parse import urlsplit

from tests.helpers import create_database

# Strip the project's own settings so a developer's shell cannot leak into the tests.
for _var in list(os.environ):
    if _var.startswith(("PAW_", "PLAID_", "ATOMIC_")) or _var in ("DATABASE_URL", "AMQP_URL"):
        os.environ.pop(_var)
# Every `paw worker|receiver` a test starts is one process (the default is one per core, under a
# supervisor): a test that kills "the worker" kills the process doing the work. The supervisor's own
# tests ask for --processes explicitly.
os.environ["PAW_PROCESSES"] = "1"

import shutil

import aio_pika
import aiohttp
import asyncpg
import pytest

from sandbox.app import SANDBOX, SandboxConfig, serve
from tests.helpers import (
    DEFAULT_AMQP,
    DEFAULT_PG,
    BrokerControl,
    RunningWorker,
    Rx,
    Sandbox,
    drop_database,
    free_port,
    service_answers,
    services_for,
)
from webhooks.app import RECEIVER
from webhooks.server import start_receiver
from worker.migrate import migrate
from worker.runner import run_worker
from worker.services import Services
from worker.settings import Settings, load

RUN = uuid.uuid4().hex[:8]


def _containers() -> tuple[Any, Any]:
    """testcontainers' Postgres and RabbitMQ containers, wherever this version keeps them (4.14+
    moved them to ``testcontainers.community`` and warns on the old path; its own modules warn about
    its own decorators at import: neither is this project's to fix, and pytest makes warnings errors)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from testcontainers.community.postgres import PostgresContainer
            from testcontainers.community.rabbitmq import RabbitMqContainer
        except ImportError:
            from testcontainers.postgres import PostgresContainer
            from testcontainers.rabbitmq import RabbitMqContainer
    return PostgresContainer, RabbitMqContainer


@pytest.fixture(scope="session")
def service_urls() -> Iterator[tuple[str, str]]:
    """(postgres admin DSN, AMQP URL): the local services, else testcontainers."""
    pg = os.environ.get("PAW_TEST_DATABASE_URL", DEFAULT_PG)
    amqp = os.environ.get("PAW_TEST_AMQP_URL", DEFAULT_AMQP)
    containers: list[Any] = []
    if not service_answers(pg, 5432) or not service_answers(amqp, 5672):
        PostgresContainer, RabbitMqContainer = _containers()

        if not service_answers(pg, 5432):
            pgc = PostgresContainer("postgres:15-alpine", driver=None).start()
            containers.append(pgc)
            pg = pgc.get_connection_url()
        if not service_answers(amqp, 5672):
            mq = RabbitMqContainer("rabbitmq:3.10-management-alpine").start()
            containers.append(mq)
            amqp = f"amqp://guest:guest@{mq.get_container_host_ip()}:{mq.get_exposed_port(5672)}/"
    yield pg, amqp
    _run(_swept(amqp))
    for c in containers:
        c.stop()


async def _sweep(amqp: str) -> int:
    """Deletes this run's queues and exchanges that a test left behind (a test killed by its
    timeout, a subprocess that declared its own retry tiers): each test deletes its own, this is the
    net under it, so the broker does not collect topologies run after run. Only with a local
    ``rabbitmqctl`` (AMQP cannot list queues); only names of this run."""
    if shutil.which("rabbitmqctl") is None or urlsplit(amqp).hostname not in (
        "127.0.0.1",
        "localhost",
        "::1",
    ):
        return 0
    mine = f"paw-test-{RUN}-"
    names: dict[str, list[str]] = {}
    for kind in ("queues", "exchanges"):
        proc = await asyncio.create_subprocess_exec(
            "rabbitmqctl",
            f"list_{kind}",
            "-q",
            "--no-table-headers",
            "name",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        names[kind] = [n for n in out.decode().split() if n.startswith(mine)]
    if not any(names.values()):
        return 0
    conn = await aio_pika.connect(amqp)
    try:
        channel = await conn.channel()
        for queue in names["queues"]:
            await channel.queue_delete(queue)
        for exchange in names["exchanges"]:
            await channel.exchange_delete(exchange)
    finally:
        await conn.close()
    return len(names["queues"]) + len(names["exchanges"])


async def _swept(amqp: str) -> None:
    try:
        await _sweep(amqp)
    except Exception as e:  # the sweep must never fail a run that passed
        print(f"conftest: broker sweep failed: {type(e).__name__}: {e}")


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Runs a coroutine on a private loop, leaving the global event loop (pytest-asyncio's) alone."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(coro)
    finally:
        loop.close()


@pytest.fixture(scope="session")
def template_db(service_urls: tuple[str, str]) -> Iterator[str]:
    admin_dsn, _ = service_urls
    name = f"paw_tmpl_{RUN}"

    async def create() -> None:
        conn = await asyncpg.connect(await create_database(admin_dsn, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    _run(create())
    yield name
    _run(drop_database(admin_dsn, name))


@pytest.fixture
async def database_url(
    service_urls: tuple[str, str], template_db: str, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    admin_dsn, _ = service_urls
    name = f"paw_test_{RUN}_{uuid.uuid4().hex[:8]}"
    yield await create_database(admin_dsn, name, template=template_db)
    await drop_database(admin_dsn, name)


@pytest.fixture
def sandbox_config() -> SandboxConfig:
    return SandboxConfig()


@pytest.fixture
async def sandbox(sandbox_config: SandboxConfig) -> AsyncIterator[Sandbox]:
    runner, url = await serve(sandbox_config, "127.0.0.1", 0)
    try:
        yield Sandbox(url, runner.app[SANDBOX], sandbox_config)
    finally:
        await runner.cleanup()


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
        plaid_connections=16,
        publish_timeout=3.0,
        atomic_pending_reconcile_s=1,
    )


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    async with services_for(settings, "paw-test") as svc:
        yield svc


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


@pytest.fixture
async def rx(services: Services, receiver_port: int) -> AsyncIterator[Rx]:
    runner, url = await start_receiver(services, "127.0.0.1", receiver_port)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            yield Rx(url, runner.app[RECEIVER], http)
    finally:
        await runner.cleanup()
