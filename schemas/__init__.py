"""The project's contracts, as data: JSON Schemas for every message on the bus, and SQL migrations.

Code and tests read them through :mod:`importlib.resources`, so an installed wheel carries them.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator

MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@functools.cache
def message_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of the message ``name`` (e.g. ``"item.link"``)."""
    text = resources.files(__package__).joinpath("messages", f"{name}.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def message_names() -> list[str]:
    folder = resources.files(__package__).joinpath("messages")
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


@functools.cache
def validator(name: str) -> Draft202012Validator:
    schema = message_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def migrations() -> list[Migration]:
    """Every migration, in version order."""
    folder = resources.files(__package__).joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    return sorted(found, key=lambda m: m.version)
