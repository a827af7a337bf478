"""``paw config`` and the settings part of ``paw --help``: each variable with its meaning, its default
and the value in effect, read from the environment as the processes read it (secrets masked), all
from the one table in :mod:`worker.settings`."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Mapping, Sequence

from worker import settings as settings_mod
from worker import version
from worker.cli.context import Subparsers
from worker.settings import Reading

INDENT = 34  # two spaces, the longest variable (PAW_ATOMIC_PENDING_RECONCILE_S) and two more
LINE = 110


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "config",
        help="every setting: meaning, default and the value in effect here (secrets masked)",
        description="Reads the environment as `paw worker` and `paw receiver` would and shows, for "
        "each setting, what it means, its default and its value here (secrets masked). "
        "Exits 2 if a process would refuse to start on this configuration.",
    )
    p.add_argument("--json", action="store_true", help="one JSON document: settings, problems, version")


def _second_line(r: Reading) -> str:
    var, parts = r.var, []
    if var.file_env:
        parts.append(f"secret (or {var.file_env})")
    in_effect = r.source == "default" and r.problem is None
    parts.append(f"default {var.default}" + (", in effect" if in_effect else ""))
    if r.problem is not None:
        parts.append(f"INVALID: {r.problem}")
    elif r.source != "default":
        where = "" if r.source == "environment" else f" (from {r.source.removeprefix('file ')})"
        parts.append(f"now {r.shown}{where}")
    return "; ".join(parts)


def describe(readings: Sequence[Reading]) -> str:
    """Per variable, what it means; then whether it is a secret, its default and the value in effect."""
    lines = []
    for r in readings:
        for first, text in ((r.var.env, r.var.meaning), ("", _second_line(r))):
            wrapped = textwrap.wrap(text, LINE - INDENT, break_on_hyphens=False, break_long_words=False)
            lines.append(f"  {first:<{INDENT - 2}}{wrapped[0]}")
            lines += [" " * INDENT + more for more in wrapped[1:]]
    return "\n".join(lines)


def settings_help(environ: Mapping[str, str]) -> str:
    """The epilog of ``paw --help``."""
    readings, problems = settings_mod.read(environ)
    head = (
        "Settings, from the environment (`paw config` shows them alone). A secret may instead come\n"
        "from a file, as with the postgres image: PLAID_SECRET_FILE=/run/secrets/plaid reads that file."
    )
    tail = f"\n\n{problems_text(problems)}" if problems else ""
    return f"{head}\n{describe(readings)}{tail}"


def problems_text(problems: Sequence[str]) -> str:
    if len(problems) == 1:
        return f"paw: configuration error: {problems[0]}"
    return f"paw: {len(problems)} configuration errors:\n" + "\n".join(f"  - {p}" for p in problems)


def unknown_names(environ: Mapping[str, str]) -> list[str]:
    """Variables that look like paw's (PAW_, PLAID_, ATOMIC_) but are none of its settings: typos."""
    known = settings_mod.names()
    return sorted(n for n in environ if n.startswith(("PAW_", "PLAID_", "ATOMIC_")) and n not in known)


def show_config(environ: Mapping[str, str], args: argparse.Namespace) -> int:
    """``paw config``: runs without valid settings (showing what is wrong is its point)."""
    readings, problems = settings_mod.read(environ)
    unknown = unknown_names(environ)
    if args.json:
        rows = [
            {
                "variable": r.var.env,
                "value": None if r.problem else r.shown,
                "source": r.source,
                "default": r.var.default,
                "meaning": r.var.meaning,
                "secret": r.var.secret,
                "problem": r.problem,
            }
            for r in readings
        ]
        out = {"version": version(), "settings": rows, "problems": problems, "not_settings": unknown}
        print(json.dumps(out, indent=2))
    else:
        print(f"paw {version()}: settings as its processes read them here (secrets masked)\n")
        print(describe(readings))
        if unknown:
            print(f"\nnot settings of paw, ignored (a typo?): {', '.join(unknown)}")
        if problems:
            print(file=sys.stdout)
            print(problems_text(problems))
    return 2 if problems else 0
