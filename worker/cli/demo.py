"""``paw demo``: sandbox + receiver + worker in one process, a handful of Items through the flow.

It never writes to the configured database: it creates ``<name>_demo`` beside it (same server, same
role), migrates it, runs there and drops it at the end, even on failure. It uses the configured
RabbitMQ with its own exchange and queue names, deleted at the end too; ``--keep`` keeps the
database and the queues and says how to look at them. The emulator runs on free local ports. It
refuses to run with ``PLAID_ENV=production``.

What it prints is the story: the Items with their full ids, each one's history, the verdict, and
what to try next. The logs go to a file it names at the end (``--verbose``: to stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import asyncpg
from rich.console import Console
from rich.markup import escape

from worker import logs
from worker.bus.topology import undeclare
from worker.cli.context import Subparsers, database
from worker.cli.demo_upstream import UpstreamApp
from worker.cli.ops import sandbox_config
from worker.cli.render import history_table, items_table
from worker.errors import PawError
from worker.items.model import HistoryEntry, Item, token_hash
from worker.items.states import State
from worker.items.store import Store
from worker.migrate import migrate_database
from worker.settings import Settings

if TYPE_CHECKING:
    from plaid.api import plaid_api


# The emulator, the receiver, the worker and plaid-python are imported when the demo runs, not
# whenever the CLI starts.

INSTITUTION = "ins_109508"


@dataclass(frozen=True)
class Case:
    label: str
    username: str | None  # None: submit a public token Plaid never issued
    client_user_id: str
    via: str  # "http" or "amqp"
    expect: State
    password: str | None = None  # Plaid's Sandbox test password (pass_good when None)


# Plaid's user_custom recipes: the accounts a user's bank login gives, as JSON in the password.
SAVINGS_ONLY = (
    '{"override_accounts": [{"type": "depository", "subtype": "savings", "starting_balance": 210}]}'
)
NO_DEPOSITORY = (
    '{"override_accounts": [{"type": "credit", "subtype": "credit card", "starting_balance": 410},'
    ' {"type": "loan", "subtype": "student", "starting_balance": 65262}]}'
)


CASES = (
    Case(
        "happy path over HTTP; then the bank login breaks and is repaired",
        "user_good",
        "demo-user-1",
        "http",
        State.ATOMIC_VERIFIED,
    ),
    Case(
        "savings only, submitted over AMQP",
        "user_custom",
        "demo-user-2",
        "amqp",
        State.ATOMIC_VERIFIED,
        SAVINGS_ONLY,
    ),
    Case("Atomic rejects the customer", "user_good", "reject-demo-user-3", "http", State.ATOMIC_REJECTED),
    Case("invalid public token", None, "demo-user-4", "amqp", State.FAILED),
    Case("no checking or savings account", "user_custom", "demo-user-5", "http", State.FAILED, NO_DEPOSITORY),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def sandbox_public_token(
    api: plaid_api.PlaidApi, username: str, webhook: str, password: str | None = None
) -> str:
    from plaid.model.products import Products
    from plaid.model.sandbox_public_token_create_request import SandboxPublicTokenCreateRequest
    from plaid.model.sandbox_public_token_create_request_options import (
        SandboxPublicTokenCreateRequestOptions,
    )

    req = SandboxPublicTokenCreateRequest(
        institution_id=INSTITUTION,
        initial_products=[Products("auth")],
        options=SandboxPublicTokenCreateRequestOptions(
            webhook=webhook,
            override_username=username,
            **({"override_password": password} if password else {}),
        ),
    )
    return str(api.sandbox_public_token_create(req)["public_token"])


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "demo",
        help="drive sandbox Items through the whole flow in one process, in a database of its own",
        description="Creates <database>_demo beside DATABASE_URL's database, runs sandbox + receiver + "
        "worker there, prints the Items and their histories, and drops it again. Logs go to a file "
        "named at the end. Refused with PLAID_ENV=production.",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the demo's database and queues afterwards, to look at them"
    )
    p.add_argument("--verbose", action="store_true", help="logs on stderr instead of in a file")
    p.set_defaults(func=cmd_demo, refuse=refuse)


def refuse(environ: Mapping[str, str]) -> str | None:
    """Why the demo will not run with this environment, or None. ``main()`` asks before it loads the
    settings, so the refusal does not wait on production's required secrets."""
    if environ.get("PLAID_ENV", "").strip().lower() == "production":
        return (
            "refused with PLAID_ENV=production: the demo plays Plaid and Atomic with the sandbox and "
            "creates and drops a database beside DATABASE_URL's; run it with sandbox settings"
        )
    return None


# -- its own database ----------------------------------------------------------------------------

# On every database the demo creates, so that it only ever drops its own.
DEMO_MARK = "created by paw demo, dropped when it ends or by the next paw demo"


def database_name(dsn: str) -> str:
    parts = urlsplit(dsn)
    return unquote(parts.path.lstrip("/")) or unquote(parts.username or "") or "postgres"


def demo_database_url(dsn: str) -> str:
    """DATABASE_URL with ``<name>_demo`` for its database: same server, same role, same options."""
    name = f"{database_name(dsn)}_demo"
    if len(name.encode()) > 63:
        raise PawError(f"the demo's database name {name!r} is longer than Postgres allows (63 bytes)")
    return urlunsplit(urlsplit(dsn)._replace(path="/" + quote(name)))


def shown_url(dsn: str) -> str:
    """``dsn`` to print: its password masked."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:****@{host}"))


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def admin_connection(dsn: str) -> asyncpg.Connection:
    """A connection to issue CREATE/DROP DATABASE from: the configured database (nothing is written
    there), or ``postgres`` where that does not exist yet."""
    try:
        return await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        return await asyncpg.connect(urlunsplit(urlsplit(dsn)._replace(path="/postgres")))


@contextlib.asynccontextmanager
async def own_database(configured: str, *, keep: bool, console: Console) -> AsyncIterator[str]:
    """Creates the demo's database, yields its URL, and drops it afterwards (even on failure) unless
    ``keep``. One left by an earlier ``--keep`` is dropped first; a database of that name that the demo
    did not create is left alone, and the demo stops."""
    dsn = demo_database_url(configured)
    name = database_name(dsn)
    admin = await admin_connection(configured)
    try:
        existing = await admin.fetchrow(
            "SELECT shobj_description(oid, 'pg_database') AS note FROM pg_database WHERE datname = $1", name
        )
        if existing is not None and existing["note"] != DEMO_MARK:
            raise PawError(
                f"database {name} exists and paw demo did not create it; the demo runs in a database of "
                f"its own, <name>_demo, which it drops at the end: drop or rename {name} first"
            )
        if existing is not None:
            await admin.execute(f"DROP DATABASE {ident(name)} WITH (FORCE)")
            console.print(f"(dropped {escape(name)}, kept by an earlier paw demo --keep)")
        try:
            await admin.execute(f"CREATE DATABASE {ident(name)}")
        except asyncpg.InsufficientPrivilegeError as e:
            raise PawError(
                f"paw demo runs in a database of its own, {name}, and the role in DATABASE_URL may not "
                f"create it ({e}): grant it CREATEDB, or point DATABASE_URL at a server where it may"
            ) from None
        except asyncpg.DuplicateDatabaseError:
            raise PawError(f"database {name} appeared meanwhile: is another paw demo running?") from None
        await admin.execute(f"COMMENT ON DATABASE {ident(name)} IS '{DEMO_MARK}'")
    finally:
        await admin.close()
    try:
        yield dsn
    finally:
        if not keep:
            admin = await admin_connection(configured)
            try:
                await admin.execute(f"DROP DATABASE IF EXISTS {ident(name)} WITH (FORCE)")
            finally:
                await admin.close()


# -- quiet output --------------------------------------------------------------------------------


@contextlib.contextmanager
def logs_to_file(s: Settings) -> Iterator[Path]:
    """Points file descriptor 2 at a new file while the demo runs, so every log line lands there:
    paw's own, the libraries' (aiohttp, aio-pika, asyncpg through logging), Python's warnings.
    Yields the file's path; stderr is itself again afterwards."""
    fd, name = tempfile.mkstemp(prefix="paw-demo-", suffix=".log")
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(fd, 2)
    os.close(fd)
    logs.configure(s.log_format, s.log_level, service="demo", environ=os.environ)  # "auto": a file: JSON
    try:
        yield Path(name)
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        logs.configure(s.log_format, s.log_level, service="demo", environ=os.environ)


def demo_console() -> Console:
    return Console(width=None if Console().is_terminal else 150)


# -- the run -------------------------------------------------------------------------------------


async def run_demo(
    base: Settings,
    *,
    keep: bool = False,
    console: Console | None = None,
    timeout: float = 60,
    log_file: Path | None = None,
) -> int:
    if refuse({"PLAID_ENV": base.plaid_env}):
        raise PawError("paw demo does not run with PLAID_ENV=production")
    console = console or demo_console()
    run = uuid.uuid4().hex[:8]
    async with own_database(base.database_url, keep=keep, console=console) as dsn:
        s = dataclasses.replace(
            base, database_url=dsn, exchange=f"paw-demo-{run}.events", queue_prefix=f"paw-demo-{run}"
        )
        console.print(
            f"[bold]paw demo[/bold]: {len(CASES)} sandbox Items through receiver and worker, in database "
            f"{escape(database_name(dsn))} (made for this run) and queues {escape(s.queue_prefix)}.*\n"
        )
        await migrate_database(dsn)
        driven = await drive(s, keep=keep, console=console, timeout=timeout)
        items = driven[0] if driven else None
        ok = driven is not None and driven[1] and await tell(s, driven[0], console)
    console.print(
        "\n[green]demo finished: every Item ended where expected[/green]"
        if ok
        else "\n[red]demo failed[/red]"
    )
    where = f"database {escape(database_name(dsn))} and queues {escape(s.queue_prefix)}.*"
    console.print(f"kept: {where}" if keep else f"dropped: {where} (--keep keeps them)")
    console.print(f"logs: {escape(str(log_file))}" if log_file else "logs: on stderr (--verbose)")
    first = next((i for i in items or () if i is not None), None)
    look = f"DATABASE_URL={shown_url(dsn)} paw item show"
    console.print(
        f"try: {escape(look)} {first.id if first else '<item id>'}"
        if keep
        else f"try: paw demo --keep, then {escape(look)} <item id>",
        soft_wrap=True,
    )
    return 0 if ok else 1


async def drive(
    s: Settings, *, keep: bool, console: Console, timeout: float
) -> tuple[list[Item | None], bool] | None:
    """Starts the emulator, the receiver, the worker and an upstream app (its own queue, its
    callback endpoint), submits the cases and waits for them to settle; everything started is
    stopped again (and the queues deleted unless ``keep``). Returns the Items, and whether the
    upstream app learnt every transition both ways; None when a submission was refused."""
    import aiohttp
    import plaid
    from plaid.api import plaid_api

    from sandbox.app import serve
    from webhooks.server import start_receiver
    from worker.runner import run_worker
    from worker.services import open_services

    upstream = UpstreamApp(console)
    receiver_port = free_port()
    receiver_url = f"http://127.0.0.1:{receiver_port}"
    sandbox_runner, sandbox_url = await serve(
        sandbox_config(s, atomic_webhook_url=f"{receiver_url}/webhooks/atomic", atomic_decision_delay_s=0.2),
        "127.0.0.1",
        0,
    )
    s = dataclasses.replace(
        s, plaid_env="sandbox", plaid_base_url=sandbox_url, atomic_base_url=f"{sandbox_url}/atomic"
    )
    api = plaid_api.PlaidApi(
        plaid.ApiClient(
            plaid.Configuration(
                host=sandbox_url,
                api_key={
                    "clientId": s.plaid_client_id,
                    "secret": s.plaid_secret,
                    "plaidVersion": "2020-09-14",
                },
            )
        )
    )
    try:
        async with (
            upstream.callback_endpoint(free_port()) as callback_url,
            open_services(upstream.callbacks_for(s, callback_url), "paw-demo") as svc,
            upstream.subscribed(svc.connection, s.exchange),
        ):
            console.print(
                f"upstream app: a queue bound to item.state.# prints each outcome event as it arrives; "
                f"signed callbacks go to {escape(callback_url)}\n",
                soft_wrap=True,
            )
            receiver_runner, _ = await start_receiver(svc, "127.0.0.1", receiver_port)
            stop, ready = asyncio.Event(), asyncio.Event()
            worker = asyncio.create_task(run_worker(svc, stop, ready=ready))
            await ready.wait()
            try:
                tokens: list[str] = []
                for case in CASES:
                    if case.username is None:
                        token = f"public-sandbox-{uuid.uuid4()}"
                    else:
                        token = await asyncio.to_thread(
                            sandbox_public_token,
                            api,
                            case.username,
                            f"{receiver_url}/webhooks/plaid",
                            case.password,
                        )
                    tokens.append(token)
                    body = {"public_token": token, "client_user_id": case.client_user_id}
                    if case.via == "http":
                        async with (
                            aiohttp.ClientSession() as http,
                            http.post(
                                f"{receiver_url}/v1/items",
                                json=body,
                                headers={"Authorization": f"Bearer {s.api_keys[0]}"},
                            ) as resp,
                        ):
                            if resp.status != 202:
                                console.print(f"[red]POST /v1/items answered {resp.status}[/red]")
                                return None
                    else:
                        await svc.publisher.publish(
                            "item.link", json.dumps(body).encode(), message_id=str(uuid.uuid4())
                        )
                items = await wait_for_items(svc.store, tokens, timeout)
                if items[0] is not None and items[0].state is State.ATOMIC_VERIFIED:
                    items[0] = await login_breaks_and_is_repaired(svc.store, sandbox_url, items[0], timeout)
                return items, await upstream_learnt_everything(svc.store, upstream, items, console, timeout)
            finally:
                stop.set()
                await worker
                await receiver_runner.cleanup()
                if not keep:
                    channel = await svc.connection.channel()
                    await undeclare(channel, svc.topo)
                    await channel.close()
    finally:
        await sandbox_runner.cleanup()
        api.api_client.close()


async def upstream_learnt_everything(
    store: Store, upstream: UpstreamApp, items: list[Item | None], console: Console, timeout: float
) -> bool:
    """Waits until the upstream app has, for every Item, one outcome event per history row both on
    its queue and by callback, in sequence order; says what it got."""
    histories = {i.id: [h.to_state for h in await store.history(i.id)] for i in items if i is not None}

    def complete() -> bool:
        return all(
            [e["to_state"] for e in upstream.events_of(item_id, how)] == states
            for item_id, states in histories.items()
            for how in ("queue", "callback")
        )

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while True:
                upstream.arrived.clear()
                if complete():
                    break
                await upstream.arrived.wait()
    ok = complete() and upstream.bad_signatures == 0
    console.print(
        f"\nupstream app: {len(upstream.queued)} outcome events on its queue, {len(upstream.called_back)} "
        f"signed callbacks verified (standardwebhooks), {upstream.bad_signatures} refused; "
        + ("one per transition of every Item" if ok else "[red]transitions missing[/red]"),
        soft_wrap=True,
    )
    return ok


async def tell(s: Settings, items: list[Item | None], console: Console) -> bool:
    """Prints the Items and their histories; True when every one ended where its case expects."""
    rows = [(case.label, item) for case, item in zip(CASES, items, strict=True) if item is not None]
    console.print(items_table(rows))
    ok = True
    for case, item in zip(CASES, items, strict=True):
        if item is None:
            console.print(f"[red]{case.label}: no Item was created[/red]")
            ok = False
            continue
        console.print(f"\n[bold]{case.label}[/bold]: {item.state.value}")
        console.print(history_table(await history_of(s, item)))
        if item.state is not case.expect:
            console.print(f"[red]expected {case.expect.value}[/red]")
            ok = False
    return ok


async def login_breaks_and_is_repaired(store: Store, sandbox_url: str, item: Item, timeout: float) -> Item:
    """The sandbox plays the user's bank, through its HTTP levers (the demo holds no access token,
    as an app would not): the login breaks (a signed ITEM ERROR webhook reaches the receiver), then
    the user repairs it at the bank, outside this app, so Plaid sends LOGIN_REPAIRED and the Item goes
    back to verified. Both are beyond Plaid's real Sandbox, hence ``/sandbox/control/``."""
    import aiohttp

    async def control(path: str, body: dict[str, object]) -> None:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{sandbox_url}/sandbox/control/{path}", json=body) as resp,
        ):
            resp.raise_for_status()

    await control(
        "item/fire_webhook", {"item_id": item.plaid_item_id, "webhook_type": "ITEM", "webhook_code": "ERROR"}
    )
    await wait_for_state(store, item, State.LOGIN_REQUIRED, timeout)
    await control("item/repair_login", {"item_id": item.plaid_item_id, "elsewhere": True})
    return await wait_for_state(store, item, State.ATOMIC_VERIFIED, timeout)


async def wait_for_state(store: Store, item: Item, state: State, timeout: float) -> Item:
    deadline = time.monotonic() + timeout
    while True:
        current = await store.get(item.id)
        if current is not None and (current.state is state or time.monotonic() > deadline):
            return current
        await asyncio.sleep(0.05)


async def history_of(s: Settings, item: Item) -> list[HistoryEntry]:
    async with database(s) as pool:
        return await Store(pool).history(item.id)


async def wait_for_items(store: Store, tokens: list[str], timeout: float) -> list[Item | None]:
    """Polls until every Item has settled (a state the demo does not move on from), or the deadline."""
    settled = {State.ATOMIC_VERIFIED, State.ATOMIC_REJECTED, State.FAILED, State.REVOKED}
    deadline = time.monotonic() + timeout
    while True:
        items = [await store.get_by_token_hash(token_hash(t)) for t in tokens]
        if all(i is not None and i.state in settled for i in items) or time.monotonic() > deadline:
            return items
        await asyncio.sleep(0.05)


async def cmd_demo(s: Settings, args: argparse.Namespace) -> int:
    if why := refuse({"PLAID_ENV": s.plaid_env}):
        print(f"paw demo: {why}", file=sys.stderr)
        return 2
    console = demo_console()
    if args.verbose:
        return await run_demo(s, keep=args.keep, console=console)
    with logs_to_file(s) as log_file:
        try:
            return await run_demo(s, keep=args.keep, console=console, log_file=log_file)
        except BaseException:
            console.print(f"logs: {escape(str(log_file))}")
            raise
