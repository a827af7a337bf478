"""Start-up against a database or broker that is not ready: the processes say what to do, through
the real ``paw`` subprocess, instead of ``UndefinedTableError`` or a bare ``ConnectionRefusedError``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

import schemas
from tests.helpers import create_database, drop_database, free_port, paw_env, run_paw
from worker.settings import Settings, load

ALL_MIGRATIONS = ", ".join(f"{m.version:04d}_{m.name}" for m in schemas.migrations())


@pytest.fixture
async def empty_db(service_urls: tuple[str, str]) -> AsyncIterator[str]:
    admin_dsn, _ = service_urls
    name = f"paw_empty_{uuid.uuid4().hex[:8]}"
    yield await create_database(admin_dsn, name)
    await drop_database(admin_dsn, name)


@pytest.fixture
def on_empty_db(service_urls: tuple[str, str], empty_db: str) -> Settings:
    """Settings on an empty database; nothing reaches Plaid or Atomic before the schema check."""
    _, amqp = service_urls
    prefix = f"paw-startup-{uuid.uuid4().hex[:6]}"
    return load(
        {},
        database_url=empty_db,
        amqp_url=amqp,
        plaid_base_url="http://127.0.0.1:9",
        atomic_base_url="http://127.0.0.1:9/atomic",
        exchange=f"{prefix}.events",
        queue_prefix=prefix,
    )


@pytest.mark.parametrize("command", [["worker"], ["receiver", "--port", "0", "--admin-port", "0"]])
async def test_an_empty_database_says_run_paw_migrate(on_empty_db: Settings, command: list[str]) -> None:
    code, _, err = await run_paw(on_empty_db, *command, timeout=30)
    assert code == 1, err.decode()
    lines = err.decode().splitlines()
    assert f"is not migrated: run `paw migrate` (missing: {ALL_MIGRATIONS})" in lines[-1]
    assert "UndefinedTableError" not in err.decode() and "Traceback" not in err.decode()


async def test_a_database_missing_one_migration_names_it(on_empty_db: Settings) -> None:
    code, _, err = await run_paw(on_empty_db, "migrate", timeout=30)
    assert code == 0, err.decode()
    latest = schemas.migrations()[-1]
    conn = await asyncpg.connect(on_empty_db.database_url)
    try:
        await conn.execute("DELETE FROM paw_migrations WHERE version = $1", latest.version)
    finally:
        await conn.close()
    code, _, err = await run_paw(on_empty_db, "keys", "check", timeout=30)
    assert code == 1
    assert err.decode().splitlines()[-1].endswith(f"(missing: {latest.version:04d}_{latest.name})")


async def test_a_database_ahead_of_the_code_is_reported_and_tolerated(settings: Settings) -> None:
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute("INSERT INTO paw_migrations (version, name) VALUES (9999, 'from_the_future')")
    finally:
        await conn.close()
    code, _, err = await run_paw(settings, "keys", "check", timeout=30)
    assert code == 0, err.decode()
    events = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    ahead = next(e for e in events if e["event"] == "db.schema_ahead")
    assert ahead["level"] == "warning" and ahead["unknown_migrations"] == ["9999_from_the_future"]


async def test_a_broker_that_refuses_is_named_with_its_variable(settings: Settings) -> None:
    port = free_port()  # nothing listens there: the same error as a stopped RabbitMQ
    refused = dataclasses.replace(settings, amqp_url=f"amqp://paw:hunter2@127.0.0.1:{port}/")
    code, _, err = await run_paw(refused, "worker", timeout=30)
    assert code == 1, err.decode()
    assert f"paw: RabbitMQ at 127.0.0.1:{port}/ (AMQP_URL) refused the connection" in err.decode()
    assert "hunter2" not in err.decode()


async def test_a_setup_that_cannot_start_is_the_supervisors_exit_code_not_a_restart_loop(
    on_empty_db: Settings,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.cli",
        "worker",
        "--processes",
        "2",
        env=paw_env(on_empty_db, PAW_ADMIN_PORT="0"),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1, err.decode()
    assert "is not migrated: run `paw migrate`" in err.decode()
    assert b"supervisor.child_failed_to_start" in err and b"supervisor.child_exited" not in err
