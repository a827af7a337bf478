"""``paw dlq ...`` and ``paw item retry``: the on-call commands.

The decisions live in :mod:`worker.bus.dlq`, the I/O in :mod:`worker.bus.dead_queue`; this module parses arguments, opens the database and the
broker, asks for confirmation and prints (rich tables for people, ``--json`` for scripts).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from aio_pika.abc import AbstractRobustConnection
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

import schemas
from worker.bus import dead_queue, dlq
from worker.bus.dead_queue import Held
from worker.bus.dlq import DeadLetter, Filters
from worker.bus.publisher import Publisher, connect
from worker.bus.topology import Topology
from worker.errors import DlqError
from worker.items.store import Store, create_pool
from worker.settings import Settings

Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]

log = structlog.get_logger(__name__)

ENV_NOTE = "(AMQP_URL, DATABASE_URL, PAW_EXCHANGE, PAW_QUEUE_PREFIX)"
WILL = {
    "publish": "publish",
    "replayed": "ack only: replayed before",
    "copy": "ack only: copy of one above",
}


def _default_actor() -> str:
    try:
        return getpass.getuser()  # $USER (then LOGNAME, then the account name)
    except (OSError, KeyError):
        return "unknown"


def _dlq_id(text: str) -> str:
    value = text.strip().lower()
    if not dlq.ID_PATTERN.match(value):
        raise argparse.ArgumentTypeError(
            f"a dead-letter id is {dlq.MIN_ID} or more hex characters (from `paw dlq list`), got {text!r}"
        )
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rate wants messages per second, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("--rate must be positive")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("want a positive integer")
    return value


def _add_filters(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("filters (every one given must match)")
    g.add_argument("--item", help="our Item id, or Plaid's item_id (Plaid webhooks)")
    g.add_argument("--code", help="error code, e.g. INSTITUTION_DOWN (case-insensitive)")
    g.add_argument("--error", help="text in the error class or message (case-insensitive)")
    g.add_argument("--since", help="dead-lettered since: 30m, 2h, 1d, or an ISO time (UTC unless given)")
    g.add_argument(
        "--routing-key",
        dest="routing_key",
        help="the original routing key, as an AMQP pattern: 'item.link', 'webhook.plaid.#'",
    )
    g.add_argument("--limit", type=_positive, help="at most N dead letters, oldest first")


def _add_actor(p: argparse.ArgumentParser, actor: str) -> None:
    p.add_argument("--actor", default=actor, help=f"who acts, for the audit (default: $USER, here {actor!r})")


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("ids", nargs="*", type=_dlq_id, metavar="ID", help="dead-letter ids (or filters)")
    _add_filters(p)
    p.add_argument("--all", action="store_true", help="every dead letter (required without ids or filters)")


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]],
) -> dict[str, Command]:
    """Adds ``paw dlq list|show|replay|purge`` and ``paw item retry``; returns name -> coroutine."""
    actor = _default_actor()  # read once, while main() builds the parser
    group = sub.add_parser("dlq", help=f"dead letters: list, show, replay, purge {ENV_NOTE}").add_subparsers(
        dest="dlq_command", required=True
    )

    p = group.add_parser(
        "list", help="the dead letters in queue order: age, routing key, item, error, attempts"
    )
    _add_filters(p)
    p.add_argument("--json", action="store_true", help="a JSON array, for scripts")

    p = group.add_parser("show", help="one dead letter: every header, the broker's hops, the body (redacted)")
    p.add_argument("id", type=_dlq_id, help="its id from `paw dlq list` (any unique prefix of 6 or more)")
    p.add_argument("--json", action="store_true")

    p = group.add_parser(
        "replay",
        help="republish dead letters to the events exchange with their original routing key",
        description="Per message: claimed in dlq_replayed, republished with attempts reset and "
        "x-paw-replays + 1, confirmed, recorded, then acked from the dead queue. Two people at once, "
        "or a run killed and started again, publish nothing recorded twice and lose nothing.",
    )
    _add_selection(p)
    p.add_argument("--dry-run", action="store_true", help="show what would happen; change nothing")
    p.add_argument("--rate", type=_rate, help="at most N messages per second (default: unpaced)")
    _add_actor(p, actor)

    p = group.add_parser("purge", help="delete dead letters for good (each one logged, redacted)")
    _add_selection(p)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _add_actor(p, actor)

    p = groups["item"].add_parser(
        "retry",
        help="re-drive one Item from its current state: publishes item.drive (DATABASE_URL, AMQP_URL)",
    )
    p.add_argument("id", help="the Item id")
    p.add_argument("--reason", help="why; kept in the Item's history (default: 'paw item retry by ACTOR')")
    _add_actor(p, actor)

    return {
        "dlq_list": cmd_dlq_list,
        "dlq_show": cmd_dlq_show,
        "dlq_replay": cmd_dlq_replay,
        "dlq_purge": cmd_dlq_purge,
        "item_retry": cmd_item_retry,
    }


# -- Plumbing ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _broker(s: Settings) -> AsyncIterator[AbstractRobustConnection]:
    connection = await connect(s.amqp_url, "paw-dlq-cli")
    try:
        yield connection
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def _database(s: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(s.database_url, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


async def _read(s: Settings, topo: Topology) -> tuple[list[DeadLetter], int]:
    """A snapshot of the dead queue; every message is back on it when this returns."""
    async with _broker(s) as connection, dead_queue.held_dead_letters(connection, topo) as (held, depth):
        return [h.letter for h in held], depth


async def _resolve_best_effort(s: Settings, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
    """Item ids from the database; list and show still work without it (the incident may be a
    database outage)."""
    try:
        async with _database(s) as pool:
            return await dead_queue.resolve_items(pool, letters)
    except (OSError, asyncpg.PostgresError, TimeoutError) as e:
        print(
            f"paw: database unavailable, Item ids of item.link messages not looked up ({e})", file=sys.stderr
        )
        return list(letters)


def _filters(args: argparse.Namespace, now: datetime) -> Filters:
    try:
        since = dlq.parse_since(args.since, now) if args.since else None
    except ValueError as e:
        raise DlqError(str(e)) from None
    return Filters(
        ids=tuple(getattr(args, "ids", None) or ()),
        item=args.item,
        code=args.code,
        error=args.error,
        since=since,
        routing_key=args.routing_key,
    )


def _audit(args: argparse.Namespace, filters: Filters, **more: Any) -> dict[str, Any]:
    out = {**filters.public(), "all": args.all, "limit": args.limit, **more}
    return {k: v for k, v in out.items() if v}


def _check_ids(ids: Sequence[str], letters: Sequence[DeadLetter]) -> None:
    bad = dlq.unknown_or_ambiguous_ids(ids, letters)
    if bad:
        raise DlqError(
            "; ".join(
                f"{prefix}: ambiguous, could be {', '.join(found)}"
                if found
                else f"{prefix}: no such dead letter (replayed or purged already?)"
                for prefix, found in bad.items()
            )
        )


def _select(
    held: Sequence[Held], letters: Sequence[DeadLetter], filters: Filters, limit: int | None
) -> list[Held]:
    return [Held(letters[i], held[i].message) for i in dlq.select(letters, filters, limit)]


def _nothing_selected(args: argparse.Namespace, filters: Filters) -> bool:
    if filters.empty and not args.all:
        print("paw: nothing selected: give ids, a filter, or --all", file=sys.stderr)
        return True
    return False


def _console() -> Console:
    """stdout; when it is not a terminal (a pipe, a file), wide enough for a whole table row."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def _table(
    title: str,
    letters: Sequence[DeadLetter],
    now: datetime,
    will: Sequence[str] | None = None,
    *,
    width: int = 160,
) -> Table:
    """One line per dead letter; the error message gives way (ellipsis), and goes on a narrow
    terminal, where the reason column still names it."""
    table = Table(title=title, title_justify="left", expand=True)
    table.add_column("id", no_wrap=True, min_width=dlq.SHORT_ID)
    table.add_column("age", no_wrap=True, justify="right")
    table.add_column("routing key", no_wrap=True)
    table.add_column("item", no_wrap=True)
    table.add_column("reason", no_wrap=True)
    wide = width >= 140
    if wide:
        table.add_column("error", no_wrap=True, overflow="ellipsis", ratio=1, min_width=10)
    table.add_column("tries", no_wrap=True, justify="right")
    table.add_column("replays", no_wrap=True, justify="right")
    if will is not None:
        table.add_column("will", no_wrap=True)
    for i, d in enumerate(letters):
        row = d.summary(now)
        cells = [
            row["id"],
            dlq.human_age(d.age(now)),
            d.routing_key or "?",
            row["item_id"] or row["plaid_item_id"] or "",
            d.reason,
            *([row["error"]] if wide else []),
            str(d.attempts),
            str(d.replays),
        ]
        table.add_row(*cells, *([will[i]] if will is not None else []))
    return table


def _reasons(letters: Sequence[DeadLetter]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in dlq.by_reason(letters)) or "-"


def _progress(total: int, what: str) -> Progress:
    return Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=total < 2,
    )


# -- paw dlq list / show -----------------------------------------------------------------------


async def cmd_dlq_list(s: Settings, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    filters = _filters(args, now)
    topo = Topology.from_settings(s)
    letters, depth = await _read(s, topo)
    letters = await _resolve_best_effort(s, letters)
    chosen = [letters[i] for i in dlq.select(letters, filters, args.limit)]
    if args.json:
        print(json.dumps([d.summary(now) for d in chosen], indent=2))
        return 0
    console = _console()
    shown = f", {len(chosen)} shown" if len(chosen) != len(letters) else ""
    console.print(_table(f"{topo.dead_queue}: {depth} dead letters{shown}", chosen, now, width=console.width))
    console.print(f"by reason: {_reasons(chosen)}")
    return 0


SHOW_FACTS = (
    "routing_key",
    "item_id",
    "plaid_item_id",
    "message_id",
    "queue",
    "error_class",
    "error_code",
    "error",
    "request_id",
    "attempts",
    "replays",
    "first_failure_at",
    "dead_lettered_at",
)


async def cmd_dlq_show(s: Settings, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    letters, _ = await _read(s, Topology.from_settings(s))
    _check_ids([args.id], letters)
    copies = [d for d in letters if d.key.startswith(args.id)]
    (letter,) = await _resolve_best_effort(s, copies[:1])
    detail = {**letter.detail(now), "copies": len(copies)}
    if args.json:
        print(json.dumps(detail, indent=2))
        return 0
    console = _console()
    console.print(f"[bold]{detail['key']}[/bold]  ({len(copies)} on the queue)", highlight=False)
    facts = Table(show_header=False, box=None, pad_edge=False)
    facts.add_column(style="bold", no_wrap=True)
    facts.add_column(overflow="fold")
    for name in SHOW_FACTS:
        facts.add_row(name, "" if detail[name] is None else str(detail[name]))
    console.print(facts)
    if detail["history"]:
        hops = Table(title="broker history (x-death: retry hops)", title_justify="left")
        for col in ("queue", "reason", "count", "time", "routing keys"):
            hops.add_column(col)
        for hop in detail["history"]:
            hop = hop if isinstance(hop, dict) else {}
            keys = hop.get("routing-keys")
            hops.add_row(
                *(str(hop.get(k, "")) for k in ("queue", "reason", "count", "time")),
                ", ".join(map(str, keys)) if isinstance(keys, list) else "",
            )
        console.print(hops)
    headers = Table(title="headers", title_justify="left")
    headers.add_column("name", no_wrap=True)
    headers.add_column("value", overflow="fold")
    for name, value in sorted(detail["headers"].items()):
        if name != "x-death":
            headers.add_row(name, value if isinstance(value, str) else json.dumps(value))
    console.print(headers)
    console.print("body:")
    if isinstance(detail["body"], str):
        console.print(detail["body"], markup=False, highlight=False)
    else:
        console.print_json(json.dumps(detail["body"]))
    return 0


# -- paw dlq replay / purge --------------------------------------------------------------------


async def cmd_dlq_replay(s: Settings, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    filters = _filters(args, now)
    if _nothing_selected(args, filters):
        return 2
    topo = Topology.from_settings(s)
    audit = _audit(args, filters, rate=args.rate)
    result = dead_queue.ReplayResult()
    async with _database(s) as pool, _broker(s) as connection:
        action_id = await dead_queue.start_action(
            pool, "replay", actor=args.actor, filters=audit, dry_run=args.dry_run
        )
        try:
            async with dead_queue.held_dead_letters(connection, topo) as (held, depth):
                letters = await dead_queue.resolve_items(pool, [h.letter for h in held])
                _check_ids(filters.ids, letters)
                chosen = _select(held, letters, filters, args.limit)
                if not chosen:
                    print(f"nothing to replay: none of {depth} dead letters match")
                    return 0
                picked = [h.letter for h in chosen]
                if args.dry_run:
                    plan = dlq.replay_plan(
                        picked, await dead_queue.already_replayed(pool, (d.key for d in picked))
                    )
                    result.replayed = plan.count("publish")
                    will = [
                        f"publish {d.routing_key} (replay #{d.replays + 1})" if p == "publish" else WILL[p]
                        for d, p in zip(picked, plan, strict=True)
                    ]
                    console = _console()
                    title = f"dry run: replay to exchange {topo.exchange}"
                    console.print(_table(title, picked, now, will, width=console.width))
                    console.print(
                        f"dry run: would publish {result.replayed} and ack {len(plan) - result.replayed} "
                        f"without publishing (by reason: {_reasons(picked)}); nothing changed"
                    )
                    return 0
                log.info(
                    "dlq.replay_started", action_id=action_id, actor=args.actor, selected=len(chosen), **audit
                )
                with _progress(len(chosen), "replaying") as bar:
                    task = bar.add_task("replay", total=len(chosen))
                    await dead_queue.replay(
                        pool,
                        Publisher(connection, topo, timeout=s.publish_timeout),
                        chosen,
                        action_id=action_id,
                        actor=args.actor,
                        rate=args.rate,
                        progress=lambda: bar.advance(task),
                        result=result,
                    )
        finally:
            await dead_queue.finish_action(pool, action_id, result.replayed)
    log.info(
        "dlq.replay_finished",
        action_id=action_id,
        replayed=result.replayed,
        already=result.already,
        failed=result.failed,
    )
    print(
        f"replayed {result.replayed} to {topo.exchange}; {result.already} replayed before (acked only); "
        f"{result.failed} failed (still on {topo.dead_queue}); audit: dlq_actions #{action_id}"
    )
    for line in result.errors[:20]:
        print(f"  failed: {line}", file=sys.stderr)
    return 1 if result.failed else 0


def _yes(answer: str) -> bool:
    return answer.strip().lower() in ("y", "yes")


async def confirm(prompt: str) -> bool:
    """Asks on the terminal. The event loop keeps running while the person thinks (Ctrl-C cancels
    at once); where stdin cannot be watched (a file, or none), it is read directly."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        fd = -1
    if fd >= 0:
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        try:
            loop.add_reader(fd, ready.set)
        except (OSError, ValueError, NotImplementedError):
            pass  # a regular file: reading it does not block
        else:
            print(prompt, end="", flush=True)
            try:
                await ready.wait()
            finally:
                loop.remove_reader(fd)
            return _yes(sys.stdin.readline())
    try:
        return _yes(input(prompt))  # noqa: ASYNC250 - a file (or no stdin): does not block
    except EOFError:
        return False


async def cmd_dlq_purge(s: Settings, args: argparse.Namespace) -> int:
    """Two passes: pick and confirm (holding nothing while a person reads the table), then take the
    queue again and purge exactly the dead letters confirmed, those still there."""
    now = datetime.now(UTC)
    filters = _filters(args, now)
    if _nothing_selected(args, filters):
        return 2
    topo = Topology.from_settings(s)
    letters, depth = await _read(s, topo)
    async with _database(s) as pool:
        letters = await dead_queue.resolve_items(pool, letters)
    _check_ids(filters.ids, letters)
    picked = [letters[i] for i in dlq.select(letters, filters, args.limit)]
    if not picked:
        print(f"nothing to purge: none of {depth} dead letters match")
        return 0
    console = _console()
    console.print(_table(f"purge from {topo.dead_queue}", picked, now, width=console.width))
    if not args.yes and not await confirm(f"Delete these {len(picked)} dead letters for good? [y/N] "):
        print("nothing purged")
        return 1
    confirmed = {d.key for d in picked}
    async with (
        _database(s) as pool,
        _broker(s) as connection,
        dead_queue.held_dead_letters(connection, topo) as (held, _),
    ):
        chosen = [h for h in held if h.letter.key in confirmed]
        action_id = await dead_queue.start_action(
            pool, "purge", actor=args.actor, filters=_audit(args, filters), dry_run=False
        )
        purged = 0
        try:
            with _progress(len(chosen), "purging") as bar:
                task = bar.add_task("purge", total=len(chosen))
                purged = await dead_queue.purge(chosen, actor=args.actor, progress=lambda: bar.advance(task))
        finally:
            await dead_queue.finish_action(pool, action_id, purged)
    gone = f" ({len(picked) - purged} were gone meanwhile)" if purged < len(picked) else ""
    print(f"purged {purged} dead letters{gone} (each logged as dlq.purged); audit: dlq_actions #{action_id}")
    return 0


# -- paw item retry ----------------------------------------------------------------------------


async def cmd_item_retry(s: Settings, args: argparse.Namespace) -> int:
    try:
        item_id = uuid.UUID(args.id)
    except ValueError:
        print(f"paw: not an item id: {args.id!r}", file=sys.stderr)
        return 2
    async with _database(s) as pool:
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
    async with _broker(s) as connection:
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
