"""Applies ``schemas/migrations/*.sql`` in order, under an advisory lock, each in its own transaction."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import asyncpg
import structlog

import schemas
from worker.reach import POSTGRES, naming

log = structlog.get_logger(__name__)

LOCK_ID = 0x7061_775F_6D69_67  # "paw_mig"

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS paw_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Applies what is missing; returns the versions applied now."""
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_ID)
    try:
        await conn.execute(CREATE_TABLE)
        done = {r["version"] for r in await conn.fetch("SELECT version FROM paw_migrations")}
        latest = max(done, default=0)
        for m in schemas.migrations():
            if m.version in done:
                continue
            if m.version < latest:  # merged from a branch after a newer one was applied
                log.warning("db.migration_out_of_order", migration=m.version, latest_applied=latest)
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO paw_migrations (version, name) VALUES ($1, $2)", m.version, m.name
                )
            log.info("db.migrated", migration=m.version, name=m.name)
            applied_now.append(m.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_ID)
    return applied_now


async def ensure_database(dsn: str) -> None:
    """Creates the database named in ``dsn`` if it does not exist (local set-ups)."""
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        parts = urlsplit(dsn)
        name = parts.path.lstrip("/")
        admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.DuplicateDatabaseError:
            pass
        finally:
            await admin.close()
        return
    await conn.close()


async def migrate_database(dsn: str) -> list[int]:
    """Creates the database if missing and applies what is missing; returns the versions applied now."""
    with naming(POSTGRES, dsn):
        await ensure_database(dsn)
        conn = await asyncpg.connect(dsn)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
