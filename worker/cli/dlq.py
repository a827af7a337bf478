"""``paw dlq list|show|replay|purge``: the dead-letter commands for on-call.

The decisions live in :mod:`worker.bus.dlq`, the I/O in :mod:`worker.bus.dead_queue`; this module
parses arguments, opens the database and the broker, asks for confirmation and prints (through
:mod:`worker.cli.render` for people, ``--json`` for scripts).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from rich.console import Console

from worker.bus import dead_queue, dlq
from worker.bus.dead_queue import Held
from worker.bus.dlq import DeadLetter, Filters
from worker.bus.publisher import Publisher
from worker.bus.topology import Topology
from worker.cli.context import Subparsers, add_actor, broker, database, default_actor
from worker.cli.render import (
    confirm,
    dead_letters_table,
    progress_bar,
    reasons_line,
    show_dead_letter,
    wide_console,
)
from worker.errors import DlqError
from worker.settings import Settings

log = structlog.get_logger(__name__)

ENV_NOTE = "(AMQP_URL, DATABASE_URL, PAW_EXCHANGE, PAW_QUEUE_PREFIX)"
WILL = {
    "publish": "publish",
    "replayed": "ack only: replayed before",
    "copy": "ack only: copy of one above",
}


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


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("ids", nargs="*", type=_dlq_id, metavar="ID", help="dead-letter ids (or filters)")
    _add_filters(p)
    p.add_argument("--all", action="store_true", help="every dead letter (required without ids or filters)")


def register(sub: Subparsers) -> None:
    """Adds ``paw dlq list|show|replay|purge``."""
    actor = default_actor()  # read once, while main() builds the parser
    group = sub.add_parser("dlq", help=f"dead letters: list, show, replay, purge {ENV_NOTE}").add_subparsers(
        dest="dlq_command", required=True
    )

    p = group.add_parser(
        "list", help="the dead letters in queue order: age, routing key, item, error, attempts"
    )
    _add_filters(p)
    p.add_argument("--json", action="store_true", help="a JSON array, for scripts")
    p.set_defaults(func=cmd_dlq_list)

    p = group.add_parser("show", help="one dead letter: every header, the broker's hops, the body (redacted)")
    p.add_argument("id", type=_dlq_id, help="its id from `paw dlq list` (any unique prefix of 6 or more)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dlq_show)

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
    p.add_argument("--yes", action="store_true", help="with --all: do not ask for confirmation")
    p.add_argument("--json", action="store_true", help="the result as JSON on stdout (the rest on stderr)")
    add_actor(p, actor)
    p.set_defaults(func=cmd_dlq_replay)

    p = group.add_parser("purge", help="delete dead letters for good (each one logged, redacted)")
    _add_selection(p)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--json", action="store_true", help="the result as JSON on stdout (the rest on stderr)")
    add_actor(p, actor)
    p.set_defaults(func=cmd_dlq_purge)


# -- Plumbing ----------------------------------------------------------------------------------


async def _read(s: Settings, topo: Topology) -> tuple[list[DeadLetter], int]:
    """A snapshot of the dead queue; every message is back on it when this returns."""
    async with (
        broker(s, "paw-dlq-cli") as connection,
        dead_queue.held_dead_letters(connection, topo) as (held, depth),
    ):
        return [h.letter for h in held], depth


async def _resolve_best_effort(s: Settings, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
    """Item ids from the database; list and show still work without it (the incident may be a
    database outage)."""
    try:
        async with database(s) as pool:
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
    console = wide_console()
    shown = f", {len(chosen)} shown" if len(chosen) != len(letters) else ""
    console.print(
        dead_letters_table(
            f"{topo.dead_queue}: {depth} dead letters{shown}", chosen, now, width=console.width
        )
    )
    console.print(f"by reason: {reasons_line(chosen)}")
    return 0


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
    show_dead_letter(wide_console(), detail)
    return 0


# -- paw dlq replay / purge --------------------------------------------------------------------


async def cmd_dlq_replay(s: Settings, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    filters = _filters(args, now)
    if _nothing_selected(args, filters):
        return 2
    topo = Topology.from_settings(s)
    out = _Output(args.json)
    if args.all and not args.dry_run and not args.yes:
        _, depth = await _read(s, topo)
        if not await confirm(f"Replay every dead letter ({depth} on {topo.dead_queue})? [y/N] "):
            out.say("nothing replayed")
            return 1
    audit = _audit(args, filters, rate=args.rate)
    result = dead_queue.ReplayResult()
    async with database(s) as pool, broker(s, "paw-dlq-cli") as connection:
        action_id = await dead_queue.start_action(
            pool, "replay", actor=args.actor, filters=audit, dry_run=args.dry_run
        )
        try:
            async with dead_queue.held_dead_letters(connection, topo) as (held, depth):
                letters = await dead_queue.resolve_items(pool, [h.letter for h in held])
                _check_ids(filters.ids, letters)
                chosen = _select(held, letters, filters, args.limit)
                if not chosen:
                    out.say(f"nothing to replay: none of {depth} dead letters match")
                    out.result(action_id=action_id, selected=0, replayed=0, already=0, failed=0)
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
                    console = out.console
                    title = f"dry run: replay to exchange {topo.exchange}"
                    console.print(dead_letters_table(title, picked, now, will, width=console.width))
                    console.print(
                        f"dry run: would publish {result.replayed} and ack {len(plan) - result.replayed} "
                        f"without publishing (by reason: {reasons_line(picked)}); nothing changed"
                    )
                    out.result(
                        action_id=action_id,
                        dry_run=True,
                        selected=len(picked),
                        would_publish=result.replayed,
                        would_ack_only=len(plan) - result.replayed,
                    )
                    return 0
                log.info(
                    "dlq.replay_started", action_id=action_id, actor=args.actor, selected=len(chosen), **audit
                )
                with progress_bar(len(chosen), "replaying") as bar:
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
    out.say(
        f"replayed {result.replayed} to {topo.exchange}; {result.already} replayed before (acked only); "
        f"{result.failed} failed (still on {topo.dead_queue}); audit: dlq_actions #{action_id}"
    )
    for line in result.errors[:20]:
        print(f"  failed: {line}", file=sys.stderr)
    out.result(
        action_id=action_id,
        selected=result.replayed + result.already + result.failed,
        replayed=result.replayed,
        already=result.already,
        failed=result.failed,
        errors=result.errors[:20],
    )
    return 1 if result.failed else 0


async def cmd_dlq_purge(s: Settings, args: argparse.Namespace) -> int:
    """Two passes: pick and confirm (holding nothing while a person reads the table), then take the
    queue again and purge exactly the dead letters confirmed, those still there."""
    now = datetime.now(UTC)
    filters = _filters(args, now)
    if _nothing_selected(args, filters):
        return 2
    topo = Topology.from_settings(s)
    out = _Output(args.json)
    letters, depth = await _read(s, topo)
    async with database(s) as pool:
        letters = await dead_queue.resolve_items(pool, letters)
    _check_ids(filters.ids, letters)
    picked = [letters[i] for i in dlq.select(letters, filters, args.limit)]
    if not picked:
        out.say(f"nothing to purge: none of {depth} dead letters match")
        out.result(action_id=None, selected=0, purged=0)
        return 0
    console = out.console
    console.print(dead_letters_table(f"purge from {topo.dead_queue}", picked, now, width=console.width))
    if not args.yes and not await confirm(f"Delete these {len(picked)} dead letters for good? [y/N] "):
        out.say("nothing purged")
        return 1
    confirmed = {d.key for d in picked}
    async with (
        database(s) as pool,
        broker(s, "paw-dlq-cli") as connection,
        dead_queue.held_dead_letters(connection, topo) as (held, _),
    ):
        chosen = [h for h in held if h.letter.key in confirmed]
        action_id = await dead_queue.start_action(
            pool, "purge", actor=args.actor, filters=_audit(args, filters), dry_run=False
        )
        purged = 0
        try:
            with progress_bar(len(chosen), "purging") as bar:
                task = bar.add_task("purge", total=len(chosen))
                purged = await dead_queue.purge(chosen, actor=args.actor, progress=lambda: bar.advance(task))
        finally:
            await dead_queue.finish_action(pool, action_id, purged)
    gone = f" ({len(picked) - purged} were gone meanwhile)" if purged < len(picked) else ""
    out.say(
        f"purged {purged} dead letters{gone} (each logged as dlq.purged); audit: dlq_actions #{action_id}"
    )
    out.result(action_id=action_id, selected=len(picked), purged=purged)
    return 0


class _Output:
    """Where a replay or purge speaks: people read stdout; with ``--json`` stdout carries only the
    result object, and the tables and lines for people go to stderr."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.console = Console(stderr=True, width=240) if as_json else wide_console()

    def say(self, line: str) -> None:
        print(line, file=sys.stderr if self.as_json else sys.stdout)

    def result(self, **fields: object) -> None:
        if self.as_json:
            print(json.dumps(fields))


# -- paw item retry ----------------------------------------------------------------------------
