"""``paw item show|list|expiring|forget|retry``: finding and acting on Items, for on-call."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from datetime import UTC, datetime, timedelta

import structlog
from rich.console import Console

from worker.bus.publisher import Publisher
from worker.bus.topology import Topology
from worker.cli.context import Subparsers, add_actor, broker, database, default_actor
from worker.cli.render import candidates_table, confirm, expiring_table, print_item, wide_console
from worker.errors import UpstreamError
from worker.items.model import Cause
from worker.items.states import State
from worker.items.store import Store
from worker.operate import forget_refusal, retry_item
from worker.settings import Settings

log = structlog.get_logger(__name__)


def _item_id(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


RELATIVE = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _when(text: str) -> datetime:
    """An ISO 8601 date or time (UTC unless it says otherwise), or an age: ``30m``, ``6h``, ``2d``."""
    raw = text.strip()
    if raw[:-1].isdigit() and raw[-1:] in RELATIVE:
        return datetime.now(UTC) - timedelta(seconds=int(raw[:-1]) * RELATIVE[raw[-1]])
    try:
        at = datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (2026-12-04, 2026-12-04T10:00, 6h)") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def register(sub: Subparsers) -> None:
    actor = default_actor()  # read once, while main() builds the parser
    item = sub.add_parser("item", help="inspect and act on one Item").add_subparsers(
        dest="item_command", required=True
    )
    p = item.add_parser(
        "show",
        help="an Item's state and history, by any id support has: paw's id or its first 6+ hex digits, "
        "client_user_id, Plaid's item_id, Atomic's funding source id, a request_id (DATABASE_URL)",
    )
    p.add_argument("id", help="any of the ids above; several matches are listed")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_item_show)
    p = item.add_parser("list", help="Items, the latest changed first, filtered (DATABASE_URL)")
    p.add_argument("--state", action="append", help="this state (repeat for several)")
    p.add_argument("--code", help="this error_code")
    p.add_argument("--since", type=_when, help="changed at or after: ISO date/time (UTC) or an age (6h)")
    p.add_argument("--until", type=_when, help="changed before: ISO date/time (UTC) or an age")
    p.add_argument("--user", help="this client_user_id")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50, at most 1000)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_item_list)
    p = item.add_parser("forget", help="remove an Item at Plaid and Atomic and destroy its tokens")
    p.add_argument("id", help="the Item's id (a UUID from paw)")
    p.add_argument("--yes", action="store_true", help="don't ask")
    add_actor(p, actor)
    p.add_argument("--json", action="store_true", help="the result as JSON")
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
    p.add_argument("id", help="the Item's id (a UUID from paw)")
    p.add_argument("--reason", help="why; kept in the Item's history (default: 'paw item retry by ACTOR')")
    add_actor(p, actor)
    p.add_argument("--json", action="store_true", help="the result as JSON")
    p.set_defaults(func=cmd_item_retry)


async def cmd_item_show(s: Settings, args: argparse.Namespace) -> int:
    async with database(s) as pool:
        store = Store(pool)
        found = await store.find(args.id)
        if len(found) != 1:
            if not found:
                print(f"paw: no Item matches {args.id!r}", file=sys.stderr)
                return 1
            if args.json:
                print(json.dumps([i.public() for i in found], indent=2))
            else:
                wide_console().print(candidates_table(found, f"Items matching {args.id!r}"))
            more = "at least " if len(found) >= 20 else ""
            print(f"paw: {more}{len(found)} Items match {args.id!r}: give one id", file=sys.stderr)
            return 1
        item = found[0]
        history = await store.history(item.id)
        events = [
            {k: e[k] for k in ("event_id", "sequence", "to_state")} | {"sent_at": _iso(e["sent_at"])}
            for e in await store.events(item.id)
        ]
        notes = [{**n, "at": _iso(n["at"])} for n in await store.notes(item.id)]
    if args.json:
        shown = {**item.public(), "history": [h.public() for h in history], "notes": notes}
        print(json.dumps({**shown, "outcome_events": events}, indent=2))
        return 0
    print_item(item, history)
    for n in notes:
        print(f"note {n['at']}: {n['kind']} by {n['actor']}: {n['text']} (message {n['message_id']})")
    unsent = sum(1 for e in events if e["sent_at"] is None)
    print(f"outcome events in the outbox: {len(events)}, {unsent} not yet published")
    return 0


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


async def cmd_item_list(s: Settings, args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 1000:
        print("paw: --limit must be 1 to 1000", file=sys.stderr)
        return 2
    unknown = sorted(set(args.state or ()) - {st.value for st in State})
    if unknown:
        print(
            f"paw: no state {', '.join(unknown)} (states: {', '.join(st.value for st in State)})",
            file=sys.stderr,
        )
        return 2
    async with database(s) as pool:
        items = await Store(pool).filter(
            states=args.state,
            error_code=args.code,
            since=args.since,
            until=args.until,
            client_user_id=args.user,
            limit=args.limit,
        )
    if args.json:
        print(json.dumps([i.public() for i in items], indent=2))
    else:
        wide_console().print(candidates_table(items, f"Items, the latest changed first ({len(items)})"))
    return 0


def _required_id(text: str) -> uuid.UUID | None:
    """The Item id of a destructive command, or None after saying why in one line (exit 2)."""
    item_id = _item_id(text)
    if item_id is None:
        print(
            f"paw: not an Item id (a UUID from paw): {text!r}; find it with `paw item show`", file=sys.stderr
        )
    return item_id


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

    item_id = _required_id(args.id)
    if item_id is None:
        return 2
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
        try:
            done = await svc.pipeline.forget(item, Cause("paw item forget", args.actor))
        except UpstreamError as e:
            print(forget_refusal(e), file=sys.stderr)
            return 1
    state = done.state.value if done else "unchanged"
    if args.json:
        print(
            json.dumps({"item_id": str(item_id), "forgotten": True, "state": state, "tokens_destroyed": True})
        )
    else:
        print(f"item {item_id} forgotten: state {state}; tokens destroyed")
    return 0


async def cmd_item_retry(s: Settings, args: argparse.Namespace) -> int:
    item_id = _required_id(args.id)
    if item_id is None:
        return 2
    async with database(s) as pool, broker(s, "paw-cli") as connection:
        publisher = Publisher(connection, Topology.from_settings(s), timeout=s.publish_timeout)
        done = await retry_item(Store(pool), publisher, item_id, actor=args.actor, reason=args.reason)
    if done.refused is not None:
        print(f"paw: {'nothing sent: ' if done.state else ''}{done.refused}", file=sys.stderr)
        return 1
    if not done.note_recorded:
        print("paw: item.drive was sent, but the note was not recorded", file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    "item_id": str(item_id),
                    "state": done.state,
                    "sent": "item.drive",
                    "message_id": done.message_id,
                }
            )
        )
        return 0
    print(
        f"item.drive sent for {item_id} (state {done.state}); the worker re-drives it from "
        f"there: follow it with `paw item show {item_id}`"
    )
    return 0
