"""Opening Postgres and RabbitMQ, with errors that say which service failed, where, and which setting
points at it: "Postgres at db:5432/paw (DATABASE_URL) refused the connection", never a bare
``ConnectionRefusedError`` (and never the password). Every process and command opens them here
(:func:`worker.services.open_services`, the CLI's helpers, ``paw migrate``), and the database is
checked against the code's migrations as it is opened.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import aiormq
import asyncpg
import structlog
from aio_pika.abc import AbstractRobustConnection

import schemas
from worker.bus.publisher import connect
from worker.errors import NotMigrated, PawError, Unreachable, UpstreamError
from worker.items.store import create_pool
from worker.settings import Settings, mask_url

log = structlog.get_logger(__name__)

POSTGRES = ("Postgres", "DATABASE_URL", 5432)
RABBITMQ = ("RabbitMQ", "AMQP_URL", 5672)


def location(url: str, default_port: int) -> str:
    """``host:port/path`` of a service URL: no scheme, user or password."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "?", parts.port or default_port
    except ValueError:
        return "?"
    return f"{f'[{host}]' if ':' in host else host}:{port}{parts.path}"


def _why(e: BaseException) -> str:
    """What went wrong, in a few words (the drivers' messages name hosts and users, no passwords)."""
    chain: list[BaseException] = []
    cause: BaseException | None = e
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__

    def first(kind: type[BaseException] | tuple[type[BaseException], ...]) -> Any:
        return next((c for c in chain if isinstance(c, kind)), None)

    if first(ConnectionRefusedError):
        return "refused the connection"
    if (err := first(socket.gaierror)) is not None:
        return f"could not be found (host name: {err.strerror})"
    if first(TimeoutError):
        return "did not answer in time"
    if (
        err := first((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError))
    ) is not None:
        return f"refused the credentials: {err}"
    if first(aiormq.exceptions.ProbableAuthenticationError):
        return "refused the credentials (ACCESS_REFUSED)"
    if (err := first(asyncpg.InvalidCatalogNameError)) is not None:
        return f"has no such database ({err}): `paw migrate` creates it"
    if (err := first(OSError)) is not None and err.strerror:
        return f"could not be reached: {err.strerror}"
    return f"refused to open a connection: {type(e).__name__}: {e}"


@contextlib.contextmanager
def naming(service: tuple[str, str, int], url: str, *more: str) -> Iterator[None]:
    """Turns a failure to connect, inside the block, into :class:`Unreachable` naming ``service``
    (at each of its URLs: a cluster's nodes, when every one of them failed)."""
    name, variable, default_port = service
    try:
        yield
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, aiormq.exceptions.AMQPError) as e:
        where = ", ".join(location(u, default_port) for u in (url, *more))
        raise Unreachable(f"{name} at {where} ({variable}) {_why(e)}") from e


def migration_name(version: int, name: str) -> str:
    return f"{version:04d}_{name}"


async def check_schema(db: Any, url: str) -> list[str]:
    """Raises :class:`NotMigrated` naming the migrations the code has and the database lacks.

    Returns (and logs as a warning) those the database has and the code does not know: a newer paw
    migrated it. That is not fatal: in a rolling update (or a rollback) older processes run on the
    newer schema, which is why migrations only add.
    """
    exists = await db.fetchval("SELECT to_regclass('paw_migrations') IS NOT NULL")
    rows = await db.fetch("SELECT version, name FROM paw_migrations ORDER BY version") if exists else []
    applied = {r["version"]: r["name"] for r in rows}
    known = {m.version: m.name for m in schemas.migrations()}
    missing = [migration_name(v, n) for v, n in known.items() if v not in applied]
    if missing:
        raise NotMigrated(
            f"the database at {location(url, POSTGRES[2])} is not migrated: run `paw migrate` "
            f"(missing: {', '.join(missing)})"
        )
    unknown = [migration_name(v, n) for v, n in applied.items() if v not in known]
    if unknown:
        log.warning(
            "db.schema_ahead",
            unknown_migrations=unknown,
            detail="the database has migrations this paw does not know: a newer paw migrated it",
        )
    return unknown


async def open_pool(settings: Settings, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    """The pool on DATABASE_URL, the database checked to be migrated."""
    with naming(POSTGRES, settings.database_url):
        pool = await create_pool(settings.database_url, min_size=min_size, max_size=max_size)
    try:
        await check_schema(pool, settings.database_url)
    except BaseException:
        await pool.close()
        raise
    return pool


async def open_broker(settings: Settings, name: str) -> AbstractRobustConnection:
    """A robust connection to the first node of AMQP_URL that answers; after it opens, it reconnects
    by itself, to the next node each time (:mod:`worker.bus.failover`). When every node refuses,
    the error names them all, with the last one's reason."""
    with naming(RABBITMQ, *settings.amqp_urls):
        return await connect(settings.amqp_urls, name)


def explain(e: PawError, settings: Settings) -> str:
    """``e`` as the CLI prints it: an upstream that could not be reached, with where paw looked."""
    if not isinstance(e, UpstreamError) or e.error_code != "NETWORK_ERROR":
        return str(e)
    if e.service == "plaid":
        where, variable = settings.plaid_host, "PLAID_BASE_URL" if settings.plaid_base_url else "PLAID_ENV"
    elif e.service == "atomic":
        where, variable = settings.atomic_base_url, "ATOMIC_BASE_URL"
    else:
        return str(e)
    return f"{e.service.capitalize()} at {mask_url(where)} ({variable}) could not be reached: {e}"
