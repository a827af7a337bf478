"""``paw demo`` runs in a database of its own, ``<name>_demo``, and leaves the configured one as it
was; it prints the story on stdout and nothing on stderr, its logs in a file it names; it refuses
production, and it never drops a database it did not create."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re

import asyncpg
import pytest

from tests.helpers import all_cells, run_paw, take_demo_log
from worker.cli.demo import cmd_demo, database_name, demo_database_url, shown_url
from worker.settings import Settings

FULL_ID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


async def databases_named(dsn: str, name: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        found: int = await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", name)
        return found
    finally:
        await conn.close()


async def test_the_demo_runs_in_its_own_database_drops_it_and_leaves_the_configured_one_alone(
    settings: Settings,
) -> None:
    before = await all_cells(settings.database_url)
    code, raw_out, err = await run_paw(settings, "demo", timeout=120)
    out = raw_out.decode()
    assert code == 0, out + err.decode()
    assert "every Item ended where expected" in out
    # the configured database (this test's own) is exactly as it was: no Item, no history, nothing
    assert await all_cells(settings.database_url) == before
    demo = database_name(demo_database_url(settings.database_url))
    assert demo == f"{database_name(settings.database_url)}_demo" and demo in out
    assert await databases_named(settings.database_url, demo) == 0, "the demo's database is dropped"
    # quiet: the story on stdout, nothing on stderr; the logs are in the file it names
    assert err == b"", err.decode()[-2000:]
    lines = take_demo_log(raw_out).decode().splitlines()
    assert any(json.loads(line).get("event") == "worker.started" for line in lines if line.startswith("{"))
    table = next(block for block in out.split("\n\n") if "Items" in block and "┏" in block)
    assert len(set(FULL_ID.findall(table))) == 5, "the Items table shows five full ids"
    # the upstream app learnt every transition on its queue (printed as they came) and by callback
    learnt = re.search(
        r"^upstream app: (\d+) outcome events on its queue, (\d+) signed callbacks verified", out, re.M
    )
    assert learnt and learnt[1] == learnt[2] and int(learnt[1]) >= 20, out
    assert "0 refused; one per transition of every Item" in out
    assert len(re.findall(r"^  upstream app, queue: Item [0-9a-f]{8} #\d+ ", out, re.M)) == int(learnt[1])
    url = shown_url(demo_database_url(settings.database_url))
    last = out.rstrip().splitlines()[-1]
    assert last == f"try: paw demo --keep, then DATABASE_URL={url} paw item show <item id>"
    assert re.search(rf"^dropped: database {demo} ", out, re.M)


@pytest.mark.parametrize("secrets", [False, True])
async def test_the_demo_refuses_production(settings: Settings, secrets: bool) -> None:
    env = {"PLAID_ENV": "production"}
    if secrets:  # everything production requires is set: still refused
        env |= {
            "PLAID_CLIENT_ID": "client",
            "PLAID_SECRET": "secret",
            "ATOMIC_API_KEY": "atomic-key",
            "ATOMIC_WEBHOOK_SECRET": "atomic-secret",
            "PAW_TOKEN_KEYS": "k1:" + "A" * 43,
            "PAW_API_KEYS": "a-long-enough-api-key",
        }
    code, out, err = await run_paw(settings, "demo", "--keep", **env)
    assert (code, out) == (2, b""), err
    (line,) = err.decode().splitlines()
    assert "PLAID_ENV=production" in line and line.startswith("paw demo: refused")
    demo = database_name(demo_database_url(settings.database_url))
    assert await databases_named(settings.database_url, demo) == 0


async def test_the_command_itself_refuses_production_settings(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argparse.Namespace(keep=False, verbose=False)
    assert await cmd_demo(dataclasses.replace(settings, plaid_env="production"), args) == 2
    assert "PLAID_ENV=production" in capsys.readouterr().err


async def test_the_demo_never_drops_a_database_it_did_not_create(settings: Settings) -> None:
    demo = database_name(demo_database_url(settings.database_url))
    admin = await asyncpg.connect(settings.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{demo}"')
        try:
            code, out, err = await run_paw(settings, "demo")
            assert code == 1 and b"did not create it" in err, out + err
            assert await databases_named(settings.database_url, demo) == 1
            take_demo_log(out)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{demo}" WITH (FORCE)')
    finally:
        await admin.close()
