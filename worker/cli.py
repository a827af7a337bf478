"""``paw``: the command line. ``main()`` parses, loads settings once, and runs one coroutine."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from collections.abc import Sequence

import aiormq
import asyncpg

from worker import cli_dlq, logs
from worker import settings as settings_mod
from worker.cli_dlq import Command
from worker.errors import PawError, SettingsError
from worker.settings import ENV, Settings

HELP_ENV = "\n".join(f"  {var:<32} {field}" for var, (field, _) in ENV.items())


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def cmd_migrate(s: Settings, _: argparse.Namespace) -> int:
    from worker.migrate import migrate_database

    applied = await migrate_database(s.database_url)
    print(f"migrations applied: {applied or 'none (up to date)'}")
    return 0


async def cmd_worker(s: Settings, _: argparse.Namespace) -> int:
    from worker.admin import service_checks, start_admin
    from worker.runner import run_worker
    from worker.services import open_services

    stop = asyncio.Event()
    _stop_on_signals(stop)
    async with open_services(s, "paw-worker") as svc:
        admin = await start_admin(service_checks(svc), s.admin_host, s.admin_port)
        try:
            await run_worker(svc, stop)
        finally:
            await admin.cleanup()
    return 0


async def cmd_receiver(s: Settings, args: argparse.Namespace) -> int:
    from webhooks.server import serve_receiver

    stop = asyncio.Event()
    _stop_on_signals(stop)
    await serve_receiver(s, args.host, args.port, stop, admin_port=args.admin_port)
    return 0


async def cmd_sandbox(s: Settings, args: argparse.Namespace) -> int:
    from sandbox.app import SandboxConfig, run_forever

    config = SandboxConfig(
        client_id=s.plaid_client_id,
        secret=s.plaid_secret,
        atomic_api_key=s.atomic_api_key,
        atomic_webhook_secret=s.atomic_webhook_secret,
        atomic_webhook_url=args.atomic_webhook_url,
        atomic_decision_delay_s=args.atomic_delay,
        latency_ms=args.latency_ms,
    )
    task = asyncio.create_task(run_forever(config, args.host, args.port))
    stop = asyncio.Event()
    _stop_on_signals(stop)
    print(f"sandbox on http://{args.host}:{args.port}  (Plaid at /, Atomic at /atomic)", flush=True)
    await stop.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return 0


async def cmd_item_show(s: Settings, args: argparse.Namespace) -> int:
    from worker.items.store import Store, create_pool

    try:
        item_id = uuid.UUID(args.id)
    except ValueError:
        print(f"not an item id: {args.id!r}", file=sys.stderr)
        return 2
    pool = await create_pool(s.database_url, min_size=1, max_size=1)
    try:
        store = Store(pool)
        item = await store.get(item_id)
        if item is None:
            print(f"no item {item_id}", file=sys.stderr)
            return 1
        history = await store.history(item_id)
    finally:
        await pool.close()
    if args.json:
        print(json.dumps({**item.public(), "history": [h.public() for h in history]}, indent=2))
        return 0
    from worker.report import print_item

    print_item(item, history)
    return 0


async def cmd_item_expiring(s: Settings, args: argparse.Namespace) -> int:
    from datetime import timedelta

    from worker.items.store import Store, create_pool
    from worker.report import expiring_table

    pool = await create_pool(s.database_url, min_size=1, max_size=1)
    try:
        items = await Store(pool).expiring(timedelta(days=args.days))
    finally:
        await pool.close()
    if args.json:
        print(json.dumps([i.public() for i in items], indent=2))
    else:
        from rich.console import Console

        Console().print(expiring_table(items, args.days))
    return 0


async def cmd_item_forget(s: Settings, args: argparse.Namespace) -> int:
    from worker.items.model import Cause
    from worker.services import open_services

    item_id = uuid.UUID(args.id)
    if not args.yes:
        question = f"Remove Item {item_id} at Plaid and Atomic and destroy its tokens? [y/N] "
        if not await cli_dlq.confirm(question):
            print("nothing done")
            return 1
    async with open_services(s, "paw-cli-forget", pool_size=2) as svc:
        item = await svc.store.get(item_id)
        if item is None:
            print(f"no item {item_id}", file=sys.stderr)
            return 1
        done = await svc.pipeline.forget(item, Cause("paw item forget", args.actor))
    print(f"item {item_id} forgotten: state {done.state.value if done else 'unchanged'}; tokens destroyed")
    return 0


async def cmd_status(s: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from rich.console import Console

    from worker.bus.publisher import connect
    from worker.bus.topology import Topology
    from worker.items.store import Store, create_pool
    from worker.status import gather, render

    pool = await create_pool(s.database_url, min_size=1, max_size=2)
    connection = await connect(s.amqp_url, "paw-status")
    try:
        status = await gather(Store(pool), connection, Topology.from_settings(s))
    finally:
        await connection.close()
        await pool.close()
    if args.json:
        print(json.dumps(status.as_json(), indent=2))
    else:
        Console().print(render(status, datetime.now(UTC)))
    return 0


async def cmd_keys_check(s: Settings, _: argparse.Namespace) -> int:
    from worker.items.sealing import Sealer, check_keys, remaining
    from worker.items.store import create_pool

    pool = await create_pool(s.database_url, min_size=1, max_size=2)
    try:
        sealer = Sealer(s.token_keys)
        opened = await check_keys(pool, sealer)
        left = await remaining(pool, sealer)
    finally:
        await pool.close()
    print(f"key ids in use, each opens its rows: {', '.join(opened) or 'none'}")
    print(f"rows not yet on the active key {s.active_key_id!r}: {left}")
    return 0


async def cmd_keys_rotate(s: Settings, args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from worker.items.sealing import Sealer, check_keys, remaining, rotate
    from worker.items.store import create_pool

    pool = await create_pool(s.database_url, min_size=1, max_size=2)
    try:
        sealer = Sealer(s.token_keys)
        await check_keys(pool, sealer)
        total = await remaining(pool, sealer)
        with Progress(transient=not args.verbose) as progress:
            task = progress.add_task(f"re-sealing to key {sealer.active_key_id!r}", total=total)
            done = await rotate(pool, sealer, batch=args.batch, on_batch=lambda n: progress.advance(task, n))
    finally:
        await pool.close()
    print(f"re-sealed {done} rows to key {s.active_key_id!r}; none left on older keys")
    return 0


async def cmd_demo(s: Settings, args: argparse.Namespace) -> int:
    from worker.demo import run_demo

    return await run_demo(s, keep=args.keep)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    parser = argparse.ArgumentParser(
        prog="paw",
        description="Plaid + Atomic account-funding worker.",
        epilog="Settings come from the environment:\n" + HELP_ENV,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="create the database if missing and apply migrations (DATABASE_URL)")
    sub.add_parser("worker", help="consume and process events (DATABASE_URL, AMQP_URL, PLAID_*, ATOMIC_*)")
    p = sub.add_parser("receiver", help="serve the webhook and submission HTTP API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--admin-port", type=int, default=9101, help="probes and /metrics, on PAW_ADMIN_HOST")
    p = sub.add_parser("sandbox", help="run the Plaid + Atomic emulator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--atomic-webhook-url", default=None, help="where Atomic-side webhooks go")
    p.add_argument("--atomic-delay", type=float, default=0.0, help="seconds before Atomic decides")
    p.add_argument("--latency-ms", type=float, default=0.0, help="latency added to every call")
    item = sub.add_parser("item", help="inspect Items").add_subparsers(dest="item_command", required=True)
    p = item.add_parser("show", help="an Item's state and history (DATABASE_URL)")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p = item.add_parser("forget", help="remove an Item at Plaid and Atomic and destroy its tokens")
    p.add_argument("id")
    p.add_argument("--yes", action="store_true", help="don't ask")
    p.add_argument("--actor", default=os.environ.get("USER", "unknown"), help="who (recorded in history)")
    p = item.add_parser(
        "expiring", help="Items whose consent expires or that Plaid disconnects within N days"
    )
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("status", help="one screen for on-call: queues, dead letters, Items, stuck Items")
    p.add_argument("--json", action="store_true")
    keys = sub.add_parser("keys", help="token keys (PAW_TOKEN_KEYS)").add_subparsers(
        dest="keys_command", required=True
    )
    keys.add_parser("check", help="every key id in use is configured and opens its rows")
    p = keys.add_parser(
        "rotate", help="re-seal every token with the first key of PAW_TOKEN_KEYS (online, resumable)"
    )
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--verbose", action="store_true", help="keep the progress bar on screen")
    p = sub.add_parser("demo", help="drive sandbox Items through the whole flow in one process")
    p.add_argument("--keep", action="store_true", help="keep the demo's queues afterwards")
    commands: dict[str, Command] = {
        "migrate": cmd_migrate,
        "worker": cmd_worker,
        "receiver": cmd_receiver,
        "sandbox": cmd_sandbox,
        "demo": cmd_demo,
        "item_show": cmd_item_show,
        "item_expiring": cmd_item_expiring,
        "item_forget": cmd_item_forget,
        "status": cmd_status,
        "keys_check": cmd_keys_check,
        "keys_rotate": cmd_keys_rotate,
    }
    for module in (cli_dlq,):
        commands.update(module.register(sub, groups={"item": item}))
    return parser, commands


def command_name(args: argparse.Namespace) -> str:
    """``item show`` -> ``item_show``: the subcommand path joined by underscores."""
    name: str = args.command
    nested = getattr(args, f"{name}_command", None)
    return f"{name}_{nested}" if nested else name


def main(argv: Sequence[str] | None = None) -> int:
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    try:
        s = settings_mod.load(os.environ)
    except SettingsError as e:
        print(f"paw: configuration error: {e}", file=sys.stderr)
        return 2
    logs.configure(s.log_format, s.log_level)
    coro = commands[command_name(args)](s, args)
    try:
        code: int = asyncio.run(coro)
        return code
    except PawError as e:
        print(f"paw: {e}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError, aiormq.exceptions.AMQPError) as e:
        print(f"paw: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
