"""A three-node RabbitMQ cluster loses the node everything runs on, under load, and gets it back.

The receiver and the worker run as ``paw receiver`` and ``paw worker`` with AMQP_URL naming all three
nodes, node 1 first: both connect to node 1, where the quorum queues' leaders (and the delay queues)
are too, since node 1 declared them. While signed Plaid webhooks and new Items stream in over HTTP,
node 1's Erlang VM gets SIGKILL, and later starts again. Both processes fail over to another node
by themselves; the receiver never answers 503 (two nodes of three can always confirm); every
webhook answered 200 is applied once; every Item is verified once, with one exchange each.

Harness: tests/cluster.py (Debian's rabbitmq-server on loopback ports; the machine's own node on 5672
is left alone). Run with ``.venv/bin/pytest -m chaos tests/chaos/test_cluster.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from sandbox import webhook_bodies
from sandbox.app import SandboxConfig
from tests.chaos.test_chaos import WorkerProcess, all_terminal, assert_exactly_once, outcome, worker_env
from tests.cluster import Cluster, Node, running_cluster, unavailable
from tests.helpers import (
    Sandbox,
    eventually,
    new_public_token,
    post_signed,
    submit_http,
)
from worker.services import open_services
from worker.settings import Settings

pytestmark = pytest.mark.chaos

ITEMS = 500
WEBHOOKS = 2000
STREAM_S = 24.0  # both streams spread over this long, at a steady pace
KILL_AT = 0.25  # node 1 is killed once this share of each stream was answered 200 / 202 ...
RESTART_AT = 0.6  # ... and started again once this share was


@pytest.fixture
def sandbox_config(sandbox_config_for_receiver: SandboxConfig) -> SandboxConfig:
    return sandbox_config_for_receiver


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    """Three nodes, started for this test and killed after it, whatever happened."""
    if (why := unavailable()) is not None:
        pytest.skip(why)
    async with running_cluster() as c:
        yield c


@dataclasses.dataclass
class Stream:
    """What one kind of request met: the answers by status, and when each refusal came."""

    total: int
    accepted: int = 0
    statuses: Counter[int] = dataclasses.field(default_factory=Counter)
    refusals: list[tuple[float, int]] = dataclasses.field(default_factory=list)  # (when, status)
    errors: list[str] = dataclasses.field(default_factory=list)

    def done(self, share: float) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return self.accepted >= share * self.total

        return check


async def deliver(stream: Stream, ok: int, send: Callable[[], Awaitable[int]], *, deadline: float) -> None:
    """Sends until answered ``ok``, as Plaid and upstream apps do: a refusal is sent again."""
    while True:
        try:
            status = await send()
        except aiohttp.ClientError as e:  # the receiver must answer every request, node loss or not
            stream.errors.append(f"{type(e).__name__}: {e}")
            status = 0
        stream.statuses[status] += 1
        if status == ok:
            stream.accepted += 1
            return
        stream.refusals.append((time.monotonic(), status))
        assert time.monotonic() < deadline, f"still refused at the deadline: {stream.statuses}"
        await asyncio.sleep(0.2)


async def paced(count: int, seconds: float, one: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """``one(0) .. one(count - 1)``, started at a steady pace over ``seconds``, all awaited."""
    started = time.monotonic()
    tasks: list[asyncio.Task[None]] = []
    for i in range(count):
        delay = started + i * seconds / count - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)


async def start_paw(settings: Settings, log: Path, started: str, *args: str, **env: str) -> WorkerProcess:
    """``paw <args>``, its JSON log in ``log``; returns once it logged ``started``. Killed if it does not."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker.cli",
            *args,
            env={**worker_env(settings), **env},
            stdout=out,
            stderr=out,
        )
    process = WorkerProcess(proc, log)

    async def up() -> bool:
        assert proc.returncode is None, f"paw {args[0]} exited: {process.tail()}"
        return any(e.get("event") == started for e in process.events())

    try:
        await eventually(up, timeout=30, interval=0.05)
    except BaseException:
        await stop(process)
        raise
    return process


async def stop(process: WorkerProcess) -> None:
    """SIGTERM, and SIGKILL if that is not enough."""
    if process.proc.returncode is None:
        process.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.proc.wait(), 45)
        except TimeoutError:
            process.proc.kill()
            await process.proc.wait()


def failed_over_from(process: WorkerProcess, node_port: int) -> bool:
    """The process left that node and opened a connection elsewhere, by itself."""
    events = process.events()
    left = any(
        e.get("event") == "broker.failover" and e.get("left") == f"127.0.0.1:{node_port}" for e in events
    )
    return left and any(e.get("event") == "broker.reconnected" for e in events)


async def leaders_moved(cluster: Cluster, via: Node, queues: tuple[str, ...]) -> bool:
    gone = cluster.nodes[0].name
    leaders = {row[0]: row[1] for row in await cluster.queues(via, "leader") if row[0] in queues}
    return len(leaders) == len(queues) and gone not in leaders.values()


async def inbox_counts(database_url: str) -> Counter[str]:
    """Inbox rows per Plaid item_id of the webhooks this test made."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT payload->'webhook'->>'item_id' AS plaid_item_id FROM inbox "
            "WHERE routing_key LIKE 'webhook.plaid.%' AND payload->'webhook'->>'item_id' LIKE 'cluster-%'"
        )
    finally:
        await conn.close()
    return Counter(r["plaid_item_id"] for r in rows)


@pytest.mark.timeout(420)
async def test_a_node_killed_and_restarted_under_load_loses_nothing_and_nobody_restarts(
    settings: Settings, sandbox: Sandbox, receiver_port: int, cluster: Cluster, tmp_path: Path
) -> None:
    began = time.monotonic()
    s = dataclasses.replace(settings, amqp_url=cluster.amqp_url, publish_timeout=5.0)
    assert s.amqp_urls == tuple(cluster.urls)
    first, second, _ = cluster.nodes
    tokens = await asyncio.gather(*(new_public_token(sandbox) for _ in range(ITEMS)))
    hooks = [webhook_bodies.new_accounts_available(f"cluster-{uuid.uuid4().hex}") for _ in range(WEBHOOKS)]

    # declares the topology, through node 1 (the cluster goes with everything on it: nothing to delete)
    async with open_services(s, "paw-test-cluster") as svc:
        # replicated on every node, led from node 1 (client-local), where everything is connected
        queues = {row[0]: row[1:] for row in await cluster.queues(second, "type", "leader", "members")}
        node_names = {n.name for n in cluster.nodes}
        watched = (svc.topo.items_queue, svc.topo.webhooks_queue, svc.topo.callbacks_queue)
        for name in watched:
            kind, leader, members = queues[name]
            assert kind == "quorum" and leader == first.name, queues[name]
            assert set(members.strip("[]").split(", ")) == node_names, queues[name]

        async with contextlib.AsyncExitStack() as processes:
            worker = await start_paw(s, tmp_path / "worker.log", "worker.started", "worker")
            processes.push_async_callback(stop, worker)
            receiver = await start_paw(
                s,
                tmp_path / "receiver.log",
                "receiver.started",
                *("receiver", "--port", str(receiver_port), "--admin-port", "0"),
                PAW_API_RATE="10000",  # Items come faster than one API key's 50/s
            )
            processes.push_async_callback(stop, receiver)
            url = f"http://127.0.0.1:{receiver_port}"
            items, webhooks = Stream(ITEMS), Stream(WEBHOOKS)
            deadline = time.monotonic() + 180

            async def item(i: int) -> None:
                async def send() -> int:
                    body = {"public_token": tokens[i], "client_user_id": f"u-{i}"}
                    status, _ = await submit_http(url, s, body)
                    return status

                await deliver(items, 202, send, deadline=deadline)

            async def webhook(i: int) -> None:
                await deliver(webhooks, 200, lambda: post_signed(url, sandbox, hooks[i]), deadline=deadline)

            flowing = asyncio.gather(paced(ITEMS, STREAM_S, item), paced(WEBHOOKS, STREAM_S, webhook))
            try:
                await eventually(items.done(KILL_AT), timeout=60)
                await eventually(webhooks.done(KILL_AT), timeout=60)
                applied_before = sum((await inbox_counts(s.database_url)).values())
                killed_at = time.monotonic()
                await cluster.kill(first)
                # the quorum queues elect leaders among the two nodes left ...
                await eventually(lambda: leaders_moved(cluster, second, watched), timeout=30)
                await eventually(items.done(RESTART_AT), timeout=90)
                await eventually(webhooks.done(RESTART_AT), timeout=90)
                # ... and the worker's consumers, re-attached to them, apply webhooks meanwhile
                applied_while_down = sum((await inbox_counts(s.database_url)).values()) - applied_before
                assert applied_while_down > 100, applied_while_down
                down_s = time.monotonic() - killed_at
                await cluster.restart(first)
                await flowing
            finally:
                flowing.cancel()
                await asyncio.gather(flowing, return_exceptions=True)
            await all_terminal(s.database_url, ITEMS, timeout=120)
            counts = await eventually(
                lambda: _when_complete(inbox_counts(s.database_url), WEBHOOKS), timeout=60
            )
            running = await cluster.running_nodes(second)
            # nobody restarted: the same two processes served before, during and after
            assert worker.proc.returncode is None, worker.tail()
            assert receiver.proc.returncode is None, receiver.tail()
            assert failed_over_from(receiver, first.port), receiver.tail()
            assert failed_over_from(worker, first.port), worker.tail()
        resent = sum(e.get("event") == "publish.resend" for e in receiver.events())
        print(
            f"cluster test: node 1 down {down_s:.1f}s, {applied_while_down} webhooks applied meanwhile; "
            f"done {time.monotonic() - killed_at:.1f}s after the kill, {time.monotonic() - began:.1f}s in "
            f"all; receiver: items {dict(items.statuses)}, webhooks {dict(webhooks.statuses)}, "
            f"{resent} publishes sent again"
        )

    assert running == node_names  # node 1 is back in the cluster
    # the receiver answered every request (no connection dropped), and never 503: two nodes of three
    # could always confirm, so a publish caught by the node loss was sent again on the new connection
    assert items.errors == webhooks.errors == []
    assert items.refusals == webhooks.refusals == [], (items.statuses, webhooks.statuses)
    # every webhook answered 200 applied exactly once
    assert len(counts) == WEBHOOKS and set(counts.values()) == {1}
    assert set(counts) == {h["item_id"] for h in hooks}
    # every Item to its end, once: one exchange, one funding source, verified once
    result = await outcome(s.database_url)
    assert_exactly_once(result, ITEMS, sandbox)
    assert result.states == {"atomic_verified": ITEMS}, result.states
    assert sandbox.state.calls["/item/public_token/exchange"] == ITEMS


async def _when_complete(counts: Awaitable[Counter[str]], size: int) -> Counter[str] | None:
    got = await counts
    return got if len(got) >= size else None
