"""What every asyncio task of this process is waiting on: the admin server's ``/debug/tasks``.

A task that waits shows only its outermost frame in :meth:`asyncio.Task.get_stack`; the place it
actually waits is at the end of its ``cr_await`` chain (a coroutine awaiting a coroutine ... awaiting
a future). Walking that chain found the 183 s stalled broker connection (bench/README): aiormq's
connection reader waiting in ``Queue.put`` for a channel whose own reader had died. Tasks waiting at
the same place are counted together, the largest group first, so a worker with 64 messages in hand
shows one line per place, not 64 stacks. Only code locations are shown, never a value (no token or
body can appear in a dump).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable
from typing import Any

# What the C implementation of asyncio's Future hands ``await``: the future it iterates is not exposed.
_AWAITED_NAMES = {"FutureIter": "Future"}


def await_chain(task: asyncio.Task[Any]) -> tuple[str, ...]:
    """``file:line in function`` for each coroutine from the task's own to the innermost, then what
    that one awaits when it is not a coroutine (a future, a generator-based awaitable)."""
    chain: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = (
            getattr(awaited, "cr_frame", None)
            or getattr(awaited, "gi_frame", None)
            or getattr(awaited, "ag_frame", None)
        )
        if frame is None:
            if not (hasattr(awaited, "cr_await") or hasattr(awaited, "gi_yieldfrom")):
                name = type(awaited).__qualname__
                chain.append(f"awaiting {_AWAITED_NAMES.get(name, name)}")
            break
        code = frame.f_code
        chain.append(f"{code.co_filename}:{frame.f_lineno} in {code.co_qualname}")
        awaited = (
            getattr(awaited, "cr_await", None)
            or getattr(awaited, "gi_yieldfrom", None)
            or getattr(awaited, "ag_await", None)
        )
    return tuple(chain)


def dump(tasks: Iterable[asyncio.Task[Any]]) -> str:
    """Plain text: for each place tasks wait, how many, their names (a few), and the chain."""
    groups: dict[tuple[str, ...], list[str]] = collections.defaultdict(list)
    for task in tasks:
        if not task.done():
            groups[await_chain(task)].append(task.get_name())
    total = sum(len(names) for names in groups.values())
    lines = [f"{total} tasks waiting at {len(groups)} places"]
    for chain, names in sorted(groups.items(), key=lambda g: (-len(g[1]), g[0])):
        shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
        lines.append("")
        lines.append(f"{len(names)} x ({shown})")
        lines.extend(f"    {step}" for step in chain)
    return "\n".join(lines) + "\n"
