"""``paw status``: what on-call sees first, gathered (rendering is :func:`worker.cli.render.status_view`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from aio_pika.abc import AbstractRobustConnection

from worker.bus.topology import Topology, declare, queue_depth
from worker.items.store import Store
from worker.sql import query

STUCK_AFTER = timedelta(minutes=15)


@dataclasses.dataclass(frozen=True)
class Status:
    queues: dict[str, int]
    dead_letters: int
    items: dict[str, int]
    stuck: list[dict[str, Any]]
    last_webhook: dict[str, Any] | None
    setup_problems: list[str] = dataclasses.field(default_factory=list)  # operator errors, one line each

    def as_json(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            return (
                v.isoformat()
                if isinstance(v, datetime)
                else str(v)
                if not isinstance(v, int | str | None)
                else v
            )

        return {
            "queues": self.queues,
            "dead_letters": self.dead_letters,
            "items": self.items,
            "stuck": [{k: plain(v) for k, v in s.items()} for s in self.stuck],
            "last_webhook": {k: plain(v) for k, v in self.last_webhook.items()}
            if self.last_webhook
            else None,
            "setup_problems": self.setup_problems,
        }


async def gather(store: Store, connection: AbstractRobustConnection, topo: Topology) -> Status:
    channel = await connection.channel()
    try:
        await declare(channel, topo)  # idempotent: what every paw process does when it starts
        queues = {name: await queue_depth(channel, name) for name in topo.consumed_queues}
        dead = await queue_depth(channel, topo.dead_queue)
    finally:
        await channel.close()
    stuck = [dict(r) for r in await store.pool.fetch(query("oldest_stuck_items"), STUCK_AFTER, 5)]
    last = await store.pool.fetchrow(query("last_webhook"))
    problems = [alert_line(a) for a in await store.recent_operator_alerts(OPERATOR_ALERT_WINDOW)]
    return Status(queues, dead, await store.count_by_state(), stuck, dict(last) if last else None, problems)


# How long an operator error keeps the worker unready and on `paw status` after it was last met.
OPERATOR_ALERT_WINDOW = timedelta(minutes=15)


def alert_line(alert: Mapping[str, Any]) -> str:
    return (
        f"{alert['hint']} ({alert['error_code']} from {alert['service']} at {alert['step']}, "
        f"{alert['seen']}x, last {alert['last_seen']:%Y-%m-%d %H:%M:%S} UTC); once fixed: "
        f"paw dlq replay --code {alert['error_code']}"
    )
