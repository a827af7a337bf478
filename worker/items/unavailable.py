"""The errors that mean Postgres is away (down, restarting, unreachable, out of connections), not
that a statement was wrong: a caller waits and tries again, or gives the work back, rather than
failing the Item."""

from __future__ import annotations

import asyncpg

DATABASE_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,
    asyncpg.TooManyConnectionsError,
    # A pooled connection that Postgres's shutdown broke mid-protocol fails the next query with
    # "cannot switch to state 12; another operation (2) is in progress": the database was away,
    # not a bug in the statement. Missing here, it made a commit give up at once after an exchange,
    # and the redelivered message spent the public token again (INVALID_PUBLIC_TOKEN).
    asyncpg.exceptions.InternalClientError,
)
