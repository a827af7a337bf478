"""Ingest benchmark: signed Plaid webhooks into ``paw receiver``, counted on the queue.

    .venv/bin/python -m bench.ingest                  # 1 receiver; 16, 64, 256 connections, 10 s each
    .venv/bin/python -m bench.ingest --receivers 1,2  # also two receiver processes on the same port

The Plaid emulator runs in this process (so it can sign: it holds the private key), the receiver(s)
run as ``paw receiver`` subprocesses that fetch the verification key from it (``PLAID_BASE_URL``),
and a separate load-generator process (``wrk`` with ``bench/webhooks.lua``, else ``bench/loadgen.py``)
posts distinct, correctly signed bodies with keep-alive at a fixed concurrency for a fixed time. No
worker consumes: afterwards every message on the bench's webhooks queue is read and matched by
``event_id`` against every 200 the generator saw, so "lost" is counted, not assumed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import string
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika

from bench import common, floors, profile
from sandbox import webhook_bodies
from sandbox.app import SANDBOX, SandboxConfig, serve
from sandbox.state import SandboxState

ALNUM = string.ascii_letters + string.digits
TARGET = {"accepted_per_s": 1500, "p99_ms_at_64": 50, "rss_mb": 150}


def plaid_id(rng: random.Random) -> str:
    return "".join(rng.choices(ALNUM, k=37))


def realistic_body(rng: random.Random, n: int) -> bytes:
    """One of the webhooks Plaid sends most, as Plaid encodes it (2-space JSON, 250-700 bytes)."""
    item_id = plaid_id(rng)
    kind = n % 5
    if kind == 0:
        body = webhook_bodies.item_error(item_id)
    elif kind == 1:
        body = webhook_bodies.pending_expiration(item_id, time.time() + rng.randint(1, 30) * 86400)
    elif kind == 2:
        body = webhook_bodies.new_accounts_available(item_id)
    elif kind == 3:
        body = webhook_bodies.default_update(item_id, [plaid_id(rng)], {plaid_id(rng): ["routing"]})
    else:
        body = webhook_bodies.automatically_verified(item_id, plaid_id(rng))
    return webhook_bodies.encode(body)


def write_requests(state: SandboxState, path: Path, count: int, seed: int) -> int:
    """``count`` distinct bodies, each signed now; returns the mean body size."""
    rng = random.Random(seed)
    total = 0
    with path.open("wb") as f:
        for n in range(count):
            body = realistic_body(rng, n)
            total += len(body)
            f.write(f"{state.sign(body)} {len(body)}\n".encode() + body + b"\n")
    return total // max(count, 1)


def generator_command(
    client: str, url: str, requests: Path, ids: Path, concurrency: int, duration: float
) -> list[str]:
    if client == "wrk":
        threads = 2 if concurrency >= 2 else 1
        return [
            "wrk",
            f"-t{threads}",
            f"-c{concurrency}",
            f"-d{int(duration)}s",
            "--timeout",
            "10s",
            "-s",
            str(common.ROOT / "bench" / "webhooks.lua"),
            url,
            "--",
            str(requests),
            str(ids),
            str(threads),
        ]
    return [
        sys.executable,
        "-m",
        "bench.loadgen",
        url,
        str(requests),
        str(ids),
        f"--concurrency={concurrency}",
        f"--duration={duration}",
    ]


async def run_generator(
    client: str, url: str, requests: Path, ids: Path, concurrency: int, duration: float
) -> tuple[dict[str, Any], set[str], float]:
    """Runs the load generator; returns its summary, the event ids of its 200s, and its CPU seconds."""
    for old in ids.parent.glob(ids.name + "*"):
        old.unlink()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = await asyncio.create_subprocess_exec(
        *generator_command(client, url, requests, ids, concurrency, duration),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=common.ROOT,
    )
    out, err = await proc.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((x for x in out.decode().splitlines() if x.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {err.decode()[-2000:]}")
    acked: set[str] = set()
    for part in ids.parent.glob(ids.name + "*"):
        acked.update(x for x in part.read_text().split() if x)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summary: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    return summary, acked, cpu


async def drain_ids(amqp_url: str, queue_name: str, expected_at_least: int) -> list[str]:
    """Waits until the queue holds at least ``expected_at_least`` messages and stops growing, then
    takes every message off it; returns their message ids (the receiver's event ids)."""
    conn = await aio_pika.connect(amqp_url)
    try:
        channel = await conn.channel()
        last, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            declared = await channel.declare_queue(queue_name, passive=True)
            count = declared.declaration_result.message_count or 0
            if count != last:
                last, stable_since = count, time.monotonic()
            elif count >= expected_at_least and time.monotonic() - stable_since > 0.5:
                break
            await asyncio.sleep(0.1)
        await channel.set_qos(prefetch_count=2000)
        queue = await channel.get_queue(queue_name, ensure=False)
        ids: list[str] = []
        done = asyncio.Event()

        async def take(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            ids.append(message.message_id or "")
            if len(ids) >= last:
                done.set()

        if last > 0:
            tag = await queue.consume(take, no_ack=True)
            await asyncio.wait_for(done.wait(), 120)
            await queue.cancel(tag)
        return ids
    finally:
        await conn.close()


async def purge(amqp_url: str, queue_name: str) -> None:
    conn = await aio_pika.connect(amqp_url)
    try:
        channel = await conn.channel()
        await (await channel.get_queue(queue_name, ensure=False)).purge()
    finally:
        await conn.close()


async def start_receivers(
    n: int, port: int, env: dict[str, str], log_dir: Path, *, supervised: bool
) -> tuple[list[common.Child], list[int]]:
    """N receivers on ``port``: ``paw receiver --processes N`` (``supervised``: the pids measured are
    its children's), or N ``paw receiver`` processes started here. Answers the children started and
    the pids that serve."""
    if supervised:
        parent = await common.spawn_paw(
            f"receiver-{n}x-supervised",
            ["receiver", "--port", str(port), "--admin-port", "0", "--processes", str(n)],
            env,
            log_dir,
        )

        async def all_started() -> bool:
            if parent.proc.returncode is not None:
                raise RuntimeError(f"{parent.name} exited; see {parent.log_path}")
            return bool(sum(e.get("event") == "receiver.started" for e in parent.log_events()) >= n)

        await common.wait_until(all_started, f"{n} receivers started", 60, 0.1)
        await common.wait_http_ok(f"http://127.0.0.1:{port}/healthz")
        return [parent], common.children_of(parent.pid) or [parent.pid]  # --processes 1: the parent serves
    children = [
        await common.spawn_paw(
            f"receiver-{n}x-{i}", ["receiver", "--port", str(port), "--admin-port", "0"], env, log_dir
        )
        for i in range(n)
    ]
    for child in children:
        await common.wait_logged(child, "receiver.started", 60)
    await common.wait_http_ok(f"http://127.0.0.1:{port}/healthz")
    return children, [c.pid for c in children]


async def measure_level(
    *,
    args: argparse.Namespace,
    state: SandboxState,
    url: str,
    pids: dict[str, list[int]],
    work_dir: Path,
    queue_name: str | None,
    concurrency: int,
    duration: float,
    seed: int,
) -> dict[str, Any]:
    requests = work_dir / f"requests-{seed}.txt"
    count = int(duration * args.max_rate)
    mean_size = await asyncio.to_thread(write_requests, state, requests, count, seed)
    if queue_name:
        await purge(args.amqp, queue_name)
    meter = common.CpuMeter(pids)
    meter.start()
    recordings = []
    if args.profile and queue_name and concurrency == args.profile_at:
        for pid in pids["receivers"]:
            out = work_dir / f"profile-receiver-{pid}-c{concurrency}.txt"
            recordings.append((out, await profile.record(pid, out, max(duration - 2, 1))))
    summary, acked, gen_cpu = await run_generator(
        args.client, url, requests, work_dir / f"ids-{seed}", concurrency, duration
    )
    cpu = meter.stop()
    cpu["load_generator"] = round(100 * gen_cpu / summary["duration_s"], 1)
    requests.unlink()
    result: dict[str, Any] = {
        "concurrency": concurrency,
        "accepted_per_s": round(summary["ok"] / summary["duration_s"]),
        **summary,
        "mean_body_bytes": mean_size,
        "cpu_pct_of_one_core": cpu,
    }
    for out, proc in recordings:
        await proc.wait()
        if out.exists():
            result["profile"] = summary_ = profile.summarize(out)
            profile.print_summary(out.name, summary_)
    if queue_name:
        queued = await drain_ids(args.amqp, queue_name, len(acked))
        queued_set = set(queued)
        result["queued"] = len(queued)
        result["lost"] = len(acked - queued_set)
        result["duplicated_on_queue"] = len(queued) - len(queued_set)
        result["queued_not_acked"] = len(queued_set - acked)  # in flight when wrk stopped
    return result


async def main(args: argparse.Namespace) -> dict[str, Any]:
    run = uuid.uuid4().hex[:6]
    work_dir = common.RESULTS / f"ingest-{run}"
    work_dir.mkdir(parents=True, exist_ok=True)
    db_name = f"paw_bench_ingest_{run}"
    exchange, prefix = f"paw-bench-{run}.events", f"paw-bench-{run}"
    queue_name = f"{prefix}.webhooks"
    report: dict[str, Any] = {
        "benchmark": "ingest",
        "machine": common.machine(),
        "client": args.client,
        "duration_s": args.duration,
        "targets": TARGET,
    }
    print(f"machine: {report['machine']}")
    print(f"load generator: {args.client}; logs and scratch files in {work_dir}")
    dsn = await common.create_database(args.pg, db_name)
    sandbox_runner, sandbox_url = await serve(SandboxConfig(), "127.0.0.1", 0)
    state = sandbox_runner.app[SANDBOX]
    env = common.child_env(
        DATABASE_URL=dsn,
        AMQP_URL=args.amqp,
        PLAID_BASE_URL=sandbox_url,
        ATOMIC_BASE_URL=f"{sandbox_url}/atomic",
        PAW_EXCHANGE=exchange,
        PAW_QUEUE_PREFIX=prefix,
        PAW_LOG_LEVEL=args.log_level,
        PAW_EVENT_LOOP=args.event_loop,
    )
    rabbit = common.pids_named("beam.smp")
    runs: list[dict[str, Any]] = []
    try:
        for n in args.receivers:
            port = common.free_port()
            receivers, serving = await start_receivers(n, port, env, work_dir, supervised=args.supervised)
            url = f"http://127.0.0.1:{port}/webhooks/plaid"
            pids = {"receivers": serving, "rabbitmq": rabbit}
            try:
                # warm up: every receiver fetches the key once, and the code paths get hot
                await measure_level(
                    args=args,
                    state=state,
                    url=url,
                    pids=pids,
                    work_dir=work_dir,
                    queue_name=queue_name,
                    concurrency=16,
                    duration=2,
                    seed=n * 1000,
                )
                for i, c in enumerate(args.concurrency):
                    level = await measure_level(
                        args=args,
                        state=state,
                        url=url,
                        pids=pids,
                        work_dir=work_dir,
                        queue_name=queue_name,
                        concurrency=c,
                        duration=args.duration,
                        seed=n * 1000 + i + 1,
                    )
                    level["receivers"] = n
                    level["event_loop"] = args.event_loop
                    level["supervised"] = args.supervised
                    level["receiver_peak_rss_mb"] = [common.peak_rss_mb(p) for p in pids["receivers"]]
                    level["loadavg"] = os.getloadavg()
                    runs.append(level)
                    print(
                        f"  {n} receiver(s), c={c}: {level['accepted_per_s']}/s, "
                        f"p99 {level['p99_ms']} ms, lost {level['lost']}, cpu {level['cpu_pct_of_one_core']}"
                    )
            finally:
                logged = dict.fromkeys(("webhook.rejected", "publish.failed", "http.unhandled"), 0)
                for child in receivers:
                    await child.stop()
                    for event, count in child.count_events(*logged).items():
                        logged[event] += count
                for r in runs:
                    if r["receivers"] == n:
                        r["receiver_errors_logged_all_levels"] = logged
        report["runs"] = runs
        report["floors"] = await measure_floors(args, state, work_dir, runs)
    finally:
        await sandbox_runner.cleanup()
        await common.delete_topology(args.amqp, exchange, prefix)
        await common.drop_database(args.pg, db_name)
    report["loadavg_at_end"] = os.getloadavg()
    return report


async def measure_floors(
    args: argparse.Namespace, state: SandboxState, work_dir: Path, runs: list[dict[str, Any]]
) -> dict[str, Any]:
    """The three floors, each alone, at concurrency 64 where concurrency applies."""
    port = common.free_port()
    bare = await common.spawn(
        "bare-aiohttp",
        [sys.executable, "-m", "bench.floors", "serve-bare", "--port", str(port)],
        common.child_env(),
        work_dir,
    )
    try:
        await common.wait_http_ok(f"http://127.0.0.1:{port}/healthz", bare)
        level = await measure_level(
            args=args,
            state=state,
            url=f"http://127.0.0.1:{port}/webhooks/plaid",
            pids={"bare_server": [bare.pid]},
            work_dir=work_dir,
            queue_name=None,
            concurrency=64,
            duration=min(args.duration, 5),
            seed=99,
        )
    finally:
        await bare.stop()
    verify = await asyncio.to_thread(floors.verify_rates)
    envelope_size = int(max((r["mean_body_bytes"] for r in runs), default=600) + 330)  # + envelope fields
    publish = await floors.confirmed_publish_rate(args.amqp, concurrency=64, seconds=5, size=envelope_size)
    return {
        "bare_aiohttp_read_body": {
            "per_s": level["accepted_per_s"],
            "p50_ms": level["p50_ms"],
            "p99_ms": level["p99_ms"],
            "cpu_pct_of_one_core": level["cpu_pct_of_one_core"],
        },
        "verify_one_core": verify,
        "confirmed_publish_c64": {**publish, "message_bytes": envelope_size},
    }


def print_report(report: dict[str, Any]) -> None:
    fl = report["floors"]
    http_floor = fl["bare_aiohttp_read_body"]["per_s"]
    verify_floor = fl["verify_one_core"]["pyjwt_es256_verify_per_s"]
    publish_floor = fl["confirmed_publish_c64"]["confirmed_publish_per_s"]
    rows = []
    for r in report["runs"]:
        rate = r["accepted_per_s"]
        rows.append(
            [
                r["receivers"],
                r["concurrency"],
                rate,
                r["p50_ms"],
                r["p99_ms"],
                r["max_ms"],
                r["non_200"] + r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"],
                r["lost"],
                max(r["receiver_peak_rss_mb"]),
                r["cpu_pct_of_one_core"]["receivers"],
                r["cpu_pct_of_one_core"]["rabbitmq"],
                r["cpu_pct_of_one_core"]["load_generator"],
                f"{rate / http_floor:.2f}",
                f"{rate / verify_floor:.2f}",
                f"{rate / publish_floor:.2f}",
            ]
        )
    print()
    print(
        common.table(
            [
                "rx",
                "conc",
                "accepted/s",
                "p50 ms",
                "p99 ms",
                "max ms",
                "errors",
                "lost",
                "peak RSS MB",
                "rx cpu%",
                "mq cpu%",
                "gen cpu%",
                "/http",
                "/verify",
                "/publish",
            ],
            rows,
        )
    )
    print()
    print(
        common.table(
            ["floor", "per s", "p50 ms", "p99 ms"],
            [
                [
                    "bare aiohttp, read body (c=64)",
                    http_floor,
                    fl["bare_aiohttp_read_body"]["p50_ms"],
                    fl["bare_aiohttp_read_body"]["p99_ms"],
                ],
                ["PyJWT ES256 verify (1 core)", verify_floor, None, None],
                ["paw verify() (1 core)", fl["verify_one_core"]["paw_verify_per_s"], None, None],
                [
                    f"confirmed publish, {fl['confirmed_publish_c64']['message_bytes']} B (c=64)",
                    publish_floor,
                    fl["confirmed_publish_c64"]["p50_ms"],
                    fl["confirmed_publish_c64"]["p99_ms"],
                ],
            ],
        )
    )


def ensure_wrk() -> bool:
    """wrk on PATH, installed from the distribution when missing (as root, or with sudo)."""
    if shutil.which("wrk"):
        return True
    apt = ["apt-get", "install", "-y", "-q", "wrk"]
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            return False
        apt = ["sudo", *apt]
    print("installing wrk (apt-get install wrk) ...", flush=True)
    subprocess.run(apt, check=False, stdout=subprocess.DEVNULL)  # noqa: S603 - a fixed command
    return shutil.which("wrk") is not None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="16,64,256", help="comma-separated (default 16,64,256)")
    parser.add_argument("--receivers", default="1", help="receiver processes, comma-separated runs")
    parser.add_argument("--event-loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument(
        "--supervised", action="store_true", help="run `paw receiver --processes N` instead of N receivers"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    parser.add_argument(
        "--client",
        choices=("wrk", "aiohttp"),
        default=None,
        help="the load generator (default: wrk, installed with apt-get when missing; else aiohttp)",
    )
    parser.add_argument("--max-rate", type=int, default=5000, help="distinct bodies signed per second of run")
    parser.add_argument("--profile", action="store_true", help="py-spy record the receiver(s) at one level")
    parser.add_argument("--profile-at", type=int, default=64, help="the concurrency to profile at")
    parser.add_argument("--log-level", default="info", help="the receivers' PAW_LOG_LEVEL")
    parser.add_argument("--pg", default=os.environ.get("PAW_BENCH_PG", common.DEFAULT_PG), help="admin DSN")
    parser.add_argument("--amqp", default=os.environ.get("PAW_BENCH_AMQP", common.DEFAULT_AMQP))
    args = parser.parse_args(argv)
    args.concurrency = [int(x) for x in args.concurrency.split(",")]
    args.receivers = [int(x) for x in args.receivers.split(",")]
    if args.client is None:
        args.client = "wrk" if ensure_wrk() else "aiohttp"
    return args


if __name__ == "__main__":
    parsed = parse_args()
    result = asyncio.run(main(parsed))
    print_report(result)
    print(f"\nwritten: {common.write_result('ingest', result)}")
