"""Named SQL queries, parsed once from the ``.sql`` files beside this loader.

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
    found: dict[str, str] = {}
    folder = resources.files(__name__)
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        for name, sql in parse(entry.read_text("utf-8")).items():
            if name in found:
                raise ValueError(f"query {name!r} is defined in two files")
            found[name] = sql
    return found


def query(name: str) -> str:
    return queries()[name]
