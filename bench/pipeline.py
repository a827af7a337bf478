"""Pipeline benchmark: N Items from submission to ``atomic_verified`` through real processes.

    .venv/bin/python -m bench.pipeline                      # 3,000 Items at 0 ms and at 100 ms per call
    .venv/bin/python -m bench.pipeline --items 1000 --latency-ms 100 --prefetch 512 --plaid-connections 128

Per upstream latency: ``paw sandbox --latency-ms L`` (Plaid and Atomic, its Atomic webhooks going to
the receiver), ``paw receiver``, ``paw worker`` (``--workers`` of them), each a subprocess on a fresh
database and bench-only exchange/queues. N public tokens are made first (not timed); then N
``item.link`` messages are published with confirms and the run ends when every Item is terminal.
Figures: Items/s, end-to-end latency from ``item_history`` (first ``link`` row to the
``atomic_verified`` row), Postgres transactions per Item (``pg_stat_database.xact_commit`` delta of
the bench database, less the benchmark's own polls), AMQP messages per Item (counted: submissions +
receiver publishes + worker retries/dead letters; deliveries from the workers' own counts; and the
broker's global counters, which include anyone else's traffic), worker peak RSS, CPU per process.

Then the webhook-event drain (first latency only, ``--events``): with the worker stopped, M
envelopes for the existing Items (``NEW_ACCOUNTS_AVAILABLE`` and ``PENDING_EXPIRATION``, distinct
bodies, exactly as the receiver publishes after verifying) go straight to the exchange; a fresh worker
drains them; the rate comes from the inbox rows' timestamps.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from bench import common, profile
from sandbox import webhook_bodies

TERMINAL = ["atomic_verified", "atomic_rejected", "failed", "revoked", "login_required"]
# An upstream app's queue for the outcome events, bound as README.md tells one to (``item.state.#``).
SUBSCRIBER = "bench-outcomes"
TARGET = {"items_per_s_at_0ms": 300, "items_per_s_at_100ms": 200, "events_per_s": 1000}


async def public_tokens(sandbox_url: str, n: int, webhook: str, concurrency: int = 128) -> list[str]:
    body = {
        "client_id": "paw-sandbox-client",
        "secret": "paw-sandbox-secret",
        "institution_id": "ins_109508",
        "initial_products": ["auth"],
        "options": {"override_username": "user_good", "webhook": webhook},
    }
    tokens: list[str] = []
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as http:

        async def one() -> None:
            async with sem, http.post(f"{sandbox_url}/sandbox/public_token/create", json=body) as r:
                r.raise_for_status()
                tokens.append((await r.json())["public_token"])

        await asyncio.gather(*(one() for _ in range(n)))
    return tokens


async def publish_all(
    amqp_url: str,
    exchange_name: str,
    messages: list[tuple[str, bytes]],
    concurrency: int = 128,
    rate: float = 0.0,
) -> list[float]:
    """Publishes (routing key, body) pairs with confirms, all at once or, with ``rate``, message i
    not before start + i / rate (an offered load); returns each one's confirm time (epoch s)."""
    conn = await aio_pika.connect(amqp_url)
    done = [0.0] * len(messages)
    try:
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(exchange_name, ensure=False)
        next_index = 0
        start = time.monotonic()

        async def publisher() -> None:
            nonlocal next_index
            while next_index < len(messages):
                i = next_index
                next_index += 1
                if rate and (wait := start + i / rate - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                rk, body = messages[i]
                await exchange.publish(
                    aio_pika.Message(
                        body,
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        message_id=str(uuid.uuid4()),
                    ),
                    rk,
                    mandatory=True,
                )
                done[i] = time.time()

        await asyncio.gather(*(publisher() for _ in range(concurrency)))
    finally:
        await conn.close()
    return done


async def xact_commit(admin_dsn: str, db: str, *, settle: bool) -> int:
    """``xact_commit`` of ``db``; with ``settle``, waits until it stops moving (stats are flushed by
    backends with a delay, and at their exit)."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        last, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + 20
        while True:
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            value = int(await conn.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname=$1", db))
            if not settle:
                return value
            if value != last:
                last, stable_since = value, time.monotonic()
            elif time.monotonic() - stable_since > 1.5 or time.monotonic() > deadline:
                return value
            await asyncio.sleep(0.25)
    finally:
        await conn.close()


class Poller:
    """The benchmark's own connection to the bench database; counts its own transactions."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.transactions = 0

    async def fetchval(self, sql: str, *args: Any) -> Any:
        self.transactions += 1
        return await self.conn.fetchval(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        self.transactions += 1
        return list(await self.conn.fetch(sql, *args))


def postgres_pids() -> list[int]:
    return common.pids_named("postgres")


async def subscribe(amqp_url: str, exchange: str, queue: str) -> None:
    """Declares the upstream app's quorum queue on the events exchange (declared as paw declares it):
    without one every outcome event comes back to the relay as unroutable, which costs the worker
    and the broker what no real deployment pays."""
    conn = await aio_pika.connect(amqp_url)
    try:
        channel = await conn.channel()
        events = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        declared = await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
        await declared.bind(events, "item.state.#")
    finally:
        await conn.close()


async def subscriber_count(amqp_url: str, queue: str) -> int:
    """How many outcome events the upstream app's queue holds."""
    conn = await aio_pika.connect(amqp_url)
    try:
        held = await (await conn.channel()).declare_queue(queue, passive=True)
        return held.declaration_result.message_count or 0
    finally:
        await conn.close()


async def unsubscribe(amqp_url: str, queue: str) -> None:
    conn = await aio_pika.connect(amqp_url)
    try:
        await (await conn.channel()).queue_delete(queue)  # a no-op when it is not there
    finally:
        await conn.close()


async def start_workers(
    args: argparse.Namespace, env: dict[str, str], log_dir: Path, tag: str
) -> list[common.Child]:
    wenv = {
        **env,
        **({"PAW_PREFETCH": str(args.prefetch)} if args.prefetch else {}),
        **({"PAW_PLAID_CONNECTIONS": str(args.plaid_connections)} if args.plaid_connections else {}),
        **({"PAW_DB_POOL_SIZE": str(args.db_pool)} if args.db_pool else {}),
    }
    workers = []
    for i in range(args.workers):
        port = common.free_port()
        child = await common.spawn_paw(
            f"worker-{tag}-{i}", ["worker"], {**wenv, "PAW_ADMIN_PORT": str(port)}, log_dir
        )
        child.admin_port = port
        workers.append(child)
    for w in workers:
        await common.wait_logged(w, "worker.started", 60)
    return workers


async def stop_workers(workers: list[common.Child]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for w in workers:
        await w.stop()
        stopped = next((e for e in w.log_events() if e.get("event") == "worker.stopped"), {})
        for k in ("acked", "retried", "dead_lettered", "requeued", "outcome_events"):
            totals[k] = totals.get(k, 0) + int(stopped.get(k, 0))
    return totals


async def unrecorded_window(workers: list[common.Child]) -> dict[str, Any]:
    """``paw_result_unrecorded_seconds`` summed over the workers' /metrics: how long upstream answers
    waited for their durable record (the window a killed worker loses them in). Quantiles are the
    histogram's bucket bounds (an upper bound), the mean is exact."""
    buckets: dict[float, float] = {}
    count = total = 0.0
    async with aiohttp.ClientSession() as http:
        for w in workers:
            async with http.get(f"http://127.0.0.1:{w.admin_port}/metrics") as resp:
                text = await resp.text()
            for family in text_string_to_metric_families(text):
                if family.name != "paw_result_unrecorded_seconds":
                    continue
                for s in family.samples:
                    if s.name.endswith("_bucket"):
                        le = float(s.labels["le"])
                        buckets[le] = buckets.get(le, 0.0) + s.value
                    elif s.name.endswith("_count"):
                        count += s.value
                    elif s.name.endswith("_sum"):
                        total += s.value

    def bound(q: float) -> float | None:
        return next((le * 1000 for le in sorted(buckets) if count and buckets[le] >= q * count), None)

    return {
        "results": int(count),
        "mean_ms": round(total / count * 1000, 2) if count else None,
        "p50_le_ms": bound(0.5),
        "p99_le_ms": bound(0.99),
        "max_le_ms": bound(1.0),
    }


def retry_reasons(workers: list[common.Child]) -> dict[str, int]:
    reasons: dict[str, int] = {}
    for w in workers:
        for e in w.log_events():
            if e.get("event") == "message.retry":
                key = str(e.get("error_code") or e.get("error_class"))
                reasons[key] = reasons.get(key, 0) + 1
    return reasons


async def profile_window(
    args: argparse.Namespace, children: list[common.Child], log_dir: Path, name: str
) -> list[tuple[Path, asyncio.subprocess.Process]]:
    if not args.profile:
        return []
    if not profile.available():
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    out = []
    for c in children:
        path = log_dir / f"profile-{name}-{c.name}.txt"
        out.append((path, await profile.record(c.pid, path, args.profile_seconds)))
    return out


async def profile_report(recordings: list[tuple[Path, asyncio.subprocess.Process]]) -> dict[str, Any]:
    summaries = {}
    for path, proc in recordings:
        await proc.wait()
        if path.exists():
            summaries[path.stem] = summary = profile.summarize(path)
            profile.print_summary(path.stem, summary)
    return summaries


async def run_latency(
    args: argparse.Namespace, latency_ms: float, run: str, with_events: bool
) -> dict[str, Any]:
    tag = f"{int(latency_ms)}ms"
    log_dir = common.RESULTS / f"pipeline-{run}"
    db = f"paw_bench_pipe_{run}_{tag}"
    exchange, prefix = f"paw-bench-{run}-{tag}.events", f"paw-bench-{run}-{tag}"
    dsn = await common.create_database(args.pg, db)
    sandbox_port, receiver_port = common.free_port(), common.free_port()
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    receiver_url = f"http://127.0.0.1:{receiver_port}"
    env = common.child_env(
        DATABASE_URL=dsn,
        AMQP_URL=args.amqp,
        PLAID_BASE_URL=sandbox_url,
        ATOMIC_BASE_URL=f"{sandbox_url}/atomic",
        PAW_EXCHANGE=exchange,
        PAW_QUEUE_PREFIX=prefix,
        PAW_LOG_LEVEL=args.log_level,
        PAW_EVENT_LOOP=args.event_loop,
        PAW_RETRY_BASE_MS=str(args.retry_base_ms),
    )
    result: dict[str, Any] = {"latency_ms": latency_ms, "items": args.items, "subscriber": args.subscriber}
    children: list[common.Child] = []
    subscriber = f"{prefix}.{SUBSCRIBER}"
    try:
        if args.subscriber:
            await subscribe(args.amqp, exchange, subscriber)
        sandbox = await common.spawn_paw(
            f"sandbox-{tag}",
            [
                "sandbox",
                "--port",
                str(sandbox_port),
                "--latency-ms",
                str(latency_ms),
                "--atomic-webhook-url",
                f"{receiver_url}/webhooks/atomic",
                "--atomic-delay",
                str(args.atomic_delay),
            ],
            env,
            log_dir,
        )
        children.append(sandbox)
        await common.wait_http_ok(f"{sandbox_url}/sandbox/control/stats", sandbox)
        receiver = await common.spawn_paw(
            f"receiver-{tag}", ["receiver", "--port", str(receiver_port), "--admin-port", "0"], env, log_dir
        )
        children.append(receiver)
        await common.wait_logged(receiver, "receiver.started", 60)
        workers = await start_workers(args, env, log_dir, tag)
        children.extend(workers)
        print(f"[{tag}] making {args.items} public tokens ...", flush=True)
        tokens = await public_tokens(sandbox_url, args.items, f"{receiver_url}/webhooks/plaid")
        poll_conn = await asyncpg.connect(dsn)
        poller = Poller(poll_conn)
        try:
            xact0 = await xact_commit(args.pg, db, settle=True)
            mq0 = await common.rabbit_counters()
            meter = common.CpuMeter(
                {
                    "workers": [w.pid for w in workers],
                    "receiver": [receiver.pid],
                    "sandbox": [sandbox.pid],
                    "rabbitmq": common.pids_named("beam.smp"),
                    "postgres_all": postgres_pids,
                }
            )
            links = [
                ("item.link", json.dumps({"public_token": t, "client_user_id": f"bench-{i}"}).encode())
                for i, t in enumerate(tokens)
            ]
            print(f"[{tag}] submitting {args.items} Items ...", flush=True)
            meter.start()
            recordings = await profile_window(args, [*workers, receiver, sandbox], log_dir, tag)
            t0 = time.time()
            confirmed = await publish_all(args.amqp, exchange, links, rate=args.rate)
            submitted_in = time.time() - t0

            async def all_terminal() -> bool:
                n = await poller.fetchval("SELECT count(*) FROM items WHERE state = ANY($1)", TERMINAL)
                return bool(n == args.items)

            await common.wait_until(all_terminal, f"{args.items} Items terminal", args.timeout, 0.25)
            cpu = meter.stop()
            wall = time.time() - t0
            result["profile"] = await profile_report(recordings)
            result["worker_peak_rss_mb"] = [common.peak_rss_mb(w.pid) for w in workers]
            result["receiver_peak_rss_mb"] = common.peak_rss_mb(receiver.pid)
            rows = await poller.fetch(
                """
                SELECT i.public_token_sha256 AS token_hash, i.state,
                       min(h.at) FILTER (WHERE h.to_state = 'link') AS link_at,
                       max(h.at) FILTER (WHERE h.to_state = 'atomic_verified') AS verified_at,
                       count(*) FILTER (WHERE h.to_state = 'atomic_verified') AS verified_rows,
                       count(*) AS history_rows
                FROM items i JOIN item_history h ON h.item_id = i.id
                GROUP BY i.id
                """
            )
            steps = await step_latencies(poller)
            states: dict[str, int] = {}
            for r in rows:
                states[r["state"]] = states.get(r["state"], 0) + 1
            verified = [r for r in rows if r["verified_at"] is not None]
            e2e = [(r["verified_at"] - r["link_at"]).total_seconds() * 1000 for r in verified]
            confirmed_at = {
                hashlib.sha256(t.encode()).hexdigest(): c for t, c in zip(tokens, confirmed, strict=True)
            }
            from_submit = [
                (r["verified_at"].timestamp() - confirmed_at[r["token_hash"]]) * 1000 for r in verified
            ]
            first_link = min(r["link_at"] for r in rows).timestamp()
            last_done = max(r["verified_at"] for r in verified).timestamp() if verified else time.time()
            result.update(
                {
                    "states": states,
                    "items_twice_verified": sum(1 for r in rows if r["verified_rows"] > 1),
                    "items_per_s": round(len(verified) / (last_done - t0), 1),
                    "items_per_s_history_only": round(len(verified) / (last_done - first_link), 1),
                    "wall_s": round(wall, 2),
                    "submit_s": round(submitted_in, 2),
                    "e2e_history_ms": {
                        "p50": round(common.percentile(e2e, 50), 1),
                        "p99": round(common.percentile(e2e, 99), 1),
                        "max": round(max(e2e, default=0), 1),
                    },
                    "from_submit_confirm_ms": {
                        "p50": round(common.percentile(from_submit, 50), 1),
                        "p99": round(common.percentile(from_submit, 99), 1),
                    },
                    "step_ms": steps,
                    "history_rows_per_item": round(sum(r["history_rows"] for r in rows) / len(rows), 2),
                    "cpu_pct_of_one_core": cpu,
                }
            )
            result["unrecorded_ms"] = await unrecorded_window(workers)
            retries = retry_reasons(workers)
            consumer_counts = await stop_workers(workers)
            if args.subscriber:
                result["outcome_events_on_subscriber_queue"] = await subscriber_count(args.amqp, subscriber)
            accepted = receiver.count_events("webhook.accepted")["webhook.accepted"]
            xact1 = await xact_commit(args.pg, db, settle=True)
            mq1 = await common.rabbit_counters()
            own = poller.transactions
            published = (
                args.items
                + accepted
                + consumer_counts.get("retried", 0)
                + consumer_counts.get("dead_lettered", 0)
                + consumer_counts.get("outcome_events", 0)
            )
            deliveries = sum(v for k, v in consumer_counts.items() if k != "outcome_events")
            result.update(
                {
                    "pg_xact_per_item": round((xact1 - xact0 - own) / args.items, 2),
                    "pg_xact_total": xact1 - xact0 - own,
                    "amqp_published_per_item": round(published / args.items, 2),
                    "amqp_delivered_per_item": round(deliveries / args.items, 2),
                    "amqp_counts": {
                        "item_link": args.items,
                        "receiver_webhooks": accepted,
                        **consumer_counts,
                        "retry_reasons": retries,
                    },
                    "broker_global_delta_per_item": (
                        {k: round(v / args.items, 2) for k, v in d.items()}
                        if (d := common.counters_delta(mq0, mq1))
                        else None
                    ),
                }
            )
            print_latency(result)
            if with_events and args.events > 0:
                result["events"] = await run_events(args, env, log_dir, tag, exchange, db, poller)
        finally:
            await poll_conn.close()
    finally:
        for c in reversed(children):
            await c.stop()
        if args.subscriber:
            await unsubscribe(args.amqp, subscriber)
        await common.delete_topology(args.amqp, exchange, prefix)
        await common.drop_database(args.pg, db)
    return result


async def step_latencies(poller: Poller) -> dict[str, dict[str, float]]:
    """p50/p99 of the time each step took: from the previous history row to this one."""
    rows = await poller.fetch(
        "SELECT from_state, to_state, "
        "extract(epoch FROM at - lag(at) OVER (PARTITION BY item_id ORDER BY id)) * 1000 AS ms "
        "FROM item_history"
    )
    by_step: dict[str, list[float]] = {}
    for r in rows:
        if r["ms"] is not None:
            by_step.setdefault(f"{r['from_state']}->{r['to_state']}", []).append(float(r["ms"]))
    return {
        step: {
            "p50": round(common.percentile(v, 50), 1),
            "p99": round(common.percentile(v, 99), 1),
            "n": len(v),
        }
        for step, v in by_step.items()
    }


def envelopes(plaid_item_ids: list[str], m: int) -> list[tuple[str, bytes]]:
    """``m`` webhook envelopes as the receiver publishes them after verification: for each Item one
    NEW_ACCOUNTS_AVAILABLE, then PENDING_EXPIRATIONs with distinct expiry times (distinct bodies:
    the inbox dedupes on the body hash)."""
    out = []
    now = int(time.time())
    for i in range(m):
        item_id = plaid_item_ids[i % len(plaid_item_ids)]
        round_ = i // len(plaid_item_ids)
        if round_ == 0:
            hook = webhook_bodies.new_accounts_available(item_id)
        else:
            hook = webhook_bodies.pending_expiration(item_id, now + 86400 * round_ + i)
        raw = webhook_bodies.encode(hook)
        envelope = {
            "event_id": str(uuid.uuid4()),
            "source": "plaid",
            "received_at": datetime.now(UTC).isoformat(),
            "body_sha256": hashlib.sha256(raw).hexdigest(),
            "sent_at": now,
            "kid": "bench",
            "webhook": json.loads(raw),
        }
        out.append((f"webhook.plaid.ITEM.{hook['webhook_code']}", json.dumps(envelope).encode()))
    return out


async def run_events(
    args: argparse.Namespace,
    env: dict[str, str],
    log_dir: Path,
    tag: str,
    exchange: str,
    db: str,
    poller: Poller,
) -> dict[str, Any]:
    ids = [
        r["plaid_item_id"]
        for r in await poller.fetch("SELECT plaid_item_id FROM items WHERE plaid_item_id IS NOT NULL")
    ]
    m = args.events
    print(f"[{tag}] publishing {m} webhook envelopes, then draining them ...", flush=True)
    await publish_all(args.amqp, exchange, envelopes(ids, m))
    xact0 = await xact_commit(args.pg, db, settle=True)
    own0 = poller.transactions
    mq0 = await common.rabbit_counters()
    workers = await start_workers(args, env, log_dir, f"{tag}-events")
    meter = common.CpuMeter(
        {
            "workers": [w.pid for w in workers],
            "rabbitmq": common.pids_named("beam.smp"),
            "postgres_all": postgres_pids,
        }
    )
    meter.start()
    started = time.time()
    recordings = await profile_window(args, workers, log_dir, f"{tag}-events")

    async def drained() -> bool:
        n = await poller.fetchval("SELECT count(*) FROM inbox WHERE routing_key LIKE 'webhook.plaid.%'")
        return bool(n >= m)

    await common.wait_until(drained, f"{m} events in the inbox", args.timeout, 0.25)
    cpu = meter.stop()
    wall = time.time() - started
    prof = await profile_report(recordings)
    first, last, outcomes = None, None, {}
    for r in await poller.fetch(
        "SELECT outcome, count(*) AS n, min(received_at) AS a, max(received_at) AS b FROM inbox "
        "WHERE routing_key LIKE 'webhook.plaid.%' GROUP BY outcome"
    ):
        outcomes[r["outcome"]] = r["n"]
        first = r["a"] if first is None else min(first, r["a"])
        last = r["b"] if last is None else max(last, r["b"])
    rss = [common.peak_rss_mb(w.pid) for w in workers]
    counts = await stop_workers(workers)
    xact1 = await xact_commit(args.pg, db, settle=True)
    mq1 = await common.rabbit_counters()
    assert first is not None and last is not None
    result = {
        "events": m,
        "events_per_s": round(m / max((last - first).total_seconds(), 1e-3)),
        "wall_s_from_worker_ready": round(wall, 2),
        "outcomes": outcomes,
        "consumer_counts": counts,
        "pg_xact_per_event": round((xact1 - xact0 - (poller.transactions - own0)) / m, 2),
        "worker_peak_rss_mb": rss,
        "cpu_pct_of_one_core": cpu,
        "broker_global_delta_per_event": (
            {k: round(v / m, 2) for k, v in d.items()} if (d := common.counters_delta(mq0, mq1)) else None
        ),
        "profile": prof,
    }
    print(
        f"[{tag}] events: {result['events_per_s']}/s, {result['pg_xact_per_event']} tx/event, "
        f"outcomes {outcomes}, worker RSS {rss} MB, cpu {cpu}"
    )
    return result


def print_latency(r: dict[str, Any]) -> None:
    print(
        f"[{int(r['latency_ms'])}ms] {r['items_per_s']} Items/s; e2e p50 {r['e2e_history_ms']['p50']} ms "
        f"p99 {r['e2e_history_ms']['p99']} ms; {r['pg_xact_per_item']} tx/Item; "
        f"{r['amqp_published_per_item']} published, {r['amqp_delivered_per_item']} delivered per Item; "
        f"states {r['states']}; answers not yet durable (ms) {r['unrecorded_ms']}; "
        f"worker RSS {r['worker_peak_rss_mb']} MB; cpu {r['cpu_pct_of_one_core']}",
        flush=True,
    )
    if r["subscriber"]:
        published, queued = r["amqp_counts"].get("outcome_events", 0), r["outcome_events_on_subscriber_queue"]
        print(
            f"    outcome events: {published} published, {queued} on the subscriber's queue"
            + ("" if queued == published else "  <-- NOT EQUAL: a lost or repeated outcome event")
        )
    print(
        "    steps (p50/p99 ms): " + "; ".join(f"{k} {v['p50']}/{v['p99']}" for k, v in r["step_ms"].items())
    )


def cpu_ms_per_item(run: dict[str, Any], groups: tuple[str, ...]) -> dict[str, float]:
    """Each group's CPU per Item: its share of one core over the run / Items per second."""
    cpu = run["cpu_pct_of_one_core"]
    return {g: round(cpu[g] / 100 / run["items_per_s"] * 1000, 2) for g in groups}


def print_report(report: dict[str, Any]) -> None:
    rows = []
    for r in report["runs"]:
        cpu = r["cpu_pct_of_one_core"]
        rows.append(
            [
                f"{int(r['latency_ms'])} ms",
                r["items"],
                r["items_per_s"],
                r["e2e_history_ms"]["p50"],
                r["e2e_history_ms"]["p99"],
                r["from_submit_confirm_ms"]["p99"],
                r["pg_xact_per_item"],
                r["amqp_published_per_item"],
                r["amqp_delivered_per_item"],
                max(r["worker_peak_rss_mb"]),
                r["items_twice_verified"],
                cpu["workers"],
                cpu["sandbox"],
                cpu["receiver"],
                cpu["rabbitmq"],
                cpu["postgres_all"],
                cpu["machine_busy_pct_all_cores"],
            ]
        )
    print()
    print(
        common.table(
            [
                "latency",
                "Items",
                "Items/s",
                "e2e p50 ms",
                "e2e p99 ms",
                "submit→done p99",
                "pg tx/Item",
                "pub/Item",
                "deliv/Item",
                "worker RSS MB",
                "twice",
                "worker%",
                "sandbox%",
                "rx%",
                "mq%",
                "pg%",
                "machine%",
            ],
            rows,
        )
    )
    print()
    print("CPU ms per Item by process group (the sandbox stands in for Plaid and Atomic: not the product)")
    print(
        "paw/sandbox: the sandbox does the same work per Item in every run, so its CPU per Item measures"
        " how fast the machine ran; the ratio compares runs taken at different speeds"
    )
    groups = ("workers", "receiver", "postgres_all", "rabbitmq", "sandbox")
    print(
        common.table(
            [
                "latency",
                "worker",
                "receiver",
                "Postgres",
                "RabbitMQ",
                "paw",
                "pg+mq",
                "sandbox",
                "paw/sandbox",
                "machine%",
            ],
            [
                [
                    f"{int(r['latency_ms'])} ms",
                    *(ms[g] for g in groups[:4]),
                    round(ms["workers"] + ms["receiver"], 2),
                    round(ms["postgres_all"] + ms["rabbitmq"], 2),
                    ms["sandbox"],
                    round((ms["workers"] + ms["receiver"]) / ms["sandbox"], 2) if ms["sandbox"] else "-",
                    r["cpu_pct_of_one_core"]["machine_busy_pct_all_cores"],
                ]
                for r in report["runs"]
                for ms in [cpu_ms_per_item(r, groups)]
            ],
        )
    )
    ev = next((r["events"] for r in report["runs"] if "events" in r), None)
    if ev:
        print()
        print(
            common.table(
                ["webhook events", "events/s", "pg tx/event", "worker RSS MB", "worker%", "mq%", "pg%"],
                [
                    [
                        ev["events"],
                        ev["events_per_s"],
                        ev["pg_xact_per_event"],
                        max(ev["worker_peak_rss_mb"]),
                        ev["cpu_pct_of_one_core"]["workers"],
                        ev["cpu_pct_of_one_core"]["rabbitmq"],
                        ev["cpu_pct_of_one_core"]["postgres_all"],
                    ]
                ],
            )
        )


async def main(args: argparse.Namespace) -> dict[str, Any]:
    run = uuid.uuid4().hex[:6]
    report: dict[str, Any] = {
        "benchmark": "pipeline",
        "machine": common.machine(),
        "settings": {
            "event_loop": args.event_loop,
            "offered_items_per_s": args.rate or "all at once",
            "workers": args.workers,
            "prefetch": args.prefetch or "default",
            "plaid_connections": args.plaid_connections or "default",
            "db_pool": args.db_pool or "default",
            "atomic_delay_s": args.atomic_delay,
            "retry_base_ms": args.retry_base_ms,
            "log_level": args.log_level,
        },
        "targets": TARGET,
        "runs": [],
    }
    print(f"machine: {report['machine']}")
    print(f"settings: {report['settings']}; logs in {common.RESULTS}/pipeline-{run}")
    for i, latency in enumerate(args.latency_ms):
        report["runs"].append(await run_latency(args, latency, run, with_events=i == 0))
    report["loadavg_at_end"] = os.getloadavg()
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument(
        "--latency-ms", default="0,100", help="sandbox latency per call, comma-separated runs"
    )
    parser.add_argument("--events", type=int, default=20000, help="webhook events to drain (0: skip)")
    parser.add_argument("--workers", type=int, default=1, help="paw worker processes")
    parser.add_argument("--event-loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--rate", type=float, default=0.0, help="offered Items/s (0: all at once)")
    parser.add_argument("--prefetch", type=int, default=0, help="PAW_PREFETCH (0: the default)")
    parser.add_argument("--db-pool", type=int, default=0, help="PAW_DB_POOL_SIZE (0: the default)")
    parser.add_argument(
        "--plaid-connections", type=int, default=0, help="PAW_PLAID_CONNECTIONS (0: the default)"
    )
    parser.add_argument("--atomic-delay", type=float, default=0.0, help="sandbox --atomic-delay (s)")
    parser.add_argument(
        "--no-subscriber",
        dest="subscriber",
        action="store_false",
        help="no upstream app's queue for the outcome events (each comes back unroutable)",
    )
    parser.add_argument("--retry-base-ms", type=int, default=1000, help="PAW_RETRY_BASE_MS")
    parser.add_argument("--log-level", default="info", help="PAW_LOG_LEVEL of every process")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--profile", action="store_true", help="py-spy record the processes (slower)")
    parser.add_argument("--profile-seconds", type=float, default=8)
    parser.add_argument("--pg", default=os.environ.get("PAW_BENCH_PG", common.DEFAULT_PG), help="admin DSN")
    parser.add_argument("--amqp", default=os.environ.get("PAW_BENCH_AMQP", common.DEFAULT_AMQP))
    args = parser.parse_args(argv)
    args.latency_ms = [float(x) for x in args.latency_ms.split(",")]
    return args


if __name__ == "__main__":
    parsed = parse_args()
    result = asyncio.run(main(parsed))
    print_report(result)
    print(f"\nwritten: {common.write_result('pipeline', result)}")
