"""``paw status``: what on-call sees first, gathered (rendering is :func:`worker.cli.render.status_view`).

Read-only: it declares nothing (a mistyped ``PAW_QUEUE_PREFIX`` must not create queues that then
collect copies of every message). A queue that does not exist is reported as missing, naming the
prefix. :func:`verdict` turns what was gathered into a Nagios-style exit code and one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from worker.bus import dead_index
from worker.bus.dlq import Filters
from worker.bus.topology import Topology
from worker.items.store import Store
from worker.sql import query

STUCK_AFTER = timedelta(minutes=15)
# An outcome event unsent for longer than this: the relay cannot publish (warning).
OUTBOX_LAG = timedelta(minutes=1)

OK, WARNING, CRITICAL = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class QueueFacts:
    ready: int
    consumers: int
    retrying: int  # messages waiting in the queue's delay queues, on their way back


@dataclasses.dataclass(frozen=True)
class Status:
    prefix: str
    queues: dict[str, QueueFacts]
    dead_letters: int
    items: dict[str, int]
    stuck: list[dict[str, Any]]
    last_webhook: dict[str, Any] | None
    setup_problems: list[str] = dataclasses.field(default_factory=list)  # operator errors, one line each
    missing: list[str] = dataclasses.field(default_factory=list)  # queues that do not exist
    outbox_unsent: int = 0
    outbox_oldest_s: float = 0.0
    # what the receivers reported for the last hour: (source, outcome, reason) -> count
    last_hour: dict[tuple[str, str, str], int] = dataclasses.field(default_factory=dict)
    last_received: dict[str, datetime] = dataclasses.field(default_factory=dict)  # per source
    # the dead-letter index: dead letters per reason, most first (their sum: what it knows)
    dead_by_reason: list[tuple[str, int]] = dataclasses.field(default_factory=list)

    @property
    def dead_unindexed(self) -> int:
        """Messages on the dead queue the index does not know (``paw dlq reindex`` adds them)."""
        return max(0, self.dead_letters - sum(n for _, n in self.dead_by_reason))

    def count(self, outcome: str, source: str | None = None) -> int:
        """Last hour's ``outcome`` (``received``, ``accepted``, ``rejected``, ``publish_failed``...)."""
        return sum(
            n for (src, out, _), n in self.last_hour.items() if out == outcome and source in (None, src)
        )

    def as_json(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            return (
                v.isoformat()
                if isinstance(v, datetime)
                else str(v)
                if not isinstance(v, int | str | None)
                else v
            )

        code, line = verdict(self)
        return {
            "check": {"code": code, "line": line},
            "queues": {name: dataclasses.asdict(q) for name, q in self.queues.items()},
            "missing_queues": self.missing,
            "dead_letters": self.dead_letters,
            "dead_letters_by_reason": dict(self.dead_by_reason),
            "dead_letters_unindexed": self.dead_unindexed,
            "outbox": {"unsent": self.outbox_unsent, "oldest_s": round(self.outbox_oldest_s, 1)},
            "items": self.items,
            "stuck": [{k: plain(v) for k, v in s.items()} for s in self.stuck],
            "last_webhook": {k: plain(v) for k, v in self.last_webhook.items()}
            if self.last_webhook
            else None,
            "setup_problems": self.setup_problems,
            "webhooks_last_hour": [
                {"source": src, "outcome": out, "reason": reason, "count": n}
                for (src, out, reason), n in self.last_hour.items()
            ],
            "last_webhook_received": {src: at.isoformat() for src, at in self.last_received.items()},
        }


async def _facts(channel: AbstractChannel, name: str) -> tuple[int, int]:
    """(ready, consumers) of ``name``, by a passive declare on the underlying AMQP channel (aio-pika's
    robust channel would answer from its cache). A missing queue raises ``ChannelNotFoundEntity``."""
    underlay = await channel.get_underlay_channel()
    ok = await underlay.queue_declare(name, passive=True)
    return int(ok.message_count or 0), int(ok.consumer_count or 0)


async def read_queues(
    connection: AbstractRobustConnection, names: list[str]
) -> dict[str, tuple[int, int] | None]:
    """Each queue's (ready, consumers), ``None`` where it does not exist. Declares nothing."""
    out: dict[str, tuple[int, int] | None] = {}
    channel = await connection.channel()
    try:
        for name in names:
            try:
                out[name] = await _facts(channel, name)
            except aiormq.exceptions.ChannelNotFoundEntity:
                out[name] = None
                with contextlib.suppress(Exception):
                    await channel.close()  # the broker closed it with the 404
                channel = await connection.channel()
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
    return out


async def gather(store: Store, connection: AbstractRobustConnection, topo: Topology) -> Status:
    delays = {q: [topo.retry_queue(q, d) for d in topo.retry_delays_ms] for q in topo.consumed_queues}
    names = [*topo.consumed_queues, *(r for rs in delays.values() for r in rs), topo.dead_queue]
    read = await read_queues(connection, names)
    missing = [name for name, facts in read.items() if facts is None]
    queues = {}
    for name in topo.consumed_queues:
        ready, consumers = read[name] or (0, 0)
        queues[name] = QueueFacts(ready, consumers, sum((read[r] or (0, 0))[0] for r in delays[name]))
    dead = (read[topo.dead_queue] or (0, 0))[0]
    stuck = [dict(r) for r in await store.pool.fetch(query("oldest_stuck_items"), STUCK_AFTER, 5)]
    last = await store.pool.fetchrow(query("last_webhook"))
    problems = [alert_line(a) for a in await store.recent_operator_alerts(OPERATOR_ALERT_WINDOW)]
    unsent, oldest_s = await store.outbox_backlog()
    last_hour = {
        (r["source"], r["outcome"], r["reason"]): int(r["n"]) for r in await store.receiver_last_hour()
    }
    return Status(
        prefix=topo.prefix,
        queues=queues,
        dead_letters=dead,
        items=await store.count_by_state(),
        stuck=stuck,
        last_webhook=dict(last) if last else None,
        setup_problems=problems,
        missing=missing,
        outbox_unsent=unsent,
        outbox_oldest_s=oldest_s,
        last_hour=last_hour,
        last_received=await store.last_received(),
        dead_by_reason=await dead_index.by_reason(store.pool, Filters()),
    )


def verdict(status: Status) -> tuple[int, str]:
    """Nagios-style: (0 ok / 1 warning / 2 critical, one line saying why). Pure."""
    critical, warning = [], []
    if status.missing:
        critical.append(
            f"{len(status.missing)} queue(s) missing, e.g. {status.missing[0]}: "
            f"is PAW_QUEUE_PREFIX={status.prefix} right? (paw status creates nothing)"
        )
    idle = [name for name, q in status.queues.items() if q.consumers == 0 and name not in status.missing]
    critical += [f"no consumer on {name}" for name in idle]
    if status.dead_letters:
        reasons = ", ".join(f"{reason} {n}" for reason, n in status.dead_by_reason[:3])
        why = f" ({reasons})" if reasons else ""
        warning.append(f"{status.dead_letters} dead letter(s){why}: paw dlq list")
    if status.dead_unindexed:
        warning.append(f"{status.dead_unindexed} dead letter(s) not indexed: paw dlq reindex")
    if status.stuck:
        warning.append(f"{len(status.stuck)}+ Item(s) stuck for over {STUCK_AFTER}")
    if status.setup_problems:
        warning.append(f"{len(status.setup_problems)} setup problem(s)")
    if failed := status.count("publish_failed"):
        warning.append(f"{failed} webhook(s) refused in the last hour: the broker did not confirm them")
    if status.outbox_oldest_s > OUTBOX_LAG.total_seconds():
        warning.append(
            f"{status.outbox_unsent} outcome event(s) unsent for up to {status.outbox_oldest_s:.0f}s"
        )
    if critical:
        return CRITICAL, "CRITICAL: " + "; ".join(critical + warning)
    if warning:
        return WARNING, "WARNING: " + "; ".join(warning)
    return OK, "OK: every queue consumed, no dead letters, nothing stuck"


# How long an operator error keeps the worker unready and on `paw status` after it was last met.
OPERATOR_ALERT_WINDOW = timedelta(minutes=15)


def alert_line(alert: Mapping[str, Any]) -> str:
    return (
        f"{alert['hint']} ({alert['error_code']} from {alert['service']} at {alert['step']}, "
        f"{alert['seen']}x, last {alert['last_seen']:%Y-%m-%d %H:%M:%S} UTC); once fixed: "
        f"paw dlq replay --code {alert['error_code']}"
    )
