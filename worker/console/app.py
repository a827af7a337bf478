"""``paw console``: the on-call web console. Server-rendered HTML (aiohttp-jinja2, autoescape on)
with htmx served from the package (no CDN); every page's data also answers as JSON under
``/console/api/`` from the same function (:mod:`worker.console.data`). Mutations are POST only,
behind the sign-in, roles and CSRF checks of :mod:`worker.console.auth`, and call the functions the
CLI calls (:mod:`worker.operate`, :mod:`worker.bus.dlq_jobs`).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web

from worker import operate
from worker.bus import dead_index, dead_queue, dlq, dlq_jobs
from worker.bus.dlq import Filters
from worker.bus.publisher import Publisher
from worker.bus.topology import Topology
from worker.console import auth, data
from worker.errors import PublishFailed, UpstreamError
from worker.items.model import Cause
from worker.items.store import Store
from worker.services import Services
from worker.settings import Settings

log = structlog.get_logger(__name__)

Page = Callable[[web.Request], Awaitable[dict[str, Any] | None]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclasses.dataclass
class Console:
    settings: Settings
    svc: Services
    store: Store
    topo: Topology
    publisher: Publisher


CONSOLE = web.AppKey("console", Console)


def _console(request: web.Request) -> Console:
    return request.app[CONSOLE]


def _json(value: Any, status: int = 200) -> web.Response:
    return web.json_response(value, status=status, dumps=lambda v: json.dumps(v, default=str))


def page(template: str, fn: Page) -> tuple[Handler, Handler]:
    """The HTML and the JSON handler of one page, from one data function (``None``: 404)."""

    async def html(request: web.Request) -> web.StreamResponse:
        found = await fn(request)
        if found is None:
            raise web.HTTPNotFound(text="not found")
        return aiohttp_jinja2.render_template(template, request, {**found, **_chrome(request)})

    async def api(request: web.Request) -> web.StreamResponse:
        found = await fn(request)
        if found is None:
            return _json({"error": "not found"}, status=404)
        return _json(found)

    return html, api


def _chrome(request: web.Request) -> dict[str, Any]:
    """What every page's frame shows: who is signed in, what they may do, the CSRF token."""
    person = auth.person(request)
    return {
        "person": person,
        "may": {a: auth.allowed(person.role, a) for a in ("replay", "retry", "purge", "forget")},
        "csrf_token": auth.csrf_token(request),
        "plaid_env": _console(request).settings.plaid_env,
    }


# -- Pages -------------------------------------------------------------------------------------


async def overview(request: web.Request) -> dict[str, Any]:
    c = _console(request)
    environment = {
        "plaid_env": c.settings.plaid_env,
        "plaid_host": c.settings.plaid_host,
        "exchange": c.topo.exchange,
        "queue_prefix": c.topo.prefix,
    }
    return await data.overview(c.store, c.svc.connection, c.topo, environment=environment)


async def items(request: web.Request) -> dict[str, Any]:
    q = request.query
    return await data.items(
        _console(request).store,
        data.ItemQuery(
            q=q.get("q", ""),
            state=q.get("state", ""),
            code=q.get("code", ""),
            since=q.get("since", ""),
            after=q.get("after", ""),
        ),
    )


async def item(request: web.Request) -> dict[str, Any] | None:
    return await data.item(_console(request).store, request.match_info["id"])


async def dead_letters(request: web.Request) -> dict[str, Any]:
    return await data.dead_letters(_console(request).store.pool, dict(request.query))


async def dead_letter(request: web.Request) -> dict[str, Any] | None:
    return await data.dead_letter(_console(request).store.pool, request.match_info["key"].lower())


async def actions(request: web.Request) -> dict[str, Any]:
    pool = _console(request).store.pool
    found = await data.actions(pool)
    found["jobs"] = data.safe({"j": [j.public() for j in await dlq_jobs.list_recent(pool, 50)]})["j"]
    return found


async def job(request: web.Request) -> dict[str, Any] | None:
    try:
        job_id = int(request.match_info["id"])
    except ValueError:
        return None
    found = await dlq_jobs.get(_console(request).store.pool, job_id)
    return None if found is None else data.safe({"job": found.public()})


# -- Actions (POST) ----------------------------------------------------------------------------


async def _form(request: web.Request) -> dict[str, str]:
    """The form's fields; the ids of several ticked dead letters come as one space-separated ``ids``."""
    form = await request.post()
    out = {k: str(v) for k, v in form.items() if isinstance(v, str) and k != "ids"}
    ids = [str(v) for v in form.getall("ids", []) if isinstance(v, str)]
    if ids:
        out["ids"] = " ".join(" ".join(ids).replace(",", " ").split())
    return out


def _wants_json(request: web.Request) -> bool:
    return request.path.startswith("/console/api/")


async def plan_replay(request: web.Request) -> web.StreamResponse:
    """What a replay of a selection or a filter would do: counts, reasons, the CLI line. Changes
    nothing (the dead queue is not read)."""
    auth.require(request, "replay")
    params = await _form(request)
    pool = _console(request).store.pool
    try:
        filters = data.filters_from(params, datetime.now(UTC))
        limit = _positive(params.get("limit"))
    except ValueError as e:
        return _problem(request, str(e))
    if filters.empty and params.get("all") != "yes":
        return _problem(request, "nothing selected: choose dead letters, a filter, or all")
    plan = await dead_queue.plan_replay(pool, filters, limit)
    out = data.safe(
        {
            "plan": plan.public(),
            "params": params,
            "cli": data.cli_line("replay", params) + (" --all" if filters.empty else ""),
        }
    )
    if _wants_json(request):
        return _json(out)
    return aiohttp_jinja2.render_template("plan.html", request, {**out, **_chrome(request)})


async def start_replay(request: web.Request) -> web.StreamResponse:
    """Confirmed: a replay job the workers run (a closed tab does not stop it)."""
    person = auth.require(request, "replay")
    params = await _form(request)
    pool = _console(request).store.pool
    try:
        filters = data.filters_from(params, datetime.now(UTC))
        limit = _positive(params.get("limit"))
        rate = float(params["rate"]) if params.get("rate", "").strip() else None
    except ValueError as e:
        return _problem(request, str(e))
    if rate is not None and rate <= 0:
        return _problem(request, "the rate must be positive")
    if filters.empty and params.get("all") != "yes":
        return _problem(request, "nothing selected: choose dead letters, a filter, or all")
    job_id = await dlq_jobs.enqueue(pool, "replay", filters, limit=limit, rate=rate, actor=person.actor)
    log.info("console.replay_requested", job_id=job_id, actor=person.actor, **filters.public())
    if _wants_json(request):
        return _json({"job_id": job_id}, status=202)
    raise web.HTTPSeeOther(f"/console/jobs/{job_id}")


def _pinned(params: dict[str, str], now: datetime) -> dict[str, str]:
    """``params`` with the time window made absolute as of ``now`` (a relative ``--since 2h`` or no
    ``--until`` would pick more dead letters at the confirm than the plan showed)."""
    out = dict(params)
    for name in ("since", "until"):
        if out.get(name, "").strip():
            out[name] = dlq.parse_since(out[name], now, name).isoformat()
    out.setdefault("until", now.isoformat())
    if not out["until"].strip():
        out["until"] = now.isoformat()
    return out


async def plan_purge(request: web.Request) -> web.StreamResponse:
    """What a purge of a selection or a filter would delete: counts, reasons, the first rows, the CLI
    line. Changes nothing; the confirm form pins the time window, so it deletes no dead letter that
    arrived after this plan."""
    auth.require(request, "purge")
    params = await _form(request)
    pool = _console(request).store.pool
    now = datetime.now(UTC)
    try:
        filters = data.filters_from(params, now)
        limit = _positive(params.get("limit"))
        pinned = _pinned(params, now)
    except ValueError as e:
        return _problem(request, str(e))
    if filters.empty and params.get("all") != "yes":
        return _problem(request, "nothing selected: choose dead letters, a filter, or all")
    keys = await dead_index.chosen_keys(pool, filters, limit)
    rows = dead_queue.PLAN_ROWS
    page = await dead_index.page(pool, Filters(ids=tuple(keys[:rows])), limit=rows)
    # with a limit, the reasons of the rows shown; else of everything the filters pick
    reasons = dlq.by_reason(page.letters) if limit else await dead_index.by_reason(pool, filters)
    out = data.safe(
        {
            "plan": {
                "would_purge": len(keys),
                "by_reason": reasons,
                "sample": [d.summary(now) for d in page.letters],
            },
            "params": {k: v for k, v in pinned.items() if k != "csrf_token"},
            "cli": data.cli_line("purge", pinned) + (" --all" if filters.empty else ""),
        }
    )
    if _wants_json(request):
        return _json(out)
    return aiohttp_jinja2.render_template("purge_plan.html", request, {**out, **_chrome(request)})


async def purge(request: web.Request) -> web.StreamResponse:
    """Confirmed: deletes for good the dead letters the plan showed that are still there (each logged,
    redacted, as ``dlq.purged``; the audit's actor is the signed-in person)."""
    person = auth.require(request, "purge")
    params = await _form(request)
    c = _console(request)
    try:
        filters = data.filters_from(params, datetime.now(UTC))
        limit = _positive(params.get("limit"))
    except ValueError as e:
        return _problem(request, str(e))
    if params.get("confirm") != "yes":
        return _problem(request, "nothing purged: tick the confirmation first")
    if filters.empty and params.get("all") != "yes":
        return _problem(request, "nothing selected: choose dead letters, a filter, or all")
    keys = await dead_index.chosen_keys(c.store.pool, filters, limit)
    audit = {**filters.public(), "all": params.get("all") == "yes", "limit": limit}
    action_id, purged = (None, 0)
    if keys:
        action_id, purged = await dead_queue.purge_keys(
            c.store.pool,
            c.svc.connection,
            c.topo,
            keys,
            actor=person.actor,
            audit={k: v for k, v in audit.items() if v},
        )
    log.info("console.purged", action_id=action_id, actor=person.actor, selected=len(keys), purged=purged)
    if _wants_json(request):
        return _json({"action_id": action_id, "selected": len(keys), "purged": purged})
    raise web.HTTPSeeOther("/console/actions")


async def cancel_job(request: web.Request) -> web.StreamResponse:
    auth.require(request, "replay")
    job_id = int(request.match_info["id"])
    await dlq_jobs.request_cancel(_console(request).store.pool, job_id)
    if _wants_json(request):
        return _json({"job_id": job_id, "cancel_requested": True})
    raise web.HTTPSeeOther(f"/console/jobs/{job_id}")


async def retry(request: web.Request) -> web.StreamResponse:
    person = auth.require(request, "retry")
    c = _console(request)
    params = await _form(request)
    try:
        item_id = uuid.UUID(request.match_info["id"])
    except ValueError:
        return _problem(request, "not an Item id")
    try:
        done = await operate.retry_item(
            c.store, c.publisher, item_id, actor=person.actor, reason=params.get("reason") or None
        )
    except PublishFailed as e:
        return _problem(request, f"not sent: the broker did not confirm ({e})", status=503)
    if done.refused is not None:
        return _problem(request, done.refused, status=409)
    if _wants_json(request):
        return _json({"item_id": str(item_id), "sent": "item.drive", "message_id": done.message_id})
    raise web.HTTPSeeOther(f"/console/items/{item_id}")


async def forget(request: web.Request) -> web.StreamResponse:
    """``paw item forget``: removed at Plaid and at Atomic, tokens destroyed (the same function)."""
    person = auth.require(request, "forget")
    c = _console(request)
    params = await _form(request)
    try:
        item_id = uuid.UUID(request.match_info["id"])
    except ValueError:
        return _problem(request, "not an Item id")
    if params.get("confirm") != "yes":
        return _problem(request, "not forgotten: tick the confirmation first")
    found = await c.store.get(item_id)
    if found is None:
        return _problem(request, f"no item {item_id}", status=404)
    try:
        done = await c.svc.pipeline.forget(found, Cause("console forget", person.actor))
    except UpstreamError as e:
        return _problem(request, operate.forget_refusal(e).removeprefix("paw: "), status=409)
    log.info("console.item_forgotten", item_id=str(item_id), actor=person.actor)
    if _wants_json(request):
        state = done.state.value if done else found.state.value
        return _json({"item_id": str(item_id), "forgotten": True, "state": state})
    raise web.HTTPSeeOther(f"/console/items/{item_id}")


def _positive(text: str | None) -> int | None:
    if not text or not text.strip():
        return None
    value = int(text)
    if value < 1:
        raise ValueError("the limit must be a positive number")
    return value


def _problem(request: web.Request, reason: str, status: int = 400) -> web.StreamResponse:
    if _wants_json(request):
        return _json({"error": reason}, status=status)
    return aiohttp_jinja2.render_template(
        "problem.html", request, {"reason": reason, **_chrome(request)}, status=status
    )


# -- The application ---------------------------------------------------------------------------

PAGES: list[tuple[str, str, str, Page]] = [
    ("/console/", "/console/api/overview", "overview.html", overview),
    ("/console/items", "/console/api/items", "items.html", items),
    ("/console/items/{id}", "/console/api/items/{id}", "item.html", item),
    ("/console/dead-letters", "/console/api/dead-letters", "dead_letters.html", dead_letters),
    ("/console/dead-letters/{key}", "/console/api/dead-letters/{key}", "dead_letter.html", dead_letter),
    ("/console/actions", "/console/api/actions", "actions.html", actions),
    ("/console/jobs/{id}", "/console/api/jobs/{id}", "job.html", job),
]

POSTS: list[tuple[str, Handler]] = [
    ("/dead-letters/plan", plan_replay),
    ("/dead-letters/replay", start_replay),
    ("/dead-letters/purge-plan", plan_purge),
    ("/dead-letters/purge", purge),
    ("/jobs/{id}/cancel", cancel_job),
    ("/items/{id}/retry", retry),
    ("/items/{id}/forget", forget),
]


def _filters(env: jinja2.Environment) -> None:
    def when(value: Any) -> str:
        if not value:
            return ""
        at = datetime.fromisoformat(value) if isinstance(value, str) else value
        return str(at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"))

    env.filters["when"] = when
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, default=str, sort_keys=True)


def _login_page(request: web.Request, context: auth.LoginContext, status: int) -> web.StreamResponse:
    return aiohttp_jinja2.render_template("login.html", request, context.as_dict(), status=status)


def static_dir() -> Path:
    return Path(str(resources.files("worker.console") / "static"))


def create_app(settings: Settings, svc: Services, security: auth.ConsoleAuth) -> web.Application:
    """The console on ``svc`` (its pool, connection and publisher); tests use the same factory."""
    app = web.Application(middlewares=auth.security_middlewares(security))
    app[CONSOLE] = Console(
        settings=settings, svc=svc, store=svc.store, topo=svc.topo, publisher=svc.publisher
    )
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("worker.console", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
    )
    _filters(env)
    app[aiohttp_jinja2.static_root_key] = "/console/static"
    for path, api_path, template, fn in PAGES:
        html, api = page(template, fn)
        app.router.add_get(path, html)
        app.router.add_get(api_path, api)
    for path, handler in POSTS:
        app.router.add_post("/console" + path, handler)
        app.router.add_post("/console/api" + path, handler)
    auth.add_login_routes(app, security, render=_login_page)
    app.router.add_static("/console/static", static_dir(), append_version=True)

    async def root(_: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/console/")

    app.router.add_get("/", root)
    app.router.add_get("/console", root)
    return app
