"""``paw dlq ...`` and ``paw item retry``: the on-call commands (filled in by the DLQ work)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from typing import Any

from worker.settings import Settings

Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]],
) -> dict[str, Command]:
    """Adds this module's subcommands; returns command name -> coroutine function.

    A command name is the subcommand path joined by underscores (``dlq_list``, ``item_retry``). A new
    group is ``sub.add_parser("dlq").add_subparsers(dest="dlq_command", required=True)``; an existing
    group (``groups["item"]``) takes more subcommands with ``.add_parser(...)``.
    """
    return {}
