"""Floors the receiver is measured against: what each of its three jobs costs on its own.

- a bare aiohttp handler that only reads the body (``python -m bench.floors serve-bare --port N``);
- bare ES256 verification with PyJWT, and the project's full ``verify()`` beside it;
- bare publishing with publisher confirms (aio-pika), messages of the same size, to a quorum queue
  behind a topic exchange, as the receiver publishes;
- and for the worker, the CPU of one Postgres round trip (``statements``), in the client and in the
  backend: on a connection, through the worker's pool, the worker's own statements and a bare
  INSERT, each awaited in turn on uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import aio_pika
import jwt
from aiohttp import web

from bench import common
from sandbox import webhook_bodies
from sandbox.signing import new_signing_key, plaid_verification_jwt
from webhooks.verification import unverified_kid, verify


async def _bare(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"event_id": str(uuid.uuid4())})


def serve_bare(port: int) -> None:
    app = web.Application()
    app.router.add_post("/webhooks/plaid", _bare)
    app.router.add_get("/healthz", lambda _: _ok())
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def _ok() -> web.Response:
    return web.json_response({"status": "ok"})


def verify_rates(seconds: float = 2.0) -> dict[str, float]:
    """Verifications per second on one core: bare PyJWT ES256, and the project's ``verify()`` (which
    adds the header checks, the JWK parse and the body hash) as the receiver calls it: the kid read
    first, then the verification, with more tokens than the per-token cache holds (each one cold)."""
    key = new_signing_key(int(time.time()))
    bodies = [webhook_bodies.encode(webhook_bodies.item_error(f"item-{i:06d}")) for i in range(3000)]
    now = int(time.time())
    tokens = [plaid_verification_jwt(b, key, now) for b in bodies]
    public, jwk = key.private_key.public_key(), key.jwk()

    def rate(fn: object) -> float:
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            for token, body in zip(tokens, bodies, strict=True):
                fn(token, body)  # type: ignore[operator]
            done += len(tokens)
        return done / (time.perf_counter() - started)

    return {
        "pyjwt_es256_verify_per_s": round(rate(lambda t, _: jwt.decode(t, key=public, algorithms=["ES256"]))),
        "paw_verify_per_s": round(rate(lambda t, b: (unverified_kid(t), verify(t, b, jwk, now=time.time())))),
    }


async def confirmed_publish_rate(
    amqp_url: str, *, concurrency: int, seconds: float, size: int
) -> dict[str, float]:
    """Persistent, mandatory publishes with confirms, ``concurrency`` awaiting at once on one
    channel, to a fresh quorum queue behind a fresh topic exchange (deleted afterwards)."""
    name = f"paw-bench-floor-{uuid.uuid4().hex[:6]}"
    body = b"x" * size
    conn = await aio_pika.connect(amqp_url)
    try:
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        await queue.bind(exchange, "webhook.#")
        latencies: list[float] = []
        deadline = time.monotonic() + seconds

        async def publisher() -> None:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                message = aio_pika.Message(
                    body, content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                )
                await exchange.publish(message, "webhook.plaid.ITEM.ERROR", mandatory=True)
                latencies.append(time.perf_counter() - started)

        started = time.monotonic()
        await asyncio.gather(*(publisher() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
        declared = await channel.declare_queue(name, passive=True)
        queued = declared.declaration_result.message_count or 0
        await channel.queue_delete(name)
        await channel.exchange_delete(name)
    finally:
        await conn.close()
    latencies.sort()
    return {
        "confirmed_publish_per_s": round(len(latencies) / elapsed),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
        "published": len(latencies),
        "queued": queued,
    }


async def statement_costs(admin_dsn: str, n: int = 3000) -> dict[str, dict[str, float]]:
    """Microseconds of CPU per statement, one at a time (the loop waits for each answer, as the
    worker's steps do), in this process (``client_us``: what a round trip costs the worker before
    any work) and in the Postgres backend that ran it (``server_us``, from its /proc stat: parse,
    plan, execute, and for a write the commit's WAL flush)."""
    import asyncpg

    from worker.items.model import Changes, Item
    from worker.items.states import Trigger
    from worker.items.store import Store, _init_connection, create_pool
    from worker.migrate import migrate_database
    from worker.sql import query

    name = f"paw_floors_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = admin_dsn.rsplit("/", 1)[0] + "/" + name
    try:
        await migrate_database(dsn)
        pool = await create_pool(dsn, min_size=1, max_size=1)
        conn = await asyncpg.connect(dsn)
        await _init_connection(conn)
        store = Store(pool)
        pool_pid: int = await pool.fetchval("SELECT pg_backend_pid()")
        conn_pid: int = await conn.fetchval("SELECT pg_backend_pid()")
        items: list[Item] = []

        async def create(i: int) -> None:
            item, _ = await store.create_item(
                public_token_sha256=f"floors-{i}", client_user_id="floors", requested_account_id=None,
                request_id=None, cause="floors", event_id=None,
            )  # fmt: skip
            items.append(item)

        async def transition(i: int) -> None:
            changes = Changes(plaid_item_id=f"floors-item-{i}", plaid_request_id=f"floors-req-{i}")
            await store.transition(items[i], Trigger.EXCHANGED, cause="floors", changes=changes)

        async def bare_insert(i: int) -> None:  # one row, two indexes: a write transaction's floor
            await pool.execute(
                "INSERT INTO item_history (item_id, from_state, to_state, trigger, cause)"
                " VALUES ($1, 'link', 'exchanged', 'exchanged', 'floors')",
                items[i].id,
            )

        get_item = query("get_item")
        cases: list[tuple[str, int, Callable[[int], Awaitable[object]]]] = [
            ("SELECT 1, connection", conn_pid, lambda _: conn.fetchval("SELECT 1")),
            ("SELECT 1, worker's pool", pool_pid, lambda _: pool.fetchval("SELECT 1")),
            ("Store.create_item", pool_pid, create),
            ("an Item's row, connection", conn_pid, lambda _: conn.fetchrow(get_item, items[0].id)),
            ("Store.get (pool + Item)", pool_pid, lambda _: store.get(items[0].id)),
            ("Store.transition", pool_pid, transition),
            ("INSERT item_history (bare)", pool_pid, bare_insert),
        ]
        warm = 200
        costs: dict[str, dict[str, float]] = {}
        for label, pid, statement in cases:
            for i in range(warm):
                await statement(i)
            started, server = time.process_time(), common.cpu_seconds(pid)
            for i in range(warm, warm + n):
                await statement(i)
            costs[label] = {
                "client_us": round((time.process_time() - started) / n * 1e6, 1),
                "server_us": round((common.cpu_seconds(pid) - server) / n * 1e6, 1),
            }
        await conn.close()
        await pool.close()
        return costs
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floors")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve-bare", help="the bare aiohttp handler")
    p.add_argument("--port", type=int, required=True)
    sub.add_parser("verify", help="verification rates")
    p = sub.add_parser("publish", help="confirmed publish rate")
    p.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--size", type=int, default=1000)
    p = sub.add_parser("statements", help="CPU per Postgres statement, client and backend (us)")
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres", help="admin DSN")
    args = parser.parse_args()
    if args.command == "serve-bare":
        serve_bare(args.port)
    elif args.command == "verify":
        print(verify_rates())
    elif args.command == "statements":
        import uvloop

        for label, cost in uvloop.run(statement_costs(args.pg)).items():
            print(f"{label:28} client {cost['client_us']:6.1f} us  Postgres {cost['server_us']:6.1f} us")
    else:
        print(
            asyncio.run(
                confirmed_publish_rate(
                    args.amqp, concurrency=args.concurrency, seconds=args.seconds, size=args.size
                )
            )
        )


if __name__ == "__main__":
    main()
