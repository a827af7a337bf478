"""How `paw` runs a command: the worker and the receiver on uvloop (unless PAW_EVENT_LOOP says
asyncio) with what the imports made frozen out of the collector's way; every other command on
asyncio's own loop, the collector untouched.

Run in a fresh interpreter: freezing this one would move every test's leftover garbage (and the
ResourceWarnings it carries) into whichever later test next runs a full collection."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import asyncio, gc, json
from worker.cli import run

seen = []

async def command():
    seen.append([type(asyncio.get_running_loop()).__module__, gc.get_freeze_count()])
    return 0

for long_running, uvloop in ((True, True), (True, False), (False, True)):
    assert run(command(), long_running=long_running, uvloop=uvloop) == 0
    gc.unfreeze()
print(json.dumps(seen))
"""


def test_long_running_processes_freeze_what_the_imports_made() -> None:
    out = subprocess.run(  # noqa: S603 - the test's own interpreter
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    (worker, worker_on_asyncio, cli) = json.loads(out.stdout)
    assert worker[0] == "uvloop" and worker[1] > 10_000, worker
    assert worker_on_asyncio[0].startswith("asyncio") and worker_on_asyncio[1] > 10_000, worker_on_asyncio
    assert cli[0].startswith("asyncio") and cli[1] == 0, cli
