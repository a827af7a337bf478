"""Named SQL queries, parsed once from ``worker/sql/queries.sql``.

Each query starts with a ``-- name: <name>`` line; the comment lines under it give asyncpg's ``$n``
order.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

HEADER = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    parts = HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip().rstrip(";")
    return queries


@functools.cache
def queries() -> dict[str, str]:
    return parse(resources.files("worker").joinpath("sql", "queries.sql").read_text("utf-8"))


def query(name: str) -> str:
    return queries()[name]
