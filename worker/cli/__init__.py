"""``paw``: the command line. ``main()`` parses, loads settings once, and runs one coroutine.

Each module adds its commands with ``register(sub)``, every parser naming its coroutine with
``set_defaults(func=...)``: :mod:`worker.cli.ops` (the processes, status, keys), :mod:`worker.cli.items`,
:mod:`worker.cli.dlq`, :mod:`worker.cli.demo`. What they print is in :mod:`worker.cli.render`.
``paw config`` (:mod:`worker.cli.config`) alone runs without loading settings: it shows what is wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, NoReturn

import aiormq
import asyncpg

from worker import logs, reach, version
from worker import settings as settings_mod
from worker.cli import config, console, demo, dlq, items, ops
from worker.errors import PawError, SettingsError


class _Parser(argparse.ArgumentParser):
    settings_help = False  # the top-level parser's help lists the settings, read when it is shown

    def format_help(self) -> str:
        if self.settings_help:
            self.epilog = config.settings_help(os.environ)
        return super().format_help()

    def error(self, message: str) -> NoReturn:
        """A bad argument is one line on stderr, and exit 2 (the usage is one ``-h`` away)."""
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} -h`)\n")


# The ``service`` field of every log line: the process role, or "cli" for the commands that operate.
PROCESSES = frozenset({"worker", "receiver", "sandbox", "demo", "migrate"})


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="paw",
        description="Plaid + Atomic account-funding worker.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.settings_help = True
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (ops, items, dlq, console, demo, config):
        module.register(sub)
    return parser


YOUNG_GC_THRESHOLD = 7_000  # objects made beyond those freed between young collections (CPython: 700)


def run(coro: Coroutine[Any, Any, int], *, long_running: bool, uvloop: bool) -> int:
    """Runs a command's coroutine; the long-running processes (worker, receiver) on uvloop unless
    told otherwise (issue 16: less CPU per message than asyncio's own loop, same semantics)."""
    if long_running:
        # The ~70,000 objects the imports made (plaid-python's models above all) live as long as
        # the process: frozen, the collector's full passes no longer walk them (one worker, 2,000
        # Items: 0.51 -> 0.19 s in full collections).
        gc.freeze()
        # A young collection runs each time 700 (CPython's default) more container objects were
        # made than freed, and walks every young one: with hundreds of requests and messages in
        # flight, those are mostly theirs, walked again and again (the collector was ~4 % of the
        # receiver in py-spy --native). Ten times the threshold: a tenth of the walks.
        gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])
    if long_running and uvloop:
        try:
            import uvloop as uv
        except ImportError:  # not installed where it does not build (Windows): asyncio's own
            pass
        else:
            return uv.run(coro)
    return asyncio.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "config":
        return config.show_config(os.environ, args)
    # A command may refuse an environment outright (paw demo: PLAID_ENV=production), before settings load.
    if (refuse := getattr(args, "refuse", None)) and (why := refuse(os.environ)):
        print(f"paw {args.command}: {why}", file=sys.stderr)
        return 2
    try:
        s = settings_mod.load(os.environ)
    except SettingsError as e:
        print(config.problems_text(e.problems), file=sys.stderr)
        return 2
    service = args.command if args.command in PROCESSES else "cli"
    logs.configure(s.log_format, s.log_level, service=service, environ=os.environ)
    coro = args.func(s, args)
    try:
        long_running = args.command in ("worker", "receiver")
        code: int = run(coro, long_running=long_running, uvloop=s.event_loop == "uvloop")
        return code
    except PawError as e:
        print(f"paw: {reach.explain(e, s)}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError, aiormq.exceptions.AMQPError) as e:
        print(f"paw: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
