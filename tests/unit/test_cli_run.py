"""How `paw` runs a command: the worker and the receiver on uvloop (unless PAW_EVENT_LOOP says
asyncio) with what the imports made frozen out of the collector's way; every other command on
asyncio's own loop, the collector untouched."""

from __future__ import annotations

import asyncio
import gc

import pytest

from worker.cli import run


async def observed() -> tuple[str, int]:
    return type(asyncio.get_running_loop()).__module__, gc.get_freeze_count()


@pytest.mark.parametrize(
    ("long_running", "uvloop", "loop_module", "frozen"),
    [
        (True, True, "uvloop", True),
        (True, False, "asyncio.unix_events", True),
        (False, True, "asyncio.unix_events", False),
    ],
)
def test_long_running_processes_freeze_what_the_imports_made(
    long_running: bool, uvloop: bool, loop_module: str, frozen: bool
) -> None:
    seen: list[tuple[str, int]] = []

    async def command() -> int:
        seen.append(await observed())
        return 0

    try:
        assert run(command(), long_running=long_running, uvloop=uvloop) == 0
    finally:
        gc.unfreeze()
    (module, freeze_count) = seen[0]
    assert module.startswith(loop_module), module
    assert (freeze_count > 10_000) is frozen, freeze_count
