"""Replay jobs on the real broker and database: a worker runs them at their rate, they can be
cancelled, a stopped worker queues its job again and a killed one's is taken over, and the CLI
queues, follows, shows and cancels them."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from structlog.testing import capture_logs

from tests.helpers import (
    Letter,
    RunningWorker,
    dead_headers,
    eventually,
    paw_env,
    queue_messages,
    run_paw,
)
from tests.integration.test_dlq import actions, depth, fetch, paw, put_dead
from worker.bus import dead_index, dlq_jobs
from worker.bus.dlq import Filters
from worker.bus.dlq_jobs import Job, JobRunner
from worker.errors import DlqError
from worker.runner import run_worker
from worker.services import Services
from worker.settings import Settings

ROUTING_KEY = "jobs.test"  # bound to nothing but the test's target queue
JOB_FIELDS = {
    "id",
    "action",
    "actor",
    "status",
    "filters",
    "rate",
    "selected",
    "done",
    "replayed",
    "already",
    "failed",
    "error",
    "action_id",
    "cancel_requested",
    "runs",
    "created_at",
    "started_at",
    "finished_at",
    "heartbeat_at",
    "claimed_by",
}


def letter(i: int, code: str = "INSTITUTION_DOWN", routing_key: str = ROUTING_KEY) -> Letter:
    body = json.dumps({"n": i, "nonce": uuid.uuid4().hex}).encode()
    return Letter(body, dead_headers(routing_key, code=code), str(uuid.uuid4()))


@pytest.fixture
async def target(services: Services, settings: Settings) -> AsyncIterator[str]:
    """A queue that receives every replayed ``jobs.*`` message (nobody consumes it)."""
    name = f"{settings.queue_prefix}.replayed"
    conn = await aio_pika.connect(settings.amqp_url)
    channel = await conn.channel()
    queue = await channel.declare_queue(name, durable=True)
    await queue.bind(await channel.get_exchange(settings.exchange), "jobs.#")
    try:
        yield name
    finally:
        await channel.queue_delete(name)
        await conn.close()


async def start_worker(services: Services) -> RunningWorker:
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_worker(services, stop, ready=ready, drain_timeout=10))
    await asyncio.wait_for(ready.wait(), 10)
    return RunningWorker(stop, task)


async def job_of(services: Services, job_id: int) -> Job:
    job = await dlq_jobs.get(services.pool, job_id)
    assert job is not None
    return job


async def until(services: Services, job_id: int, ok: Any, *, timeout: float = 30) -> Job:
    """The job, once ``ok(job)`` holds."""

    async def check() -> Job | None:
        job = await job_of(services, job_id)
        return job if ok(job) else None

    found: Job = await eventually(check, timeout=timeout, interval=0.05)
    return found


def finished(job: Job) -> bool:
    return job.finished


async def recorded(services: Services) -> int:
    n: int = await services.pool.fetchval("SELECT count(*) FROM dlq_replayed")
    return n


def bodies(messages: Sequence[aio_pika.abc.AbstractIncomingMessage]) -> list[bytes]:
    return [m.body for m in messages]


# -- A job through a worker ------------------------------------------------------------------------


async def test_a_job_replays_at_its_rate_through_a_worker_and_ends_done(
    services: Services,
    settings: Settings,
    target: str,
    worker: RunningWorker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    letters = [letter(i) for i in range(10)]
    await put_dead(settings, letters)
    ran = await paw(
        settings,
        capsys,
        "dlq",
        "replay",
        "--all",
        "--yes",
        "--job",
        "--rate",
        "20",
        "--actor",
        "alice",
        "--json",
    )
    assert ran.code == 0
    queued = ran.json()
    assert set(queued) == JOB_FIELDS and queued["status"] == "queued" and queued["actor"] == "alice"
    assert (queued["filters"], queued["rate"], queued["action_id"]) == ({"all": True}, 20.0, None)

    job = await until(services, queued["id"], finished)
    assert job.status == "done" and job.succeeded and job.runs == 1
    assert (job.selected, job.done, job.replayed, job.already, job.failed) == (10, 10, 10, 0, 0)
    assert job.started_at is not None and job.finished_at is not None
    assert job.finished_at - job.started_at >= timedelta(seconds=9 / 20)  # paced: 10 at 20 a second
    assert bodies(await queue_messages(settings.amqp_url, target)) == [x.body for x in letters]  # in order
    assert await depth(settings) == 0 and await dead_index.counts(services.pool) == {"replayed": 10}
    (action,) = await actions(settings)
    assert (action["id"], action["action"], action["actor"]) == (job.action_id, "replay", "alice")
    assert action["filters"] == {"all": True, "rate": 20.0, "job": job.id}
    assert action["message_count"] == 10 and action["finished_at"] is not None and not action["dry_run"]
    assert await recorded(services) == 10


async def test_cancel_mid_way_stops_cleanly_and_the_rest_stays_dead(
    services: Services,
    settings: Settings,
    target: str,
    worker: RunningWorker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    letters = [letter(i) for i in range(30)]
    await put_dead(settings, letters)
    job_id = await dlq_jobs.enqueue(services.pool, "replay", Filters(), None, 5.0, "bob")
    await until(services, job_id, lambda j: j.status == "running" and j.done >= 3)  # progress as it goes

    ran = await paw(settings, capsys, "dlq", "job", "cancel", str(job_id))
    assert ran.code == 0 and "cancel requested" in ran.out
    job = await until(services, job_id, finished)
    n = job.replayed
    assert job.status == "cancelled" and job.cancel_requested and 3 <= n < 30
    assert (job.selected, job.done, job.failed) == (30, n, 0)
    assert (await paw(settings, capsys, "dlq", "job", str(job_id))).out.count("cancelled") == 1

    # what was replayed is recorded; the rest is on the dead queue, in order, indexed as dead
    assert await recorded(services) == n
    assert await dead_index.counts(services.pool) == {"replayed": n, "dead": 30 - n}
    listed = (await paw(settings, capsys, "dlq", "list", "--json")).json()
    assert [r["key"] for r in listed] == [x.key for x in letters[n:]]
    (action,) = await actions(settings)
    assert (action["actor"], action["message_count"]) == ("bob", n) and action["finished_at"] is not None
    assert bodies(await queue_messages(settings.amqp_url, target)) == [x.body for x in letters[:n]]
    assert bodies(await queue_messages(settings.amqp_url, services.topo.dead_queue)) == [
        x.body for x in letters[n:]
    ]


async def test_a_stopped_worker_queues_its_job_again_and_the_next_finishes_it_exactly_once(
    services: Services, settings: Settings, target: str
) -> None:
    """SIGTERM (the worker's stop): the runner stops between two messages, gives the dead queue
    back, and leaves the job `queued` with its counts; the next worker resumes it at once."""
    letters = [letter(i) for i in range(20)]
    await put_dead(settings, letters)
    first = await start_worker(services)
    job_id = await dlq_jobs.enqueue(
        services.pool, "replay", Filters(code="INSTITUTION_DOWN"), None, 10.0, "cy"
    )
    running = await until(services, job_id, lambda j: j.status == "running" and j.done >= 3)
    with capture_logs() as logs:
        await first.shutdown()
    assert any(e["event"] == "dlq_job.requeued" for e in logs)

    stopped = await job_of(services, job_id)
    n = stopped.replayed
    assert stopped.status == "queued" and stopped.claimed_by is None and stopped.heartbeat_at is None
    assert stopped.runs == 1 and stopped.finished_at is None and running.action_id == stopped.action_id
    assert 3 <= n < 20 and n == await recorded(services) == stopped.done
    assert await depth(settings) == 20 - n  # everything it held is back

    second = await start_worker(services)
    try:
        job = await until(services, job_id, finished)
    finally:
        await second.shutdown()
    assert job.status == "done" and job.runs == 2 and job.action_id == stopped.action_id
    assert (job.selected, job.done, job.replayed, job.already, job.failed) == (20, 20, 20, 0, 0)
    published = await queue_messages(settings.amqp_url, target)
    assert sorted(bodies(published)) == sorted(x.body for x in letters)  # each exactly once
    assert await recorded(services) == 20 and await depth(settings) == 0
    (action,) = await actions(settings)  # one audit row for the job, across both runs
    assert action["message_count"] == 20 and action["finished_at"] is not None


async def test_a_killed_worker_s_job_is_taken_over_and_nothing_is_lost(
    services: Services, settings: Settings, target: str, tmp_path: Path
) -> None:
    letters = [letter(i) for i in range(20)]
    await put_dead(settings, letters)
    job_id = await dlq_jobs.enqueue(services.pool, "replay", Filters(), None, 10.0, "dee")
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker.cli",
            "worker",
            env=paw_env(settings, PAW_ADMIN_PORT="0", PAW_LOG_LEVEL="warning"),
            stdout=out,
            stderr=out,
        )
    try:
        killed = await until(services, job_id, lambda j: j.status == "running" and j.done >= 3)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL, log.read_text()
    left = await job_of(services, job_id)
    assert left.status == "running" and left.claimed_by == killed.claimed_by  # until its heartbeat is stale

    stop = asyncio.Event()
    runner = JobRunner(
        services.pool, services.connection, services.topo, services.publisher, stale_s=2.0, poll_s=0.2
    )
    task = asyncio.create_task(runner.run(stop))
    try:
        job = await until(services, job_id, finished)
    finally:
        stop.set()
        await task
    assert job.status == "done" and job.runs == 2 and job.claimed_by == runner.name
    assert job.replayed == 20 and job.failed == 0 and job.done == job.selected >= 20
    assert await recorded(services) == 20 and await depth(settings) == 0
    published = await queue_messages(settings.amqp_url, target)
    assert {m.message_id for m in published} == {x.message_id for x in letters}  # none lost
    # none twice, unless the kill fell between a confirm and its record (see worker/bus/dlq.py):
    # then that one message went out twice with its message id, which consumers deduplicate on
    assert len(published) - 20 in (0, 1)


async def test_two_jobs_on_two_workers_run_one_after_the_other(
    services: Services, settings: Settings, target: str, worker: RunningWorker
) -> None:
    down, bad = (
        [letter(i, "INSTITUTION_DOWN") for i in range(5)],
        [letter(i, "ITEM_LOCKED") for i in range(5)],
    )
    await put_dead(settings, [*down, *bad])
    other = await start_worker(services)
    try:
        first = await dlq_jobs.enqueue(
            services.pool, "replay", Filters(code="INSTITUTION_DOWN"), None, 20.0, "e"
        )
        second = await dlq_jobs.enqueue(services.pool, "replay", Filters(code="ITEM_LOCKED"), None, 20.0, "e")
        a = await until(services, first, finished)
        b = await until(services, second, finished)
    finally:
        await other.shutdown()
    assert (a.status, a.replayed, b.status, b.replayed) == ("done", 5, "done", 5)
    assert a.finished_at is not None and b.started_at is not None and b.started_at >= a.finished_at
    assert sorted(bodies(await queue_messages(settings.amqp_url, target))) == sorted(
        x.body for x in down + bad
    )


async def test_a_long_job_gives_the_queue_back_and_replays_only_what_matched_when_it_was_made(
    services: Services, settings: Settings, target: str
) -> None:
    """Slices (here 0.3 s) keep the hold under the broker's consumer_timeout; a dead letter that
    arrives during the job (a replayed one dying again would be one) is not part of it."""
    letters = [letter(i) for i in range(10)]
    await put_dead(settings, letters)
    job_id = await dlq_jobs.enqueue(
        services.pool, "replay", Filters(code="INSTITUTION_DOWN"), None, 10.0, "f"
    )
    stop = asyncio.Event()
    runner = JobRunner(services.pool, services.connection, services.topo, services.publisher, slice_s=0.3)
    with capture_logs() as logs:
        task = asyncio.create_task(runner.run(stop))
        try:
            await until(services, job_id, lambda j: j.done >= 2)
            late = letter(99)
            await put_dead(settings, [late])
            job = await until(services, job_id, finished)
        finally:
            stop.set()
            await task
    assert job.status == "done" and (job.selected, job.replayed, job.already) == (10, 10, 0)
    assert len([e for e in logs if e["event"] == "dlq.replay_retake" and e["why"] == "slice"]) >= 2
    assert sorted(bodies(await queue_messages(settings.amqp_url, target))) == sorted(x.body for x in letters)
    assert [d.key for d in (await dead_index.page(services.pool, Filters())).letters] == [late.key]
    assert await depth(settings) == 1


# -- The CLI ---------------------------------------------------------------------------------------


async def test_wait_follows_the_job_and_exits_0_with_the_result(
    services: Services, settings: Settings, target: str, worker: RunningWorker
) -> None:
    down = [letter(i) for i in range(5)]
    keep = letter(9, code="INVALID_FIELD")
    await put_dead(settings, [*down, keep])
    code, out, err = await run_paw(
        settings, "dlq", "replay", "--code", "INSTITUTION_DOWN", "--wait", "--rate", "50", "--actor", "gil"
    )
    assert code == 0, err.decode()
    (job,) = await dlq_jobs.list_recent(services.pool)
    assert out.decode().strip() == (
        f"job #{job.id} done: replayed 5 to {settings.exchange}; 0 replayed before (acked only); "
        f"0 failed (still on {services.topo.dead_queue}); audit: dlq_actions #{job.action_id}"
    )
    assert f"job #{job.id} queued; following it" in err.decode() and job.actor == "gil"
    assert await depth(settings) == 1

    more = [letter(i) for i in range(10, 13)]
    await put_dead(settings, more)
    code, out, err = await run_paw(
        settings, "dlq", "replay", "--code", "INSTITUTION_DOWN", "--wait", "--json"
    )
    assert code == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines()]  # stdout: one JSON object a line
    assert all(set(line) == JOB_FIELDS for line in lines) and len({line["id"] for line in lines}) == 1
    assert lines[0]["status"] in ("queued", "running") and lines[-1]["status"] == "done"
    assert (lines[-1]["selected"], lines[-1]["replayed"], lines[-1]["filters"]) == (
        3,
        3,
        {"code": "INSTITUTION_DOWN"},
    )
    assert [line["done"] for line in lines] == sorted(line["done"] for line in lines)
    assert f"job #{lines[-1]['id']} done: replayed 3" in err.decode()  # people's line on stderr
    assert sorted(bodies(await queue_messages(settings.amqp_url, target))) == sorted(
        x.body for x in down + more
    )


async def test_wait_exits_1_when_a_message_could_not_be_replayed(
    services: Services,
    settings: Settings,
    target: str,
    worker: RunningWorker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lost = letter(0, routing_key="nothing.bound")  # routes nowhere: the broker returns it (mandatory)
    fine = letter(1)
    await put_dead(settings, [lost, fine])
    ran = await paw(settings, capsys, "dlq", "replay", "--all", "--yes", "--wait")
    assert ran.code == 1
    assert "done: replayed 1 " in ran.out and "1 failed" in ran.out
    (job,) = await dlq_jobs.list_recent(services.pool)
    assert (job.status, job.replayed, job.failed, job.succeeded) == ("done", 1, 1, False)
    assert bodies(await queue_messages(settings.amqp_url, services.topo.dead_queue)) == [lost.body]


async def test_ctrl_c_while_waiting_stops_following_not_the_job(
    services: Services, settings: Settings, target: str, worker: RunningWorker
) -> None:
    await put_dead(settings, [letter(i) for i in range(8)])
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.cli",
        "dlq",
        "replay",
        "--all",
        "--yes",
        "--wait",
        "--rate",
        "4",
        env=paw_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )

    async def running() -> Job | None:
        jobs = await dlq_jobs.list_recent(services.pool, 1)
        return jobs[0] if jobs and jobs[0].status == "running" and jobs[0].done >= 1 else None

    job: Job = await eventually(running, timeout=30)
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130, err.decode()
    assert f"stopped following; job #{job.id} goes on" in err.decode()
    done = await until(services, job.id, finished)
    assert done.status == "done" and done.replayed == 8 and not done.cancel_requested
    assert await depth(settings, target) == 8


async def test_job_jobs_and_cancel_of_a_queued_job(
    services: Services, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """No worker runs here: the jobs stay queued."""
    letters = [letter(i) for i in range(3)]
    await put_dead(settings, letters)
    a = (
        await paw(settings, capsys, "dlq", "replay", "--code", "X", "--job", "--json", "--actor", "hal")
    ).json()
    ran = await paw(
        settings, capsys, "dlq", "replay", "--all", "--yes", "--job", "--limit", "2", "--rate", "2"
    )
    assert ran.code == 0 and "queued: a worker runs it" in ran.out
    b = (await dlq_jobs.list_recent(services.pool, 1))[0]
    assert b.id > a["id"] and b.filters == {"all": True, "limit": 2} and b.limit == 2 and b.rate == 2.0

    listed = (await paw(settings, capsys, "dlq", "jobs", "--json")).json()
    assert [j["id"] for j in listed] == [b.id, a["id"]] and {j["status"] for j in listed} == {"queued"}
    assert all(set(j) == JOB_FIELDS for j in listed)
    table = " ".join((await paw(settings, capsys, "dlq", "jobs")).out.replace("│", " ").split())
    assert f"{a['id']} queued hal" in table and "code=X" in table and "all=True, limit=2" in table
    shown = (await paw(settings, capsys, "dlq", "job", str(a["id"]), "--json")).json()
    assert shown == {**a, "status": "queued"} and shown["filters"] == {"code": "X"}
    human = (await paw(settings, capsys, "dlq", "job", str(a["id"]))).out
    assert f"job #{a['id']}" in human and "queued" in human and "code=X" in human and "unpaced" in human

    cancel = await paw(settings, capsys, "dlq", "job", "cancel", str(a["id"]), "--json")
    assert cancel.code == 0
    assert (cancel.json()["status"], cancel.json()["cancel_requested"]) == ("cancelled", True)
    assert cancel.json()["finished_at"] is not None and cancel.json()["started_at"] is None
    again = await paw(settings, capsys, "dlq", "job", "cancel", str(a["id"]))
    assert again.code == 1 and "cancelled already" in again.out

    with pytest.raises(DlqError, match="no such job"):
        await paw(settings, capsys, "dlq", "job", "987654")
    for words in (["cancel"], ["nope"], ["cancel", "x"], ["1", "2"]):
        assert (await paw(settings, capsys, "dlq", "job", *words)).code == 2
    assert (await paw(settings, capsys, "dlq", "replay", "--all", "--dry-run", "--job")).code == 2
    assert (await paw(settings, capsys, "dlq", "replay", "--job")).code == 2  # nothing selected
    assert await actions(settings) == []  # a job's audit row is the worker's to write
    assert await depth(settings) == 3
    assert [r["status"] for r in await fetch(settings, "SELECT status FROM dlq_jobs ORDER BY id")] == [
        "cancelled",
        "queued",
    ]
