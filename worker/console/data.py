"""What each console page shows, as plain JSON-safe dicts: the same dict is rendered as HTML and
answered as JSON under ``/console/api/``. Reads only, through the functions ``paw status``,
``paw item`` and ``paw dlq`` use (:mod:`worker.status`, :class:`worker.items.store.Store`,
:mod:`worker.bus.dead_index`); everything leaves through :func:`worker.redact.redact`."""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aio_pika.abc import AbstractRobustConnection

from worker.bus import dead_index
from worker.bus.dlq import Filters, parse_since
from worker.bus.topology import Topology
from worker.items.rules import retry_refusal
from worker.items.states import State
from worker.items.store import Store
from worker.redact import redact
from worker.sql import query
from worker.status import STUCK_AFTER, gather, verdict

PAGE = 50
STATES = [s.value for s in State]


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def plain(value: Any) -> Any:
    """JSON-safe: times as ISO 8601 (UTC), UUIDs as text, nested containers walked."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def safe(value: Mapping[str, Any]) -> dict[str, Any]:
    """What a page may show: JSON-safe, tokens and secret-named fields masked."""
    out: dict[str, Any] = redact(plain(value))
    return out


# -- Overview ----------------------------------------------------------------------------------


async def overview(
    store: Store, connection: AbstractRobustConnection, topo: Topology, *, environment: Mapping[str, str]
) -> dict[str, Any]:
    status = await gather(store, connection, topo)
    code, line = verdict(status)
    states = await store.pool.fetch(query("console_states"))
    errors = await store.pool.fetch(query("console_error_codes"))
    applied = await store.pool.fetch(query("console_last_applied"))
    rejects: dict[str, int] = {}
    for (source, outcome, reason), n in status.last_hour.items():
        if outcome in ("rejected", "publish_failed"):
            key = f"{source}: {reason or outcome}"
            rejects[key] = rejects.get(key, 0) + n
    return safe(
        {
            "check": {"code": code, "line": line},
            "queues": [
                {"name": name, **dataclasses.asdict(q), "missing": name in status.missing}
                for name, q in status.queues.items()
            ],
            "dead_letters": status.dead_letters,
            "dead_by_reason": [{"reason": r, "n": n} for r, n in status.dead_by_reason],
            "dead_unindexed": status.dead_unindexed,
            "states": [{"state": r["state"], "n": r["n"], "changed_24h": r["changed_24h"]} for r in states],
            "stuck": status.stuck,
            "stuck_after": str(STUCK_AFTER),
            "last_received": status.last_received,
            "last_applied": [dict(r) for r in applied],
            "rejects_last_hour": sorted(rejects.items(), key=lambda kv: -kv[1]),
            "received_last_hour": status.count("received"),
            "accepted_last_hour": status.count("accepted"),
            "upstream_errors": [dict(r) for r in errors],
            "outbox": {"unsent": status.outbox_unsent, "oldest_s": round(status.outbox_oldest_s, 1)},
            "setup_problems": status.setup_problems,
            "environment": dict(environment),
        }
    )


# -- Items -------------------------------------------------------------------------------------


def encode_cursor(updated_at: datetime, item_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{updated_at.isoformat()}|{item_id}".encode()).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[datetime, uuid.UUID] | None:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        at, _, item_id = raw.partition("|")
        return datetime.fromisoformat(at), uuid.UUID(item_id)
    except (ValueError, UnicodeDecodeError):
        return None


@dataclasses.dataclass(frozen=True)
class ItemQuery:
    q: str = ""
    state: str = ""
    code: str = ""
    since: str = ""
    after: str = ""

    def problems(self) -> list[str]:
        out = []
        if self.state and self.state not in {s.value for s in State}:
            out.append(f"no state {self.state!r}")
        if self.since:
            try:
                parse_since(self.since, datetime.now(UTC))
            except ValueError as e:
                out.append(str(e).replace("--since", "since"))
        if self.after and decode_cursor(self.after) is None:
            out.append("a page cursor that is not one")
        return out


async def items(store: Store, query_: ItemQuery) -> dict[str, Any]:
    """One search box taking any id the CLI lookup takes, or filters, in keyset pages."""
    problems = query_.problems()
    if problems:
        return {
            "query": dataclasses.asdict(query_),
            "problems": problems,
            "items": [],
            "next": None,
            "states": STATES,
        }
    if query_.q.strip():
        found = await store.find(query_.q.strip(), limit=PAGE)
        return safe(
            {
                "query": dataclasses.asdict(query_),
                "problems": [],
                "items": [i.public() for i in found],
                "next": None,
                "states": STATES,
            }
        )
    since = parse_since(query_.since, datetime.now(UTC)) if query_.since else None
    rows = await store.filter(
        states=[query_.state] if query_.state else None,
        error_code=query_.code or None,
        since=since,
        until=None,
        client_user_id=None,
        limit=PAGE + 1,
        before=decode_cursor(query_.after) if query_.after else None,
    )
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    return safe(
        {
            "query": dataclasses.asdict(query_),
            "problems": [],
            "items": [i.public() for i in rows],
            "next": encode_cursor(rows[-1].updated_at, rows[-1].id) if more and rows else None,
            "states": STATES,
        }
    )


async def item(store: Store, text: str) -> dict[str, Any] | None:
    """Everything about one Item, with one timeline merging its history, its webhooks, its dead
    letters and their replays, its notes and its outcome events."""
    found = await store.find(text, limit=2)
    if len(found) != 1:
        return None
    it = found[0]
    history = await store.history(it.id)
    inbox = await store.pool.fetch(query("console_inbox_for_item"), it.id)
    dead = await store.pool.fetch(query("console_dead_letters_for_item"), it.id)
    events = await store.events(it.id)
    notes = await store.notes(it.id)
    timeline: list[dict[str, Any]] = []
    for h in history:
        timeline.append(
            {
                "at": h.at,
                "kind": "transition",
                "title": f"{h.from_state or '—'} → {h.to_state}",
                "detail": f"{h.trigger} ({h.cause})",
                "data": h.detail,
            }
        )
    for r in inbox:
        timeline.append(
            {
                "at": r["received_at"],
                "kind": "webhook",
                "title": r["routing_key"],
                "detail": r["outcome"],
                "data": r["payload"],
            }
        )
    for d in dead:
        timeline.append(
            {
                "at": d["dead_lettered_at"],
                "kind": "dead_letter",
                "title": f"dead letter {d['key'][:12]} ({d['routing_key']})",
                "detail": f"{d['error_code'] or d['error_class']}: {d['error_message']} "
                f"after {d['attempts']} attempt(s); {d['status']}",
                "link": d["key"][:12],
                "data": {},
            }
        )
        if d["replayed_at"]:
            timeline.append(
                {
                    "at": d["replayed_at"],
                    "kind": "replay",
                    "title": f"dead letter {d['key'][:12]} replayed",
                    "detail": f"by {d['replayed_by']}",
                    "data": {},
                }
            )
    for n in notes:
        timeline.append(
            {
                "at": n["at"],
                "kind": "note",
                "title": n["kind"],
                "detail": f"{n['actor']}: {n['text']}",
                "data": {"message_id": n["message_id"]},
            }
        )
    for e in events:
        occurred = e.get("occurred_at")
        timeline.append(
            {
                "at": datetime.fromisoformat(occurred) if isinstance(occurred, str) else e.get("sent_at"),
                "kind": "outcome_event",
                "title": f"item.state.{e['to_state']} #{e['sequence']}",
                "detail": "published" if e.get("sent_at") else "not yet published",
                "data": {"event_id": e["event_id"]},
            }
        )
    for t in timeline:
        t.setdefault("link", None)
    timeline.sort(key=lambda x: x["at"] or datetime.max.replace(tzinfo=UTC))
    refusal = retry_refusal(it.state)
    ids = {
        "id": str(it.id),
        "client_user_id": it.client_user_id,
        "plaid_item_id": it.plaid_item_id,
        "account_id": it.account_id,
        "atomic_funding_source_id": it.atomic_funding_source_id,
    }
    return safe(
        {
            "item": it.public(),
            "ids": {k: v for k, v in ids.items() if v},
            "timeline": timeline,
            "can_retry": refusal is None,
            "retry_refusal": refusal,
            "can_forget": it.access_token is not None or it.atomic_funding_source_id is not None,
            "forget_refusal": None
            if (it.access_token is not None or it.atomic_funding_source_id is not None)
            else "nothing left to remove: no access token and no funding source",
        }
    )


# -- Dead letters ------------------------------------------------------------------------------


def filters_from(params: Mapping[str, str], now: datetime) -> Filters:
    """The CLI's filters from a query string; raises ``ValueError`` with the reason."""

    def text(name: str) -> str | None:
        value = params.get(name, "").strip()
        return value or None

    attempts = text("min_attempts")
    ids = tuple(i for i in (params.get("ids", "") or "").replace(",", " ").split() if i)
    return Filters(
        ids=ids,
        item=text("item"),
        code=text("code"),
        error=text("error"),
        since=parse_since(params["since"], now) if text("since") else None,
        until=parse_since(params["until"], now, "until") if text("until") else None,
        routing_key=text("routing_key"),
        min_attempts=int(attempts) if attempts else None,
        state=text("state"),
    )


def cli_line(command: str, params: Mapping[str, str]) -> str:
    """The ``paw dlq ...`` line that does what the console does."""
    parts = [f"paw dlq {command}"]
    ids = (params.get("ids", "") or "").replace(",", " ").split()
    parts += ids
    for name in ("item", "code", "error", "since", "until", "routing_key", "min_attempts", "state", "limit"):
        value = (params.get(name) or "").strip()
        if value:
            shown = (
                value if value.replace("-", "").replace("_", "").replace(".", "").isalnum() else repr(value)
            )
            parts.append(f"--{name.replace('_', '-')} {shown}")
    if command == "replay" and (params.get("rate") or "").strip():
        parts.append(f"--rate {params['rate'].strip()}")
    return " ".join(parts)


async def dead_letters(pool: asyncpg.Pool, params: Mapping[str, str]) -> dict[str, Any]:
    now = datetime.now(UTC)
    try:
        filters = filters_from(params, now)
    except ValueError as e:
        return {"params": dict(params), "problems": [str(e)], "groups": [], "letters": [], "next": None}
    groups = await pool.fetch(query("dead_letter_groups"), *filters.sql_args())
    after = 0
    if params.get("after"):
        try:
            after = await dead_index.seq_of(pool, params["after"])
        except LookupError:
            return {
                "params": dict(params),
                "problems": ["no such page"],
                "groups": [],
                "letters": [],
                "next": None,
            }
    page = await dead_index.page(pool, filters, after=after, limit=PAGE)
    counts = await dead_index.counts(pool)
    return safe(
        {
            "params": dict(params),
            "problems": [],
            "filtered": not filters.empty,
            "total": counts.get("dead", 0),
            "matched": page.matched,
            "groups": [dict(g) for g in groups],
            "letters": [d.summary(now) for d in page.letters],
            "next": page.letters[-1].short_id if page.next_after is not None and page.letters else None,
            "cli": {"list": cli_line("list", params), "replay": cli_line("replay", params)},
        }
    )


async def dead_letter(pool: asyncpg.Pool, prefix: str) -> dict[str, Any] | None:
    found = await dead_index.by_prefix(pool, prefix)
    if len(found) != 1:
        return None
    detail = found[0].detail(datetime.now(UTC))
    detail["cli"] = {
        "show": f"paw dlq show {found[0].short_id}",
        "replay": f"paw dlq replay {found[0].short_id}",
    }
    return safe(detail)


def _jsonb(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else (value or {})


async def actions(pool: asyncpg.Pool, limit: int = 100) -> dict[str, Any]:
    rows = await pool.fetch(query("console_actions"), limit)
    notes = await pool.fetch(query("console_notes"), limit)
    stale = datetime.now(UTC) - timedelta(hours=1)
    return safe(
        {
            "actions": [
                {
                    **dict(r),
                    "filters": r["filters"]
                    if isinstance(r["filters"], dict)
                    else json.loads(r["filters"] or "{}"),
                    "unfinished": r["finished_at"] is None and r["started_at"] < stale,
                    "running": r["finished_at"] is None and r["started_at"] >= stale,
                }
                for r in rows
            ],
            "notes": [dict(n) for n in notes],
        }
    )
