"""``paw``: the command line. ``main()`` parses, loads settings once, and runs one coroutine.

Each module adds its commands with ``register(sub)``, every parser naming its coroutine with
``set_defaults(func=...)``: :mod:`worker.cli.ops` (the processes, status, keys), :mod:`worker.cli.items`,
:mod:`worker.cli.dlq`, :mod:`worker.cli.demo`. What they print is in :mod:`worker.cli.render`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

import aiormq
import asyncpg

from worker import logs
from worker import settings as settings_mod
from worker.cli import demo, dlq, items, ops
from worker.errors import PawError, SettingsError
from worker.settings import ENV

HELP_ENV = "\n".join(f"  {var:<32} {field}" for var, (field, _) in ENV.items())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paw",
        description="Plaid + Atomic account-funding worker.",
        epilog="Settings come from the environment:\n" + HELP_ENV,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (ops, items, dlq, demo):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A command may refuse an environment outright (paw demo: PLAID_ENV=production), before settings load.
    if (refuse := getattr(args, "refuse", None)) and (why := refuse(os.environ)):
        print(f"paw {args.command}: {why}", file=sys.stderr)
        return 2
    try:
        s = settings_mod.load(os.environ)
    except SettingsError as e:
        print(f"paw: configuration error: {e}", file=sys.stderr)
        return 2
    logs.configure(s.log_format, s.log_level)
    coro = args.func(s, args)
    try:
        code: int = asyncio.run(coro)
        return code
    except PawError as e:
        print(f"paw: {e}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError, aiormq.exceptions.AMQPError) as e:
        print(f"paw: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
