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

import fastjsonschema
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


@dataclass(frozen=True)
class Violation:
    path: str  # e.g. "webhook/item_id", or "(root)"
    message: str  # may quote the offending value


@functools.cache
def _compiled(name: str) -> Any:
    return fastjsonschema.compile(message_schema(name))


def first_violation(name: str, data: Any) -> Violation | None:
    """``None`` if ``data`` is valid against the schema ``name``, else its first violation.

    The check runs compiled (fastjsonschema: about 15x faster than interpreting the schema, and it
    runs on every message); only an invalid message pays for jsonschema's fuller explanation.
    """
    try:
        _compiled(name)(data)
        return None
    except fastjsonschema.JsonSchemaException as fast:
        errors = sorted(validator(name).iter_errors(data), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            return Violation("/".join(str(p) for p in first.absolute_path) or "(root)", first.message)
        name_: str = getattr(fast, "name", None) or "data"
        path = name_.removeprefix("data").lstrip(".").replace(".", "/") or "(root)"
        return Violation(path, str(getattr(fast, "message", fast)))


def migrations() -> list[Migration]:
    """Every migration, in version order."""
    folder = resources.files(__package__).joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    return sorted(found, key=lambda m: m.version)
