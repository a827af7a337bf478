"""Dead-letter index benchmark: ``paw dlq list`` and ``show`` over 50,000 indexed dead letters.

    .venv/bin/python -m bench.dlq_list              # 50,000 dead letters, 7 runs of each command
    .venv/bin/python -m bench.dlq_list --letters 200000

Fills a fresh database's ``dead_letters`` the way the worker does (``dead_index.record``, batched),
with a realistic mix (item.link, item.drive, Plaid webhooks; five reasons; bodies of 200-600 bytes),
then times each command as people run it: a new process-equivalent each time (the command function
``main()`` would call, which opens its own pool and, for the hint, a broker connection), wall clock,
median and worst of the runs. The floor beside each: one ``SELECT 1`` round trip on a new pool.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from bench import common
from worker.bus import dead_index
from worker.bus.dlq import DeadLetter, Filters, index_args
from worker.cli import build_parser
from worker.items.store import create_pool
from worker.messages import (
    H_ATTEMPTS,
    H_ERROR_CLASS,
    H_ERROR_CODE,
    H_ERROR_MESSAGE,
    H_FIRST_FAILURE,
    H_LAST_FAILURE,
    H_QUEUE,
    H_ROUTING_KEY,
)
from worker.settings import Settings
from worker.sql import query

TARGET_S = 1.0
CODES = ["INSTITUTION_DOWN", "INSTITUTION_NOT_RESPONDING", "INTERNAL_SERVER_ERROR", "RATE_LIMIT_EXCEEDED"]


def dead_headers(
    rk: str,
    *,
    last: datetime,
    attempts: int,
    code: str = "",
    error_class: str = "UpstreamError",
    message: str = "",
) -> dict[str, Any]:
    """Headers as the consumer writes them on a dead letter."""
    return {
        H_ROUTING_KEY: rk,
        H_ATTEMPTS: attempts,
        H_FIRST_FAILURE: (last - timedelta(seconds=340)).isoformat(),
        H_LAST_FAILURE: last.isoformat(),
        H_ERROR_CLASS: error_class,
        H_ERROR_MESSAGE: message or f"Plaid {code}: the institution is not responding",
        H_ERROR_CODE: code,
        H_QUEUE: "paw.items",
    }


def letter(rng: random.Random, n: int, now: datetime) -> DeadLetter:
    last = now - timedelta(seconds=rng.randint(0, 7 * 86400))
    kind = n % 3
    body: dict[str, Any]
    if kind == 0:
        body = {"public_token": f"public-sandbox-{uuid.uuid4()}", "client_user_id": f"u-{n}"}
        rk = "item.link"
    elif kind == 1:
        body = {"item_id": str(uuid.uuid4()), "reason": "x" * rng.randint(100, 400)}
        rk = "item.drive"
    else:
        body = {
            "event_id": str(uuid.uuid4()),
            "webhook": {"webhook_type": "ITEM", "webhook_code": "ERROR", "item_id": uuid.uuid4().hex},
        }
        rk = "webhook.plaid.ITEM.ERROR"
    if n % 10 == 9:
        headers = dead_headers(rk, error_class="Poison", message="fails its schema", attempts=1, last=last)
    else:
        headers = dead_headers(rk, code=rng.choice(CODES), attempts=rng.randint(1, 6), last=last)
    return DeadLetter.parse(json.dumps(body).encode(), headers, str(uuid.uuid4()))


async def fill(dsn: str, count: int, seed: int) -> float:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    pool = await create_pool(dsn, min_size=1, max_size=1)
    started = time.perf_counter()
    try:
        batch: list[tuple[Any, ...]] = []
        for n in range(count):
            batch.append(index_args(letter(rng, n, now), traceback="Traceback ...\n" * 20))
            if len(batch) == 1000 or n == count - 1:
                await pool.executemany(query("dead_letter_record"), batch)
                batch = []
        await pool.execute("ANALYZE dead_letters")
    finally:
        await pool.close()
    return time.perf_counter() - started


async def timed(settings: Settings, argv: list[str], runs: int) -> dict[str, float]:
    seconds = []
    for _ in range(runs):
        args = build_parser().parse_args(argv)
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert await args.func(settings, args) == 0
        seconds.append(time.perf_counter() - started)
    return {"median_s": statistics.median(seconds), "max_s": max(seconds)}


async def floor(dsn: str, runs: int) -> dict[str, float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        pool = await create_pool(dsn, min_size=1, max_size=2)
        await pool.fetchval("SELECT 1")
        await pool.close()
        seconds.append(time.perf_counter() - started)
    return {"median_s": statistics.median(seconds), "max_s": max(seconds)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    name = f"paw_bench_dlq_{uuid.uuid4().hex[:8]}"
    dsn = await common.create_database(args.pg, name)
    try:
        filled = await fill(dsn, args.letters, args.seed)
        settings = Settings(database_url=dsn, queue_prefix=f"bench-dlq-{uuid.uuid4().hex[:6]}")
        pool = await create_pool(dsn, min_size=1, max_size=1)
        try:
            some = (await dead_index.page(pool, Filters(), limit=1)).letters[0].short_id
        finally:
            await pool.close()
        commands = {
            "floor: new pool + SELECT 1": None,
            "dlq list": ["dlq", "list"],
            "dlq list --json": ["dlq", "list", "--json"],
            "dlq list --code INSTITUTION_DOWN --since 2d": [
                "dlq",
                "list",
                "--code",
                "INSTITUTION_DOWN",
                "--since",
                "2d",
            ],
            "dlq list --routing-key 'webhook.#' --min-attempts 3": [
                "dlq",
                "list",
                "--routing-key",
                "webhook.#",
                "--min-attempts",
                "3",
            ],
            "dlq show ID": ["dlq", "show", some],
        }
        results = {}
        for label, argv in commands.items():
            results[label] = (
                await floor(dsn, args.runs) if argv is None else await timed(settings, argv, args.runs)
            )
    finally:
        await common.drop_database(args.pg, name)
    rows = [
        [label, f"{r['median_s'] * 1000:.0f}", f"{r['max_s'] * 1000:.0f}"] for label, r in results.items()
    ]
    print(
        f"{args.letters} dead letters indexed in {filled:.1f} s; {args.runs} runs each; target < {TARGET_S} s"
    )
    print(common.table(["command", "median ms", "worst ms"], rows))
    out = {"letters": args.letters, "fill_s": filled, "results": results, "machine": common.machine()}
    print(f"written: {common.write_result('dlq_list', out)}", file=sys.stderr)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.dlq_list", description=__doc__.split("\n\n")[0])
    parser.add_argument("--letters", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
