"""What the commands share: their type, who is acting, and the database and broker they open."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeAlias

import asyncpg
from aio_pika.abc import AbstractRobustConnection

from worker.reach import open_broker, open_pool
from worker.settings import Settings

# A command: ``async def cmd(settings, args) -> exit code``, set on its parser with set_defaults(func=...).
Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]
# What each module's ``register(sub)`` adds its commands to (argparse's own type; a string, since
# the class takes no type argument at run time).
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def default_actor() -> str:
    try:
        return getpass.getuser()  # $USER (then LOGNAME, then the account name)
    except (OSError, KeyError):
        return "unknown"


def add_actor(p: argparse.ArgumentParser, actor: str) -> None:
    p.add_argument("--actor", default=actor, help=f"who acts, for the audit (default: $USER, here {actor!r})")


@contextlib.asynccontextmanager
async def database(s: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await open_pool(s, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def broker(s: Settings, name: str = "paw-cli") -> AsyncIterator[AbstractRobustConnection]:
    connection = await open_broker(s, name)
    try:
        yield connection
    finally:
        await connection.close()


def stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
