"""``paw item show|expiring|forget|retry``: one Item, for on-call."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from datetime import timedelta

import structlog
from rich.console import Console

import schemas
from worker.bus.publisher import Publisher
from worker.bus.topology import Topology
from worker.cli.context import Subparsers, add_actor, broker, database, default_actor
from worker.cli.render import confirm, expiring_table, print_item
from worker.items.model import Cause
from worker.items.store import Store
from worker.settings import Settings

log = structlog.get_logger(__name__)


def _item_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an Item id (a UUID from paw): {text!r}") from None


def register(sub: Subparsers) -> None:
    actor = default_actor()  # read once, while main() builds the parser
    item = sub.add_parser("item", help="inspect and act on one Item").add_subparsers(
        dest="item_command", required=True
    )
    p = item.add_parser("show", help="an Item's state and history (DATABASE_URL)")
    p.add_argument("id", type=_item_id)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_item_show)
    p = item.add_parser("forget", help="remove an Item at Plaid and Atomic and destroy its tokens")
    p.add_argument("id", type=_item_id)
    p.add_argument("--yes", action="store_true", help="don't ask")
    add_actor(p, actor)
    p.set_defaults(func=cmd_item_forget)
    p = item.add_parser(
        "expiring", help="Items whose consent expires or that Plaid disconnects within N days"
    )
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_item_expiring)
    p = item.add_parser(
        "retry",
        help="re-drive one Item from its current state: publishes item.drive (DATABASE_URL, AMQP_URL)",
    )
    p.add_argument("id", type=_item_id, help="the Item id")
    p.add_argument("--reason", help="why; kept in the Item's history (default: 'paw item retry by ACTOR')")
    add_actor(p, actor)
    p.set_defaults(func=cmd_item_retry)


async def cmd_item_show(s: Settings, args: argparse.Namespace) -> int:
    item_id: uuid.UUID = args.id
    async with database(s) as pool:
        store = Store(pool)
        item = await store.get(item_id)
        if item is None:
            print(f"paw: no item {item_id}", file=sys.stderr)
            return 1
        history = await store.history(item_id)
    if args.json:
        print(json.dumps({**item.public(), "history": [h.public() for h in history]}, indent=2))
        return 0
    print_item(item, history)
    return 0


async def cmd_item_expiring(s: Settings, args: argparse.Namespace) -> int:
    async with database(s) as pool:
        items = await Store(pool).expiring(timedelta(days=args.days))
    if args.json:
        print(json.dumps([i.public() for i in items], indent=2))
    else:
        Console().print(expiring_table(items, args.days))
    return 0


async def cmd_item_forget(s: Settings, args: argparse.Namespace) -> int:
    from worker.services import open_services  # plaid-python and the rest: only when needed

    item_id: uuid.UUID = args.id
    if not args.yes:
        question = f"Remove Item {item_id} at Plaid and Atomic and destroy its tokens? [y/N] "
        if not await confirm(question):
            print("nothing done")
            return 1
    async with open_services(s, "paw-cli-forget", pool_size=2) as svc:
        item = await svc.store.get(item_id)
        if item is None:
            print(f"paw: no item {item_id}", file=sys.stderr)
            return 1
        done = await svc.pipeline.forget(item, Cause("paw item forget", args.actor))
    print(f"item {item_id} forgotten: state {done.state.value if done else 'unchanged'}; tokens destroyed")
    return 0


async def cmd_item_retry(s: Settings, args: argparse.Namespace) -> int:
    item_id: uuid.UUID = args.id
    async with database(s) as pool:
        item = await Store(pool).get(item_id)
    if item is None:
        print(f"paw: no item {item_id}", file=sys.stderr)
        return 1
    body = {"item_id": str(item_id), "reason": (args.reason or f"paw item retry by {args.actor}")[:200]}
    problem = next(iter(schemas.validator("item.drive").iter_errors(body)), None)
    if problem is not None:
        print(f"paw: item.drive would be invalid: {problem.message}", file=sys.stderr)
        return 2
    message_id = str(uuid.uuid4())
    async with broker(s, "paw-cli") as connection:
        publisher = Publisher(connection, Topology.from_settings(s), timeout=s.publish_timeout)
        await publisher.publish("item.drive", json.dumps(body).encode(), message_id=message_id)
    log.info(
        "item.retry_requested",
        item_id=str(item_id),
        state=item.state.value,
        actor=args.actor,
        reason=body["reason"],
        message_id=message_id,
    )
    print(
        f"item.drive sent for {item_id} (state {item.state.value}); the worker re-drives it from "
        f"there: follow it with `paw item show {item_id}`"
    )
    return 0
