"""``paw demo``: sandbox + receiver + worker in one process, a handful of Items through the flow.

It uses the configured Postgres and RabbitMQ, with its own exchange and queue names (deleted at the
end unless ``--keep``), and the emulator on free local ports.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import socket
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.console import Console

from worker.bus.topology import undeclare
from worker.cli.context import Subparsers, database
from worker.cli.ops import sandbox_config
from worker.cli.render import history_table, items_table
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


CASES = (
    Case(
        "happy path over HTTP; then the bank login breaks and is repaired",
        "user_good",
        "demo-user-1",
        "http",
        State.ATOMIC_VERIFIED,
    ),
    Case(
        "savings only, submitted over AMQP", "user_savings_only", "demo-user-2", "amqp", State.ATOMIC_VERIFIED
    ),
    Case("Atomic rejects the customer", "user_good", "reject-demo-user-3", "http", State.ATOMIC_REJECTED),
    Case("invalid public token", None, "demo-user-4", "amqp", State.FAILED),
    Case("no checking or savings account", "user_no_depository", "demo-user-5", "http", State.FAILED),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def sandbox_public_token(api: plaid_api.PlaidApi, username: str, webhook: str) -> str:
    from plaid.model.products import Products
    from plaid.model.sandbox_public_token_create_request import SandboxPublicTokenCreateRequest
    from plaid.model.sandbox_public_token_create_request_options import (
        SandboxPublicTokenCreateRequestOptions,
    )

    req = SandboxPublicTokenCreateRequest(
        institution_id=INSTITUTION,
        initial_products=[Products("auth")],
        options=SandboxPublicTokenCreateRequestOptions(webhook=webhook, override_username=username),
    )
    return str(api.sandbox_public_token_create(req)["public_token"])


def register(sub: Subparsers) -> None:
    p = sub.add_parser("demo", help="drive sandbox Items through the whole flow in one process")
    p.add_argument("--keep", action="store_true", help="keep the demo's queues afterwards")
    p.set_defaults(func=cmd_demo)


async def run_demo(
    base: Settings, *, keep: bool = False, console: Console | None = None, timeout: float = 60
) -> int:
    import aiohttp
    import plaid
    from plaid.api import plaid_api

    from sandbox.app import serve
    from webhooks.server import start_receiver
    from worker.runner import run_worker
    from worker.services import open_services

    console = console or Console(width=None if Console().is_terminal else 150)
    run = uuid.uuid4().hex[:8]
    receiver_port = free_port()
    receiver_url = f"http://127.0.0.1:{receiver_port}"
    sandbox_runner, sandbox_url = await serve(
        sandbox_config(
            base, atomic_webhook_url=f"{receiver_url}/webhooks/atomic", atomic_decision_delay_s=0.2
        ),
        "127.0.0.1",
        0,
    )
    s = dataclasses.replace(
        base,
        plaid_env="sandbox",
        plaid_base_url=sandbox_url,
        atomic_base_url=f"{sandbox_url}/atomic",
        exchange=f"paw-demo-{run}.events",
        queue_prefix=f"paw-demo-{run}",
    )
    await migrate_database(s.database_url)
    console.print(
        f"[bold]paw demo[/bold]  sandbox {sandbox_url}  receiver {receiver_url}  exchange {s.exchange}"
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
        async with open_services(s, "paw-demo") as svc:
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
                            sandbox_public_token, api, case.username, f"{receiver_url}/webhooks/plaid"
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
                                return 1
                    else:
                        await svc.publisher.publish(
                            "item.link", json.dumps(body).encode(), message_id=str(uuid.uuid4())
                        )
                items = await wait_for_items(svc.store, tokens, timeout)
                if items[0] is not None and items[0].state is State.ATOMIC_VERIFIED:
                    items[0] = await login_breaks_and_is_repaired(svc.store, sandbox_url, items[0], timeout)
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
    console.print(
        "\n[green]demo finished: every Item ended where expected[/green]"
        if ok
        else "\n[red]demo failed[/red]"
    )
    return 0 if ok else 1


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
    return await run_demo(s, keep=args.keep)
