"""Everything paw prints for people (rich): Items and their histories, dead letters, the status
screen, progress bars, one age format, and the confirmation prompt."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from worker.bus import dlq
from worker.bus.dlq import DeadLetter
from worker.bus.dlq_jobs import Job
from worker.items.model import HistoryEntry, Item
from worker.status import STUCK_AFTER, Status, verdict


def utc(at: datetime) -> str:
    """An absolute time with its date, to the millisecond, in UTC."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def history_table(history: Sequence[HistoryEntry]) -> Table:
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for col in ("at (UTC)", "from", "to", "trigger", "cause", "detail"):
        table.add_column(col, no_wrap=col == "at (UTC)")
    for h in history:
        detail = ", ".join(f"{k}={v}" for k, v in h.detail.items() if v is not None)
        table.add_row(utc(h.at), h.from_state or "-", h.to_state, h.trigger, h.cause, detail)
    return table


def candidates_table(items: Sequence[Item], title: str) -> Table:
    table = Table(title=title)
    for col in ("item id", "state", "user", "error_code", "plaid item id", "funding source", "updated (UTC)"):
        table.add_column(col, no_wrap=col in ("item id", "updated (UTC)"))
    for item in items:
        table.add_row(
            str(item.id),
            item.state.value,
            item.client_user_id,
            item.error_code or "",
            item.plaid_item_id or "",
            item.atomic_funding_source_id or "",
            utc(item.updated_at),
        )
    return table


def print_item(item: Item, history: Sequence[HistoryEntry], console: Console | None = None) -> None:
    console = console or wide_console()
    error = f"  error: {item.error_code} ({item.error_message})" if item.error_code else ""
    console.print(f"[bold]{item.id}[/bold]  {item.state.value}  user={item.client_user_id}{error}")
    if item.state.value == "login_required" and item.resume_state:
        console.print(
            f"  waiting for the user to repair the bank login; returns to {item.resume_state.value}"
        )
    if item.consent_expires_at:
        console.print(f"  consent expires {item.consent_expires_at:%Y-%m-%d %H:%M} UTC (PENDING_EXPIRATION)")
    if item.disconnect_at:
        why = item.disconnect_reason or "PENDING_DISCONNECT"
        console.print(f"  Plaid disconnects it {item.disconnect_at:%Y-%m-%d %H:%M} UTC ({why})")
    console.print(history_table(history))


def items_table(rows: Sequence[tuple[str, Item]]) -> Table:
    table = Table(title="Items", show_lines=False)
    for col in ("case", "item id", "state", "error_code", "account", "funding source"):
        table.add_column(col, no_wrap=col == "item id", min_width=36 if col == "item id" else None)
    for label, item in rows:
        table.add_row(
            label,
            str(item.id),
            item.state.value,
            item.error_code or "",
            item.account_id or "",
            item.atomic_funding_source_id or "",
        )
    return table


def expiring_table(items: Sequence[Item], days: int) -> Table:
    table = Table(title=f"Items expiring or disconnecting within {days} days")
    for col in ("item id", "state", "user", "consent expires", "disconnect at", "reason"):
        table.add_column(col)
    for item in items:
        table.add_row(
            str(item.id),
            item.state.value,
            item.client_user_id,
            f"{item.consent_expires_at:%Y-%m-%d %H:%M}" if item.consent_expires_at else "",
            f"{item.disconnect_at:%Y-%m-%d %H:%M}" if item.disconnect_at else "",
            item.disconnect_reason or "",
        )
    return table


def wide_console() -> Console:
    """stdout; when it is not a terminal (a pipe, a file), wide enough for a whole table row."""
    console = Console()
    return console if console.is_terminal else Console(width=240)


def dead_letters_table(
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
    if wide:
        table.add_column("item state", no_wrap=True)
    if will is not None:
        table.add_column("will", no_wrap=True)
    for i, d in enumerate(letters):
        row = d.summary(now)
        cells = [
            row["id"],
            human_age(d.age(now)),
            d.routing_key or "?",
            row["item_id"] or row["plaid_item_id"] or "",
            d.reason,
            *([row["error"]] if wide else []),
            str(d.attempts),
            str(d.replays),
            *([d.item_state or ""] if wide else []),
        ]
        table.add_row(*cells, *([will[i]] if will is not None else []))
    return table


def reasons_line(letters: Sequence[DeadLetter]) -> str:
    """``INSTITUTION_DOWN 5, Poison 1``: how many of these dead letters per reason."""
    return counts_line(dlq.by_reason(letters))


def counts_line(pairs: Sequence[tuple[str, int]]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in pairs) or "-"


def job_filters_line(job: Job) -> str:
    """``code=INSTITUTION_DOWN, limit=10``: what a replay job selects."""
    return (
        ", ".join(f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in job.filters.items()) or "-"
    )


def job_progress(job: Job) -> str:
    return f"{job.done + job.failed}/{job.selected}" if job.started_at else "-"


def job_result_line(job: Job, exchange: str, dead_queue: str) -> str:
    """How a replay job ended (or where it is), in the words of the in-process replay's last line."""
    counts = (
        f"replayed {job.replayed} to {exchange}; {job.already} replayed before (acked only); "
        f"{job.failed} failed (still on {dead_queue})"
    )
    audit = f"; audit: dlq_actions #{job.action_id}" if job.action_id else ""
    if job.status == "done" and not job.selected:
        return f"job #{job.id} done: nothing to replay (no dead letter matched){audit}"
    if job.status == "cancelled" and not job.started_at:
        return f"job #{job.id} cancelled before a worker took it: nothing replayed"
    if job.status == "cancelled":
        return f"job #{job.id} cancelled: {counts}; the rest is still on {dead_queue}{audit}"
    if job.status == "failed":
        return f"job #{job.id} failed ({job.error}): {counts}{audit}"
    return f"job #{job.id} {job.status}: {counts}{audit}"


def show_job(console: Console, job: Job) -> None:
    """``paw dlq job ID``: one replay job."""
    cancel = " (cancel requested)" if job.cancel_requested and not job.finished else ""
    console.print(f"[bold]job #{job.id}[/bold]  {job.action}  {job.status}{cancel}  by {escape(job.actor)}")
    rate = f"{job.rate:g}/s" if job.rate else "unpaced"
    console.print(f"  filters: {escape(job_filters_line(job))}  rate: {rate}")
    console.print(
        f"  progress: {job_progress(job)} (replayed {job.replayed}, replayed before {job.already}, "
        f"failed {job.failed})"
    )
    times = [f"created {utc(job.created_at)}"]
    times += [f"started {utc(job.started_at)}"] if job.started_at else []
    times += [f"finished {utc(job.finished_at)}"] if job.finished_at else []
    times += [f"heartbeat {utc(job.heartbeat_at)}"] if job.heartbeat_at and not job.finished else []
    console.print("  " + ", ".join(times))
    if job.runs:
        on = f" (last on {escape(job.claimed_by)})" if job.claimed_by else ""
        console.print(f"  runs: {job.runs}{on}")
    if job.action_id:
        console.print(f"  audit: dlq_actions #{job.action_id}")
    if job.error:
        console.print(f"  error: {escape(job.error)}")


def jobs_table(jobs: Sequence[Job]) -> Table:
    table = Table(title="replay jobs, newest first", title_justify="left")
    for col in ("job", "status", "actor", "progress", "failed", "filters", "rate", "created (UTC)"):
        table.add_column(
            col, no_wrap=col != "filters", justify="right" if col in ("job", "failed") else "left"
        )
    for job in jobs:
        status = job.status + (" (cancelling)" if job.cancel_requested and not job.finished else "")
        table.add_row(
            str(job.id),
            status,
            job.actor,
            job_progress(job),
            str(job.failed),
            job_filters_line(job),
            f"{job.rate:g}/s" if job.rate else "-",
            utc(job.created_at),
        )
    return table


def progress_bar(total: int, what: str) -> Progress:
    return Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=total < 2,
    )


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
            print(prompt, end="", flush=True, file=sys.stderr)  # stdout is the command's output
            try:
                await ready.wait()
            finally:
                loop.remove_reader(fd)
            return _yes(sys.stdin.readline())
    print(prompt, end="", flush=True, file=sys.stderr)
    try:
        return _yes(input())  # noqa: ASYNC250 - a file (or no stdin): does not block
    except EOFError:
        return False


def human_age(age: timedelta | None) -> str:
    if age is None:
        return "?"
    s = max(int(age.total_seconds()), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def status_view(status: Status, now: datetime) -> Group:
    code, line = verdict(status)
    colour = ("green", "yellow", "red")[code]
    queues = Table(title="Queues", box=None)
    for col, justify in (
        ("queue", "left"),
        ("ready", "right"),
        ("retrying", "right"),
        ("consumers", "right"),
    ):
        queues.add_column(col, justify=justify)  # type: ignore[arg-type]
    for name, q in status.queues.items():
        if name in status.missing:
            queues.add_row(name, "[bold red]missing[/]", "", "")
            continue
        consumers = str(q.consumers) if q.consumers else "[bold red]0[/]"
        queues.add_row(name, str(q.ready), str(q.retrying), consumers)
    queues.add_row(
        "[bold]dead letters[/bold]",
        f"[bold red]{status.dead_letters}[/]" if status.dead_letters else "0",
        "",
        "",
    )
    for reason, n in status.dead_by_reason:
        queues.add_row(f"  {escape(reason)}", str(n), "", "")
    if status.dead_unindexed:
        queues.add_row("  [bold red]not indexed[/] (paw dlq reindex)", str(status.dead_unindexed), "", "")
    items = Table(title="Items per state", box=None)
    items.add_column("state")
    items.add_column("items", justify="right")
    for state, n in sorted(status.items.items()):
        items.add_row(state, str(n))
    stuck = Table(title=f"Oldest stuck Items (no progress for {STUCK_AFTER})", box=None)
    for col in ("item id", "state", "waiting", "error"):
        stuck.add_column(col)
    for s in status.stuck:
        stuck.add_row(str(s["id"]), s["state"], human_age(now - s["updated_at"]), s["error_code"] or "")
    if not status.stuck:
        stuck.add_row("none", "", "", "")
    last = status.last_webhook
    footer = (
        f"Last webhook applied: {last['routing_key']} ({last['outcome']}) at "
        f"{last['received_at']:%Y-%m-%d %H:%M:%S} UTC, {human_age(now - last['received_at'])} ago"
        if last
        else "Last webhook applied: none yet"
    )
    outbox = f"Outcome events unsent: {status.outbox_unsent}" + (
        f" (oldest {status.outbox_oldest_s:.0f}s)" if status.outbox_unsent else ""
    )
    received = ", ".join(
        f"{src} {at:%Y-%m-%d %H:%M:%S} UTC ({human_age(now - at)} ago)"
        for src, at in sorted(status.last_received.items())
    )
    footer += "\nLast webhook received: " + (received or "none reported by a receiver")
    webhooks = Table(title="Webhooks, last hour (what the receivers reported)", box=None)
    for col in ("source", "outcome", "reason", "count"):
        webhooks.add_column(col, justify="right" if col == "count" else "left")
    for (src, out, reason), n in status.last_hour.items():
        bad = out in ("rejected", "publish_failed", "key_unavailable")
        webhooks.add_row(src or "-", out, reason, f"[bold red]{n}[/]" if bad else str(n))
    if not status.last_hour:
        webhooks.add_row("none", "", "", "")
    problems = [f"[bold red]Setup problem:[/] {line}" for line in status.setup_problems]
    return Group(
        f"[bold {colour}]{escape(line)}[/]", *problems, queues, items, stuck, webhooks, footer, outbox
    )


SHOW_FACTS = (
    "routing_key",
    "item_id",
    "item_state",
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


# Envelope fields that hold Unix times (a Plaid webhook's JWT iat): shown as times too.
EPOCH_FIELDS = ("sent_at",)


def epoch_fields(body: object) -> list[tuple[str, int]]:
    """The envelope's Unix-time fields present in ``body``, to be shown as times."""
    if not isinstance(body, dict):
        return []
    return [(k, v) for k in EPOCH_FIELDS if isinstance(v := body.get(k), int) and 0 < v < 2**33]


def show_dead_letter(console: Console, detail: dict[str, Any]) -> None:
    """One dead letter in full: the facts, the broker's hops, every header, the body."""
    copies = detail["copies"]
    more = f", {copies} copies" if copies > 1 else ""
    console.print(f"[bold]{detail['key']}[/bold]  ({detail['status']}{more})", highlight=False)
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
    if detail.get("traceback"):
        console.print("traceback:")
        console.print(detail["traceback"], markup=False, highlight=False)
    console.print("body (redacted):")
    if isinstance(detail["body"], str):
        console.print(detail["body"], markup=False, highlight=False)
    else:
        console.print_json(json.dumps(detail["body"]))
        for name, value in epoch_fields(detail["body"]):
            console.print(f"{name} {value} is {utc(datetime.fromtimestamp(value, UTC))}", highlight=False)
