"""``paw worker|receiver --processes N``: the real commands under their supervisor. A child that
dies is started again on its own admin port, SIGTERM drains them all, a SIGKILLed parent takes its
children with it, and a setup that cannot start is the parent's exit code, not a restart loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sandbox.app import SandboxConfig
from tests.helpers import Sandbox, eventually, free_port, new_public_token, paw_env, settled, submit_amqp
from worker.items.states import State
from worker.services import Services
from worker.settings import Settings
from worker.supervise import PORT_STEP


@pytest.fixture
def sandbox_config(sandbox_config_for_receiver: SandboxConfig) -> SandboxConfig:
    return sandbox_config_for_receiver  # Atomic's webhooks go to the test's receiver


def children_of(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is ``pid``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == pid and state != "Z":
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def admin_base() -> int:
    """A free port whose neighbour one step up is free too (children 0 and 1)."""
    while True:
        base = free_port()
        if base + PORT_STEP < 65536:
            with contextlib.suppress(OSError), socket.socket() as s:
                s.bind(("127.0.0.1", base + PORT_STEP))
                return base


async def ready(port: int) -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


@contextlib.asynccontextmanager
async def supervised(
    settings: Settings, log: Path, *args: str, **env: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``paw <args>``, its log (the parent's and its children's) in the file ``log``."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker.cli", *args, env=paw_env(settings, **env), stderr=out
        )
    try:
        yield proc
    finally:
        pids = children_of(proc.pid)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_a_dead_receiver_process_is_replaced_and_sigterm_drains_both(
    settings: Settings, tmp_path: Path
) -> None:
    base, port = admin_base(), free_port()
    args = ("receiver", "--processes", "2", "--port", str(port), "--admin-port", str(base))
    async with supervised(settings, tmp_path / "paw.log", *args) as parent:

        async def both_ready() -> set[int] | None:
            pids = children_of(parent.pid)
            return pids if len(pids) == 2 and await ready(base) and await ready(base + PORT_STEP) else None

        first = await eventually(both_ready, timeout=30)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)

        async def replaced() -> set[int] | None:
            pids = await both_ready()
            return pids if pids and victim not in pids else None

        second = await eventually(replaced, timeout=30)
        assert len(second & first) == 1  # the other one was left alone
        parent.send_signal(signal.SIGTERM)
        await asyncio.wait_for(parent.wait(), 30)
        assert parent.returncode == 0
        assert not any(alive(pid) for pid in second)
        lines = (tmp_path / "paw.log").read_bytes().splitlines()
        events = [json.loads(line) for line in lines if line.startswith(b"{")]
        exited = [e for e in events if e["event"] == "supervisor.child_exited"]
        assert [(e["pid"], e["exit_code"]) for e in exited] == [(victim, -signal.SIGKILL)]


async def test_worker_processes_share_the_queues_and_die_with_a_killed_parent(
    settings: Settings, services: Services, receiver: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    """Two worker processes consume the items queue and carry Items to their end; SIGKILL of the
    parent (no drain of its own) still stops them, through the kernel's parent-death signal."""
    base = admin_base()
    async with supervised(
        settings, tmp_path / "paw.log", "worker", "--processes", "2", PAW_ADMIN_PORT=str(base)
    ) as parent:

        async def consumers() -> int:
            channel = await services.connection.channel()
            try:
                queue = await channel.declare_queue(services.topo.items_queue, passive=True)
                return int(queue.declaration_result.consumer_count or 0)
            finally:
                await channel.close()

        def started() -> list[dict[str, Any]]:
            lines = (tmp_path / "paw.log").read_bytes().splitlines()
            return [
                e
                for e in map(json.loads, (x for x in lines if x.startswith(b"{")))
                if e["event"] == "worker.started"
            ]

        async def both_consume() -> set[int] | None:
            pids = children_of(parent.pid)
            ok = (
                len(pids) == 2
                and await ready(base)
                and await ready(base + PORT_STEP)
                and await consumers() == 2
                and len(started()) == 2  # a child may consume before its started line is written
            )
            return pids if ok else None

        pids = await eventually(both_consume, timeout=30)
        # PAW_DB_POOL_SIZE (20 by default) is the command's: each of the two gets half
        assert [e["config"]["db_pool_size"] for e in started()] == [10, 10]
        tokens = [await new_public_token(sandbox) for _ in range(10)]
        for i, token in enumerate(tokens):
            await submit_amqp(services, {"public_token": token, "client_user_id": f"u-super-{i}"})
        for token in tokens:
            await settled(services, token, State.ATOMIC_VERIFIED)
        parent.kill()
        await parent.wait()

        async def gone() -> bool:
            return not any(alive(pid) for pid in pids) and await consumers() == 0

        try:
            await eventually(gone, timeout=45)
        finally:  # orphans no longer show as the parent's children: end them here if they live on
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
