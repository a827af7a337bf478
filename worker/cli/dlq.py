"""``paw dlq list|show|replay|purge|reindex|job|jobs``: the dead-letter commands for on-call.

The decisions live in :mod:`worker.bus.dlq`, the I/O in :mod:`worker.bus.dead_queue` (the replay
itself, :func:`~worker.bus.dead_queue.run_replay`, which the jobs of :mod:`worker.bus.dlq_jobs` run
too); this module parses arguments, opens the database and the broker, asks for confirmation and
prints (through :mod:`worker.cli.render` for people, ``--json`` for scripts).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aiormq
import asyncpg
import structlog
from rich.console import Console
from rich.progress import Progress, TaskID

from worker.bus import dead_index, dead_queue, dlq, dlq_jobs
from worker.bus.dead_index import Reindexed
from worker.bus.dlq import Filters
from worker.bus.publisher import Publisher
from worker.bus.topology import Topology
from worker.cli.context import Subparsers, add_actor, broker, database, default_actor
from worker.cli.render import (
    confirm,
    counts_line,
    dead_letters_table,
    job_result_line,
    jobs_table,
    progress_bar,
    show_dead_letter,
    show_job,
    wide_console,
)
from worker.errors import DlqError, PawError
from worker.settings import Settings

log = structlog.get_logger(__name__)

PAGE = 100  # dead letters per page of `paw dlq list`
PLAN_ROWS = dead_queue.PLAN_ROWS  # rows a dry run or a purge's confirmation shows (counts cover all)
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
    g.add_argument("--until", help="dead-lettered before: 30m, 2h, 1d (ago), or an ISO time")
    g.add_argument("--min-attempts", dest="min_attempts", type=_positive, help="tried at least N times")
    g.add_argument("--state", help="the Item's current state, e.g. exchanged, failed")
    g.add_argument("--limit", type=_positive, help="at most N dead letters, oldest first")


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("ids", nargs="*", type=_dlq_id, metavar="ID", help="dead-letter ids (or filters)")
    _add_filters(p)
    p.add_argument("--all", action="store_true", help="every dead letter (required without ids or filters)")


def register(sub: Subparsers) -> None:
    """Adds ``paw dlq list|show|replay|purge|reindex|job|jobs``."""
    actor = default_actor()  # read once, while main() builds the parser
    group = sub.add_parser(
        "dlq", help=f"dead letters: list, show, replay, purge, reindex, jobs {ENV_NOTE}"
    ).add_subparsers(dest="dlq_command", required=True)

    p = group.add_parser(
        "list", help="the dead letters in queue order: age, routing key, item, error, attempts"
    )
    _add_filters(p)
    p.add_argument(
        "--after", type=_dlq_id, metavar="ID", help="the page after this dead letter (printed on stderr)"
    )
    p.add_argument("--json", action="store_true", help="a JSON array, for scripts")
    p.set_defaults(func=cmd_dlq_list, limit=PAGE)

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
    p.add_argument(
        "--job",
        action="store_true",
        help="queue a job that a worker runs (a closed terminal does not stop it); prints its id",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="with --job (implied): follow the job until it ends; exit 0 if every message was replayed "
        "(Ctrl-C stops following, not the job)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="the result as JSON on stdout (the rest on stderr); with --wait, the job as a JSON line "
        "each time it changes",
    )
    add_actor(p, actor)
    p.set_defaults(func=cmd_dlq_replay)

    p = group.add_parser(
        "job",
        help="one replay job: `paw dlq job ID`; `paw dlq job cancel ID` stops it",
        description="A queued job is cancelled at once; a running one is stopped by its worker between "
        "two messages: what was replayed is recorded, the rest stays on the dead queue.",
    )
    p.add_argument("first", metavar="ID|cancel", help="the job's id (from `paw dlq jobs`), or cancel")
    p.add_argument("then", nargs="?", metavar="ID", help="after cancel: the job's id")
    p.add_argument("--json", action="store_true", help="the job as JSON")
    p.set_defaults(func=cmd_dlq_job)

    p = group.add_parser("jobs", help="the recent replay jobs, newest first")
    p.add_argument("--limit", type=_positive, default=20, help="at most N (default 20)")
    p.add_argument("--json", action="store_true", help="a JSON array, for scripts")
    p.set_defaults(func=cmd_dlq_jobs)

    p = group.add_parser("purge", help="delete dead letters for good (each one logged, redacted)")
    _add_selection(p)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--json", action="store_true", help="the result as JSON on stdout (the rest on stderr)")
    add_actor(p, actor)
    p.set_defaults(func=cmd_dlq_purge)

    p = group.add_parser(
        "reindex",
        help="read the dead queue once and index the dead letters the index lacks",
        description="For dead letters a worker could not index (Postgres refused at that moment) or "
        "that predate the index: reads every message on the dead queue once (each counts as a "
        "delivery), adds the missing rows, makes rows of an unfinished purge dead again, and "
        "reports indexed dead letters that are not on the queue.",
    )
    p.add_argument("--json", action="store_true", help="the result as JSON on stdout")
    add_actor(p, actor)
    p.set_defaults(func=cmd_dlq_reindex)


# -- Plumbing ----------------------------------------------------------------------------------


def _filters(args: argparse.Namespace, now: datetime) -> Filters:
    try:
        since = dlq.parse_since(args.since, now) if args.since else None
        until = dlq.parse_since(args.until, now, "--until") if args.until else None
    except ValueError as e:
        raise DlqError(str(e)) from None
    return Filters(
        ids=tuple(getattr(args, "ids", None) or ()),
        item=args.item,
        code=args.code,
        error=args.error,
        since=since,
        until=until,
        routing_key=args.routing_key,
        min_attempts=args.min_attempts,
        state=args.state,
    )


def _audit(args: argparse.Namespace, filters: Filters, **more: Any) -> dict[str, Any]:
    out = {**filters.public(), "all": args.all, "limit": args.limit, **more}
    return {k: v for k, v in out.items() if v}


async def _check_ids(pool: asyncpg.Pool, ids: Sequence[str]) -> None:
    """Every id names exactly one dead letter, still dead (an id is checked against the index)."""
    problems = []
    for prefix in ids:
        found = await dead_index.by_prefix(pool, prefix)
        if not found:
            problems.append(f"{prefix}: no such dead letter")
        elif len(found) > 1:
            problems.append(f"{prefix}: ambiguous, could be {', '.join(d.short_id for d in found)}")
        elif found[0].status != "dead":
            problems.append(f"{prefix}: {found[0].status} already")
    if problems:
        raise DlqError("; ".join(problems))


def _nothing_selected(args: argparse.Namespace, filters: Filters) -> bool:
    if filters.empty and not args.all:
        print("paw: nothing selected: give ids, a filter, or --all", file=sys.stderr)
        return True
    return False


async def _unindexed_hint(s: Settings, topo: Topology, indexed: int) -> str | None:
    """A line for people when the dead queue holds more than the index knows (a worker could not
    write the index, or an upgrade): a passive declare, which touches no message."""
    try:
        async with asyncio.timeout(5), broker(s, "paw-dlq-cli") as connection:
            depth = await dead_queue.dlq_depth(connection, topo)
    except (OSError, TimeoutError, DlqError, aiormq.exceptions.AMQPError, PawError):
        return None
    if depth > indexed:
        return (
            f"paw: {topo.dead_queue} holds {depth} messages but the index knows {indexed} dead letters: "
            "run `paw dlq reindex`"
        )
    return None


# -- paw dlq list / show -----------------------------------------------------------------------


async def cmd_dlq_list(s: Settings, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    filters = _filters(args, now)
    topo = Topology.from_settings(s)
    async with database(s) as pool:
        try:
            after = await dead_index.seq_of(pool, args.after) if args.after else 0
        except LookupError:
            raise DlqError(f"--after {args.after}: no such dead letter (or ambiguous)") from None
        page = await dead_index.page(pool, filters, after=after, limit=args.limit)
        total = (await dead_index.counts(pool)).get("dead", 0)
    hint = await _unindexed_hint(s, topo, total)
    if hint:
        print(hint, file=sys.stderr)
    if page.next_after is not None:
        print(
            f"paw: {page.matched} match; the next page: paw dlq list --after {page.letters[-1].short_id}",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps([d.summary(now) for d in page.letters], indent=2))
        return 0
    console = wide_console()
    title = f"{topo.dead_queue}: {total} dead letters"
    if not filters.empty:
        title += f", {page.matched} match"
    if len(page.letters) != page.matched:
        title += f", {len(page.letters)} shown"
    console.print(dead_letters_table(title, page.letters, now, width=console.width))
    console.print(f"by reason: {counts_line(page.reasons)}")
    return 0


async def cmd_dlq_show(s: Settings, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    async with database(s) as pool:
        found = await dead_index.by_prefix(pool, args.id)
    if not found:
        raise DlqError(f"{args.id}: no such dead letter (not indexed? `paw dlq reindex`)")
    if len(found) > 1:
        raise DlqError(f"{args.id}: ambiguous, could be {', '.join(d.short_id for d in found)}")
    detail = found[0].detail(now)
    if args.json:
        print(json.dumps(detail, indent=2))
        return 0
    show_dead_letter(wide_console(), detail)
    return 0


# -- paw dlq replay / purge / reindex ----------------------------------------------------------


async def cmd_dlq_replay(s: Settings, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    filters = _filters(args, now)
    if _nothing_selected(args, filters):
        return 2
    if args.dry_run and (args.job or args.wait):
        print("paw: --dry-run plans and --job runs: give one of them", file=sys.stderr)
        return 2
    topo = Topology.from_settings(s)
    out = _Output(args.json)
    audit = _audit(args, filters, rate=args.rate)
    async with database(s) as pool:
        await _check_ids(pool, filters.ids)
        if args.dry_run:  # the plan, from the index alone: the queue is not touched
            return await _dry_run(pool, topo, filters, args, audit, out, now)
        if args.all and not args.yes:
            total = (await dead_index.counts(pool)).get("dead", 0)
            if not await confirm(f"Replay every dead letter ({total} on {topo.dead_queue})? [y/N] "):
                out.say("nothing replayed")
                return 1
        if args.job or args.wait:
            job_id = await dlq_jobs.enqueue(pool, "replay", filters, args.limit, args.rate, args.actor)
            if args.wait:
                return await _wait(pool, topo, job_id, out)
            job = await _job(pool, job_id)
            out.say(
                f"job #{job_id} queued: a worker runs it (follow: paw dlq job {job_id}; "
                f"cancel: paw dlq job cancel {job_id})"
            )
            out.result(**job.public())
            return 0
        async with broker(s, "paw-dlq-cli") as connection:
            action_id = await dead_queue.start_action(
                pool, "replay", actor=args.actor, filters=audit, dry_run=False
            )
            result = dead_queue.ReplayResult()
            try:
                with _Bar("replaying") as bar:
                    await dead_queue.run_replay(
                        pool,
                        connection,
                        topo,
                        Publisher(connection, topo, timeout=s.publish_timeout),
                        filters,
                        limit=args.limit,
                        rate=args.rate,
                        actor=args.actor,
                        action_id=action_id,
                        progress=bar.replayed,
                        result=result,
                    )
            finally:
                await dead_queue.finish_action(pool, action_id, result.replayed)
    if not result.selected:
        out.say(f"nothing to replay: none of {result.depth} dead letters match")
        out.result(action_id=action_id, selected=0, replayed=0, already=0, failed=0)
        return 0
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
        selected=result.processed,
        replayed=result.replayed,
        already=result.already,
        failed=result.failed,
        errors=result.errors[:20],
    )
    return 1 if result.failed else 0


async def _dry_run(
    pool: asyncpg.Pool,
    topo: Topology,
    filters: Filters,
    args: argparse.Namespace,
    audit: dict[str, Any],
    out: _Output,
    now: datetime,
) -> int:
    plan = await dlq_jobs.plan_replay(pool, filters, args.limit, rows=PLAN_ROWS)
    action_id = await dead_queue.start_action(pool, "replay", actor=args.actor, filters=audit, dry_run=True)
    will = [
        f"publish {d.routing_key} (replay #{d.replays + 1})" if p == "publish" else WILL[p]
        for d, p in zip(plan.sample, plan.will, strict=True)
    ]
    console = out.console
    title = f"dry run: replay to exchange {topo.exchange}"
    console.print(dead_letters_table(title, plan.sample, now, will, width=console.width))
    console.print(
        f"dry run: would publish {plan.would_publish} and ack {plan.would_ack_only} without publishing "
        f"(by reason: {counts_line(plan.by_reason)}); nothing changed"
    )
    await dead_queue.finish_action(pool, action_id, 0)
    out.result(
        action_id=action_id,
        dry_run=True,
        selected=plan.selected,
        would_publish=plan.would_publish,
        would_ack_only=plan.would_ack_only,
    )
    return 0


class _Bar:
    """The progress bar of a replay, opened once the replay knows how many it chose (on stderr;
    none for fewer than two)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.stack = contextlib.ExitStack()
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def update(self, total: int, completed: int) -> None:
        if self.bar is None or self.task is None:
            self.bar = self.stack.enter_context(progress_bar(total, self.what))
            self.task = self.bar.add_task(self.what, total=total)
        self.bar.update(self.task, total=total, completed=completed)

    async def replayed(self, result: dead_queue.ReplayResult) -> None:
        self.update(result.selected, result.processed)


# -- paw dlq replay --job / --wait, paw dlq job, paw dlq jobs -----------------------------------

NO_WORKER_S = 10.0  # --wait says so when no worker has taken the job after this long


async def _job(pool: asyncpg.Pool, job_id: int) -> dlq_jobs.Job:
    job = await dlq_jobs.get(pool, job_id)
    if job is None:
        raise DlqError(f"no such job #{job_id} (`paw dlq jobs` lists them)")
    return job


async def _wait(pool: asyncpg.Pool, topo: Topology, job_id: int, out: _Output) -> int:
    """Follows a job until it ends: a progress bar (lines of JSON with --json). Ctrl-C stops the
    waiting, never the job."""
    print(
        f"job #{job_id} queued; following it (Ctrl-C stops following, not the job: "
        f"`paw dlq job cancel {job_id}` cancels it)",
        file=sys.stderr,
    )
    last: dlq_jobs.Job | None = None

    async def nobody_took_it() -> None:
        await asyncio.sleep(NO_WORKER_S)
        if last is None or last.status == "queued":
            print(f"paw: no worker has taken job #{job_id} yet: is a worker running?", file=sys.stderr)

    nudge = asyncio.create_task(nobody_took_it())
    try:
        with _Bar("replaying") as bar:
            async for job in dlq_jobs.follow(pool, job_id):
                last = job
                if out.as_json:
                    print(json.dumps(job.public()), flush=True)
                elif job.status != "queued" and job.selected:
                    bar.update(job.selected, job.done + job.failed)
    except asyncio.CancelledError:  # Ctrl-C
        print(f"\npaw: stopped following; job #{job_id} goes on (`paw dlq job {job_id}`)", file=sys.stderr)
        raise
    finally:
        nudge.cancel()
    assert last is not None  # follow yields at least once
    out.say(job_result_line(last, topo.exchange, topo.dead_queue))
    return 0 if last.succeeded else 1


def _job_words(words: Sequence[str]) -> tuple[bool, int] | None:
    """``[ID]`` or ``["cancel", ID]`` → (cancel?, id); None if neither."""
    if len(words) == 1 and words[0].isdigit():
        return False, int(words[0])
    if len(words) == 2 and words[0] == "cancel" and words[1].isdigit():
        return True, int(words[1])
    return None


async def cmd_dlq_job(s: Settings, args: argparse.Namespace) -> int:
    """``paw dlq job ID`` shows a job; ``paw dlq job cancel ID`` cancels it."""
    parsed = _job_words([w for w in (args.first, args.then) if w is not None])
    if parsed is None:
        print("paw dlq job: want `paw dlq job ID` or `paw dlq job cancel ID`", file=sys.stderr)
        return 2
    cancel, job_id = parsed
    topo = Topology.from_settings(s)
    out = _Output(args.json)
    async with database(s) as pool:
        if not cancel:
            job = await _job(pool, job_id)
            if args.json:
                print(json.dumps(job.public(), indent=2))
            else:
                show_job(wide_console(), job)
            return 0
        before = await _job(pool, job_id)
        job = await dlq_jobs.request_cancel(pool, job_id) or before
    if before.finished:
        out.say(f"job #{job_id} is {before.status} already: nothing to cancel")
        code = 1
    elif job.status == "cancelled":
        out.say(job_result_line(job, topo.exchange, topo.dead_queue))
        code = 0
    else:
        out.say(f"job #{job_id}: cancel requested; its worker stops it between two messages")
        code = 0
    out.result(**job.public())
    return code


async def cmd_dlq_jobs(s: Settings, args: argparse.Namespace) -> int:
    async with database(s) as pool:
        jobs = await dlq_jobs.list_recent(pool, args.limit)
    if args.json:
        print(json.dumps([j.public() for j in jobs], indent=2))
        return 0
    wide_console().print(jobs_table(jobs))
    return 0


async def cmd_dlq_purge(s: Settings, args: argparse.Namespace) -> int:
    """Pick and confirm from the index (the queue untouched while a person reads the table), then
    take the queue once and purge exactly the dead letters confirmed, those still there."""
    now = datetime.now(UTC)
    filters = _filters(args, now)
    if _nothing_selected(args, filters):
        return 2
    topo = Topology.from_settings(s)
    out = _Output(args.json)
    async with database(s) as pool:
        await _check_ids(pool, filters.ids)
        keys = await dead_index.chosen_keys(pool, filters, args.limit)
        if not keys:
            out.say("nothing to purge: no dead letter matches")
            out.result(action_id=None, selected=0, purged=0)
            return 0
        page = await dead_index.page(pool, Filters(ids=tuple(keys[:PLAN_ROWS])), limit=PLAN_ROWS)
        console = out.console
        more = f" (the first {len(page.letters)} of {len(keys)})" if len(keys) > len(page.letters) else ""
        console.print(
            dead_letters_table(f"purge from {topo.dead_queue}{more}", page.letters, now, width=console.width)
        )
        if not args.yes and not await confirm(f"Delete these {len(keys)} dead letters for good? [y/N] "):
            out.say("nothing purged")
            return 1
        with progress_bar(len(keys), "purging") as bar:
            task = bar.add_task("purge", total=len(keys))
            async with broker(s, "paw-dlq-cli") as connection:
                action_id, purged = await dead_queue.purge_keys(
                    pool,
                    connection,
                    topo,
                    keys,
                    actor=args.actor,
                    audit=_audit(args, filters),
                    progress=lambda: bar.advance(task),
                )
    gone = f" ({len(keys) - purged} were gone meanwhile)" if purged < len(keys) else ""
    out.say(
        f"purged {purged} dead letters{gone} (each logged as dlq.purged); audit: dlq_actions #{action_id}"
    )
    out.result(action_id=action_id, selected=len(keys), purged=purged)
    return 0


async def cmd_dlq_reindex(s: Settings, args: argparse.Namespace) -> int:
    """Reads the dead queue once and writes the rows the index lacks."""
    topo = Topology.from_settings(s)
    out = _Output(args.json)
    async with database(s) as pool, broker(s, "paw-dlq-cli") as connection:
        action_id = await dead_queue.start_action(
            pool, "reindex", actor=args.actor, filters={}, dry_run=False
        )
        fixed = Reindexed(0, 0, 0, 0)
        try:
            async with dead_queue.held_dead_letters(connection, topo) as (held, _):
                letters = await dead_queue.resolve_items(pool, [h.letter for h in held])
                fixed = await dead_index.reindex(pool, letters)
        finally:
            await dead_queue.finish_action(pool, action_id, fixed.added)
    out.say(
        f"read {fixed.on_queue} dead letters off {topo.dead_queue}: {fixed.added} added to the index, "
        f"{fixed.restored} back to dead (a purge had not finished), {fixed.missing} indexed as dead but "
        f"not on the queue; audit: dlq_actions #{action_id}"
    )
    out.result(action_id=action_id, **dataclasses.asdict(fixed))
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
