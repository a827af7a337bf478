"""``paw migrate|worker|receiver|sandbox|status|keys``: running and operating the processes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import aiormq
import asyncpg
from rich.console import Console
from rich.progress import Progress

from worker import reach
from worker.bus.topology import Topology
from worker.cli.context import Subparsers, broker, database, stop_on_signals
from worker.cli.render import status_view
from worker.errors import PawError
from worker.items.sealing import Sealer, check_keys, remaining, rotate
from worker.items.store import Store
from worker.migrate import migrate_database
from worker.settings import Settings
from worker.status import CRITICAL, gather, verdict

if TYPE_CHECKING:
    from sandbox.app import SandboxConfig

# A supervised child's own drain (the worker's 30 s, then its replay job and relay flush) fits in this.
SUPERVISED_DRAIN_S = 60.0

# The processes' modules (plaid-python, aiohttp servers, the emulator) are imported by the command
# that runs them: ``paw dlq list`` and ``paw --help`` should not pay half a second for them.


def register(sub: Subparsers) -> None:
    p = sub.add_parser("migrate", help="create the database if missing and apply migrations (DATABASE_URL)")
    p.set_defaults(func=cmd_migrate)
    p = sub.add_parser(
        "worker", help="consume and process events (DATABASE_URL, AMQP_URL, PLAID_*, ATOMIC_*)"
    )
    processes_option(p)
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("receiver", help="serve the webhook and submission HTTP API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--admin-port",
        type=int,
        default=9101,
        help="probes and /metrics on PAW_ADMIN_HOST (+10 per process)",
    )
    processes_option(p)
    p.set_defaults(func=cmd_receiver)
    p = sub.add_parser("sandbox", help="run the Plaid + Atomic emulator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--atomic-webhook-url", default=None, help="where Atomic-side webhooks go")
    p.add_argument("--atomic-delay", type=float, default=0.0, help="seconds before Atomic decides")
    p.add_argument("--latency-ms", type=float, default=0.0, help="latency added to every call")
    p.set_defaults(func=cmd_sandbox)
    p = sub.add_parser(
        "status",
        help="one screen for on-call: queues and their consumers, dead letters, Items, stuck Items; "
        "reads only, exits 0 ok / 1 warning / 2 critical",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--check", action="store_true", help="print only the verdict line (Nagios-style exit code)"
    )
    p.add_argument("--watch", type=float, metavar="SECONDS", help="show it again every SECONDS until Ctrl-C")
    p.set_defaults(func=cmd_status)
    keys = sub.add_parser("keys", help="token keys (PAW_TOKEN_KEYS)").add_subparsers(
        dest="keys_command", required=True
    )
    p = keys.add_parser("check", help="every key id in use is configured and opens its rows")
    p.set_defaults(func=cmd_keys_check)
    p = keys.add_parser(
        "rotate", help="re-seal every token with the first key of PAW_TOKEN_KEYS (online, resumable)"
    )
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--verbose", action="store_true", help="keep the progress bar on screen")
    p.set_defaults(func=cmd_keys_rotate)


def processes_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="run N processes under a supervisor that restarts and drains them "
        "(default PAW_PROCESSES, 0: one per core)",
    )


async def supervised(
    s: Settings,
    args: argparse.Namespace,
    argv_for: Callable[[int], list[str]],
    env_for: Callable[[int], dict[str, str]] = lambda _: {},
) -> int | None:
    """Runs ``paw <argv_for(i)>`` as several supervised processes (``--processes``, else
    ``PAW_PROCESSES``), answering the parent's exit code; None when one process is wanted (the
    caller then runs it in this one)."""
    from worker.supervise import machine_cores, pool_share, process_count, supervise

    if args.processes is not None and args.processes < 0:
        raise PawError("--processes must be 0 (one per core) or more")
    requested = args.processes if args.processes is not None else s.processes
    n = process_count(requested, machine_cores(), s.db_pool_size)
    if n == 1:
        return None
    stop = asyncio.Event()
    stop_on_signals(stop)
    return await supervise(
        n,
        lambda i: [*argv_for(i), "--processes", "1"],
        stop,
        env_for=lambda i: {**env_for(i), "PAW_DB_POOL_SIZE": str(pool_share(s.db_pool_size, n))},
        drain_s=SUPERVISED_DRAIN_S,
    )


def sandbox_config(s: Settings, **options: object) -> SandboxConfig:
    """The emulator's configuration: paw's own credentials, so the two recognise each other."""
    from sandbox.app import SandboxConfig

    return SandboxConfig(
        client_id=s.plaid_client_id,
        secret=s.plaid_secret,
        atomic_api_key=s.atomic_api_key,
        atomic_webhook_secret=s.atomic_webhook_secret,
        **options,  # type: ignore[arg-type]
    )


async def cmd_migrate(s: Settings, _: argparse.Namespace) -> int:
    applied = await migrate_database(s.database_url)
    print(f"migrations applied: {applied or 'none (up to date)'}")
    return 0


async def cmd_worker(s: Settings, args: argparse.Namespace) -> int:
    from worker.supervise import child_port

    parent = await supervised(
        s, args, lambda _: ["worker"], lambda i: {"PAW_ADMIN_PORT": str(child_port(s.admin_port, i))}
    )
    if parent is not None:
        return parent
    from worker.admin import operator_problems, service_checks, start_admin
    from worker.runner import run_worker
    from worker.services import open_services

    stop = asyncio.Event()
    stop_on_signals(stop)
    async with open_services(s, "paw-worker") as svc:
        admin = await start_admin(
            service_checks(svc), s.admin_host, s.admin_port, problems=operator_problems(svc)
        )
        try:
            await run_worker(svc, stop)
        finally:
            await admin.cleanup()
    return 0


async def cmd_receiver(s: Settings, args: argparse.Namespace) -> int:
    from worker.supervise import child_port

    parent = await supervised(
        s,
        args,
        lambda i: [
            *("receiver", "--host", args.host, "--port", str(args.port)),
            *("--admin-port", str(child_port(args.admin_port, i))),
        ],
    )
    if parent is not None:
        return parent
    from webhooks.server import serve_receiver

    stop = asyncio.Event()
    stop_on_signals(stop)
    await serve_receiver(s, args.host, args.port, stop, admin_port=args.admin_port)
    return 0


async def cmd_sandbox(s: Settings, args: argparse.Namespace) -> int:
    from sandbox.app import run_forever

    config = sandbox_config(
        s,
        atomic_webhook_url=args.atomic_webhook_url,
        atomic_decision_delay_s=args.atomic_delay,
        latency_ms=args.latency_ms,
    )
    task = asyncio.create_task(run_forever(config, args.host, args.port))
    stop = asyncio.Event()
    stop_on_signals(stop)
    print(f"sandbox on http://{args.host}:{args.port}  (Plaid at /, Atomic at /atomic)", flush=True)
    await stop.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return 0


async def cmd_status(s: Settings, args: argparse.Namespace) -> int:
    """Exits with the verdict: 0 ok, 1 warning (dead letters, stuck Items, setup problems, unsent
    events), 2 critical (a queue without consumer, a missing queue: it creates none)."""
    console = Console()
    try:
        return await _status(s, args, console)
    except (PawError, OSError, asyncpg.PostgresError, aiormq.exceptions.AMQPError) as e:
        # what cannot be read is not healthy: critical, in the one line a check reads
        why = reach.explain(e, s) if isinstance(e, PawError) else f"{type(e).__name__}: {e}"
        print(f"CRITICAL: cannot read the status: {why}")
        return CRITICAL


async def _status(s: Settings, args: argparse.Namespace, console: Console) -> int:
    async with database(s) as pool, broker(s, "paw-status") as connection:
        while True:
            status = await gather(Store(pool), connection, Topology.from_settings(s))
            code, line = verdict(status)
            if args.check:
                print(line)
            elif args.json:
                print(json.dumps(status.as_json(), indent=2))
            else:
                if args.watch:
                    console.clear()
                console.print(status_view(status, datetime.now(UTC)))
            if not args.watch:
                return code
            await asyncio.sleep(args.watch)


async def cmd_keys_check(s: Settings, _: argparse.Namespace) -> int:
    sealer = Sealer(s.token_keys)
    async with database(s) as pool:
        opened = await check_keys(pool, sealer)
        left = await remaining(pool, sealer)
    print(f"key ids in use, each opens its rows: {', '.join(opened) or 'none'}")
    print(f"rows not yet on the active key {s.active_key_id!r}: {left}")
    return 0


async def cmd_keys_rotate(s: Settings, args: argparse.Namespace) -> int:
    sealer = Sealer(s.token_keys)
    async with database(s) as pool:
        await check_keys(pool, sealer)
        total = await remaining(pool, sealer)
        with Progress(transient=not args.verbose) as progress:
            task = progress.add_task(f"re-sealing to key {sealer.active_key_id!r}", total=total)
            done = await rotate(pool, sealer, batch=args.batch, on_batch=lambda n: progress.advance(task, n))
    print(f"re-sealed {done} rows to key {s.active_key_id!r}; none left on older keys")
    return 0
