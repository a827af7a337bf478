"""Console benchmark: the Overview page over 100,000 Items and 10,000 dead letters.

    .venv/bin/python -m bench.console_overview                  # 100,000 Items, 10,000 dead letters
    .venv/bin/python -m bench.console_overview --items 300000

Fills a fresh database (Items across every state with a week of update times and their history
rows, dead letters as the worker indexes them), starts the console in this process on a free port
(auth mode none, loopback) on real services (the local RabbitMQ for the queue reads), then times
``GET /console/`` (HTML) and ``GET /console/api/overview`` over HTTP, each several times: wall clock,
median and worst. The floor beside them: ``GET /console/static/console.css`` (the same server, no
reads). Target: the Overview renders in under 200 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from bench import common
from bench.dlq_list import fill as fill_dead_letters
from worker.console import auth
from worker.console.app import create_app
from worker.services import open_services
from worker.settings import load

TARGET_MS = 200
# Items in every state (70 % verified, 8 % failed, 6 % waiting for their user, the rest on the way),
# updated over a week; the failed and login_required ones hold an error code.
FILL_ITEMS = """
INSERT INTO items (id, public_token_sha256, client_user_id, state, plaid_item_id, error_code,
                   created_at, updated_at, version)
SELECT gen_random_uuid(), md5(g::text || random()::text), 'user-' || (g % 20000), st, 'pl-' || md5(g::text),
       CASE WHEN st IN ('failed', 'login_required')
            THEN (ARRAY['ITEM_LOGIN_REQUIRED', 'INVALID_PUBLIC_TOKEN', 'NO_USABLE_ACCOUNT'])[1 + g % 3] END,
       now() - make_interval(secs => g % 604800), now() - make_interval(secs => (g % 604800) / 2), 4
FROM (
    SELECT g, CASE WHEN r < 70 THEN 'atomic_verified' WHEN r < 78 THEN 'failed'
                   WHEN r < 84 THEN 'login_required' WHEN r < 89 THEN 'atomic_pending'
                   WHEN r < 93 THEN 'exchanged' WHEN r < 96 THEN 'awaiting_verification'
                   WHEN r < 98 THEN 'revoked' WHEN r < 99 THEN 'atomic_rejected' ELSE 'link' END AS st
    FROM (SELECT g, (random() * 100)::int AS r FROM generate_series(1, $1) AS g) AS x
) AS y
"""


async def fill_items(dsn: str, count: int) -> float:
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(FILL_ITEMS, count)
        await conn.execute(
            """
            INSERT INTO item_history (item_id, from_state, to_state, trigger, cause, at)
            SELECT id, NULL, 'link', 'submitted', 'item.link', created_at FROM items
            UNION ALL
            SELECT id, 'link', state, 'bench', 'bench', updated_at FROM items
            """
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def timed(session: aiohttp.ClientSession, url: str, runs: int) -> dict[str, float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        async with session.get(url) as resp:
            await resp.read()
            assert resp.status == 200, (url, resp.status)
        seconds.append(time.perf_counter() - started)
    return {"median_ms": statistics.median(seconds) * 1000, "max_ms": max(seconds) * 1000}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    name = f"paw_bench_console_{uuid.uuid4().hex[:8]}"
    dsn = await common.create_database(args.pg, name)
    prefix = f"bench-console-{uuid.uuid4().hex[:6]}"
    try:
        items_s = await fill_items(dsn, args.items)
        dead_s = await fill_dead_letters(dsn, args.dead_letters, seed=1)
        settings = load(
            {},
            database_url=dsn,
            amqp_url=args.amqp,
            queue_prefix=prefix,
            exchange=f"{prefix}.events",
            plaid_base_url="http://127.0.0.1:9",  # never called: the Overview only reads
        )
        async with open_services(settings, "paw-bench-console") as svc:
            app = create_app(settings, svc, auth.ConsoleAuth.from_env({}))
            runner = web.AppRunner(app)
            await runner.setup()
            port = common.free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            base = f"http://127.0.0.1:{port}"
            try:
                async with aiohttp.ClientSession() as session:
                    await timed(session, f"{base}/console/", 2)  # warm: templates compiled, pool filled
                    results = {
                        "floor: GET /console/static/console.css": await timed(
                            session, f"{base}/console/static/console.css", args.runs
                        ),
                        "GET /console/ (Overview, HTML)": await timed(session, f"{base}/console/", args.runs),
                        "GET /console/api/overview (JSON)": await timed(
                            session, f"{base}/console/api/overview", args.runs
                        ),
                    }
            finally:
                await runner.cleanup()
        await common.delete_topology(args.amqp, f"{prefix}.events", prefix)
    finally:
        await common.drop_database(args.pg, name)
    rows = [[k, f"{r['median_ms']:.0f}", f"{r['max_ms']:.0f}"] for k, r in results.items()]
    print(
        f"{args.items} Items (filled in {items_s:.1f} s), {args.dead_letters} dead letters "
        f"({dead_s:.1f} s); {args.runs} runs each; target < {TARGET_MS} ms"
    )
    print(common.table(["request", "median ms", "worst ms"], rows))
    out = {
        "items": args.items,
        "dead_letters": args.dead_letters,
        "results": results,
        "machine": common.machine(),
    }
    print(f"written: {common.write_result('console_overview', out)}", file=sys.stderr)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.console_overview", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dead-letters", dest="dead_letters", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
