"""How `paw` runs a command: the worker and the receiver on uvloop (unless PAW_EVENT_LOOP says
asyncio) with what the imports made frozen out of the collector's way and young collections ten
times rarer; every other command on asyncio's own loop, the collector untouched.

Run in a fresh interpreter: freezing this one would move every test's leftover garbage (and the
ResourceWarnings it carries) into whichever later test next runs a full collection."""

from __future__ import annotations

import json
import subprocess
import sys

from worker.cli import YOUNG_GC_THRESHOLD

PROBE = """
import asyncio, gc, json
from worker.cli import run

default = gc.get_threshold()

seen = []

async def command():
    seen.append([type(asyncio.get_running_loop()).__module__, gc.get_freeze_count(), gc.get_threshold()[0]])
    return 0

for long_running, uvloop in ((True, True), (True, False), (False, True)):
    assert run(command(), long_running=long_running, uvloop=uvloop) == 0
    gc.unfreeze()
    gc.set_threshold(*default)
print(json.dumps([default[0], seen]))
"""


def test_long_running_processes_freeze_what_the_imports_made() -> None:
    out = subprocess.run(  # noqa: S603 - the test's own interpreter
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    default, (worker, worker_on_asyncio, cli) = json.loads(out.stdout)
    assert worker == ["uvloop", worker[1], YOUNG_GC_THRESHOLD] and worker[1] > 10_000, worker
    assert worker_on_asyncio[0].startswith("asyncio") and worker_on_asyncio[1] > 10_000, worker_on_asyncio
    assert worker_on_asyncio[2] == YOUNG_GC_THRESHOLD > default, worker_on_asyncio
    assert cli[0].startswith("asyncio") and cli[1:] == [0, default], cli
