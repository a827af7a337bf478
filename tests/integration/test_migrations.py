"""Migrations apply cleanly to an empty database, twice is a no-op, and versions only grow."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from importlib import resources

import asyncpg
import pytest

import schemas
from tests.helpers import create_database, drop_database
from worker.migrate import CREATE_TABLE, migrate
from worker.sql import queries


@pytest.fixture
async def empty_db(service_urls: tuple[str, str]) -> AsyncIterator[str]:
    admin_dsn, _ = service_urls
    name = f"paw_empty_{uuid.uuid4().hex[:8]}"
    yield await create_database(admin_dsn, name)
    await drop_database(admin_dsn, name)


def test_versions_are_unique_and_every_file_is_a_migration() -> None:
    found = schemas.migrations()
    versions = [m.version for m in found]
    assert versions == sorted(set(versions)) and versions[0] == 1
    files = [
        p.name for p in resources.files("schemas").joinpath("migrations").iterdir() if p.name.endswith(".sql")
    ]
    assert len(files) == len(found), "a .sql file in migrations/ does not match NNNN_name.sql"


async def test_migrations_apply_to_an_empty_database_once(empty_db: str) -> None:
    conn = await asyncpg.connect(empty_db)
    try:
        applied = await migrate(conn)
        assert applied == [m.version for m in schemas.migrations()]
        assert await migrate(conn) == []
        # every named query at least parses and plans against the migrated schema
        for name, sql in queries().items():
            try:
                await conn.prepare(sql)
            except asyncpg.PostgresError as e:
                raise AssertionError(f"query {name!r} does not plan: {e}") from e
    finally:
        await conn.close()


async def test_answers_held_before_0016_mark_their_items(empty_db: str) -> None:
    """0016 adds items.held_at; an answer already held then (recorded by a worker without the
    column) marks its Item, so that the next submission applies it instead of committing past it."""
    conn = await asyncpg.connect(empty_db)
    try:
        await conn.execute(CREATE_TABLE)
        for m in schemas.migrations():
            if m.version < 16:  # the database as a worker without held_at left it
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO paw_migrations (version, name) VALUES ($1, $2)", m.version, m.name
                )
        ids = []
        for n in range(2):
            row = await conn.fetchrow(
                "INSERT INTO items (id, public_token_sha256, client_user_id, state) "
                "VALUES ($1, $2, 'u', 'processor_token_issued') RETURNING id",
                uuid.uuid4(),
                f"token-{n}",
            )
            ids.append(row["id"])
        held, other = ids
        await conn.execute(
            "INSERT INTO inbox (event_key, item_id, routing_key, outcome, payload) VALUES "
            "('k-held', $1, 'webhook.atomic.verified', 'held', '{}'), "
            "('k-applied', $2, 'webhook.atomic.verified', 'applied', '{}'), "
            "('k-unknown', NULL, 'webhook.atomic.verified', 'held', '{}')",
            held,
            other,
        )
        assert await migrate(conn) == [m.version for m in schemas.migrations() if m.version >= 16]
        marked = await conn.fetch("SELECT id FROM items WHERE held_at IS NOT NULL")
        assert [r["id"] for r in marked] == [held]
    finally:
        await conn.close()
