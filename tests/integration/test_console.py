"""The console's pages over HTTP on the real database and broker (the browser walk-through is in
tests/browser/): each page answers HTML and the same data as JSON, no page shows a token, and
looking at dead letters never touches the dead queue."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sandbox.app import SandboxConfig
from tests.helpers import (
    Letter,
    Sandbox,
    dead_headers,
    drive_letter,
    eventually,
    free_port,
    paw_env,
    queue_messages,
    run_paw,
    stored_item,
    verified_item,
)
from tests.integration.test_dlq import put_dead
from worker.console import auth
from worker.console.app import create_app
from worker.services import Services
from worker.settings import Settings

TOKEN_SHAPED = re.compile(
    r"\b(access|public|processor|link)-(sandbox|development|production)-(?!\[redacted\])[A-Za-z0-9-]{8,}"
)


@pytest.fixture
async def console(services: Services, settings: Settings) -> AsyncIterator[str]:
    """The console as `paw console` runs it with no sign-in configured: loopback only, the local
    operator is admin."""
    runner = web.AppRunner(create_app(settings, services, auth.ConsoleAuth.from_env({})))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as resp:
        return resp.status, await resp.text()


async def test_every_page_answers_html_and_json_and_none_shows_a_token(
    services: Services, settings: Settings, console: str
) -> None:
    token = "public-sandbox-" + str(uuid.uuid4())
    item = await stored_item(services, "u-console", public_token=token)
    link = Letter(
        json.dumps({"public_token": token, "client_user_id": "u-console"}).encode(),
        dead_headers("item.link", message=f"exchange failed for {token}"),
        str(uuid.uuid4()),
    )
    await put_dead(settings, [link, drive_letter(1)])
    key = link.key[:12]
    pages = [
        ("/console/", "/console/api/overview"),
        ("/console/items?q=u-console", "/console/api/items?q=u-console"),
        (f"/console/items/{item.id}", f"/console/api/items/{item.id}"),
        ("/console/dead-letters", "/console/api/dead-letters"),
        ("/console/dead-letters?code=INSTITUTION_DOWN", "/console/api/dead-letters?code=INSTITUTION_DOWN"),
        (f"/console/dead-letters/{key}", f"/console/api/dead-letters/{key}"),
        ("/console/actions", "/console/api/actions"),
    ]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # an IP host
        for html_path, api_path in pages:
            status, html = await get(http, console + html_path)
            assert status == 200, (html_path, html[:500])
            assert "<html" in html and TOKEN_SHAPED.findall(html) == [], html_path
            status, body = await get(http, console + api_path)
            assert status == 200, (api_path, body[:500])
            assert TOKEN_SHAPED.findall(body) == [], api_path
            json.loads(body)
        overview = json.loads((await get(http, console + "/console/api/overview"))[1])
        assert overview["dead_letters"] == 2 and {r["reason"] for r in overview["dead_by_reason"]} == {
            "INSTITUTION_DOWN"
        }
        listed = json.loads((await get(http, console + "/console/api/dead-letters"))[1])
        assert [g["n"] for g in listed["groups"]] == [2] and listed["cli"]["list"] == "paw dlq list"
        shown = json.loads((await get(http, console + f"/console/api/dead-letters/{key}"))[1])
        assert shown["item_id"] == str(item.id) and shown["body"]["public_token"] == "[redacted]"
        found = json.loads((await get(http, console + "/console/api/items?q=u-console"))[1])
        assert [i["id"] for i in found["items"]] == [str(item.id)]
        status, _ = await get(http, console + "/console/items/" + str(uuid.uuid4()))
        assert status == 404


async def test_looking_at_dead_letters_leaves_every_delivery_count_unchanged(
    services: Services, settings: Settings, console: str
) -> None:
    letters = [drive_letter(i) for i in range(3)]
    await put_dead(settings, letters)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # an IP host
        for _ in range(10):
            for path in ("/console/dead-letters", "/console/api/dead-letters", "/console/"):
                assert (await get(http, console + path))[0] == 200
            for x in letters:
                assert (await get(http, console + f"/console/dead-letters/{x.key[:12]}"))[0] == 200
    left = await queue_messages(settings.amqp_url, services.topo.dead_queue)
    assert [m.body for m in left] == [x.body for x in letters]
    assert [m.headers.get("x-delivery-count") for m in left] == [0, 0, 0]


async def test_mutations_need_a_post_with_a_csrf_token_and_a_same_origin(
    services: Services, console: str
) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # an IP host
        async with http.get(console + "/console/api/dead-letters/replay") as resp:
            assert resp.status == 404  # a GET never acts: that is only a dead letter's page, missing
        async with http.post(
            console + "/console/api/dead-letters/replay", data={"all": "yes"}, headers={"Origin": console}
        ) as resp:
            assert resp.status == 403  # no CSRF token
        async with http.get(console + "/console/") as resp:
            html = await resp.text()
            assert resp.headers["Content-Security-Policy"] == "default-src 'self'; frame-ancestors 'none'"
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
        assert csrf is not None
        async with http.post(
            console + "/console/api/dead-letters/replay",
            data={"all": "yes", "csrf_token": csrf.group(1)},
            headers={"Origin": "http://evil.example"},
        ) as resp:
            assert resp.status == 403  # another site's page
        async with http.post(
            console + "/console/api/dead-letters/plan",
            data={"all": "yes", "csrf_token": csrf.group(1)},
            headers={"Origin": console},
        ) as resp:
            assert resp.status == 200, await resp.text()
            plan = await resp.json()
            assert plan["plan"]["selected"] == 0 and plan["cli"] == "paw dlq replay --all"


async def _csrf(http: aiohttp.ClientSession, console: str) -> str:
    async with http.get(console + "/console/") as resp:
        found = re.search(r'<meta name="csrf-token" content="([^"]+)"', await resp.text())
    assert found is not None
    return found.group(1)


async def test_purge_plans_first_and_deletes_only_what_the_plan_showed(
    services: Services, settings: Settings, console: str
) -> None:
    down = [drive_letter(i) for i in range(3)]
    login = [drive_letter(10 + i, code="ITEM_LOGIN_REQUIRED") for i in range(2)]
    await put_dead(settings, [*down, *login])
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # an IP host
        csrf = await _csrf(http, console)

        async def post(path: str, form: list[tuple[str, str]]) -> tuple[int, Any]:
            async with http.post(
                console + "/console/api" + path,
                data=[*form, ("csrf_token", csrf)],
                headers={"Origin": console},
            ) as resp:
                return resp.status, await resp.json()

        # two ticked dead letters are two ids (a form repeats the field)
        status, plan = await post(
            "/dead-letters/purge-plan", [("ids", login[0].key[:12]), ("ids", login[1].key[:12])]
        )
        assert status == 200 and plan["plan"]["would_purge"] == 2, plan
        assert (
            plan["cli"]
            == f"paw dlq purge {login[0].key[:12]} {login[1].key[:12]} --until '{plan['params']['until']}'"
        )

        status, plan = await post("/dead-letters/purge-plan", [("code", "INSTITUTION_DOWN")])
        assert status == 200 and plan["plan"]["would_purge"] == 3
        assert plan["plan"]["by_reason"] == [["INSTITUTION_DOWN", 3]]
        # planning changed nothing, and one more of the same reason dies after the plan
        statuses = await services.pool.fetch("SELECT status FROM dead_letters")
        assert [r["status"] for r in statuses] == ["dead"] * 5
        late = drive_letter(99)
        await put_dead(settings, [late])

        status, refused = await post("/dead-letters/purge", list(plan["params"].items()))
        assert status == 400 and "confirmation" in refused["error"]
        status, done = await post("/dead-letters/purge", [*plan["params"].items(), ("confirm", "yes")])
        assert status == 200 and done["selected"] == 3 and done["purged"] == 3, done

    left = await queue_messages(settings.amqp_url, services.topo.dead_queue)
    assert sorted(m.body for m in left) == sorted(x.body for x in [*login, late])
    rows = await services.pool.fetch(
        "SELECT status, count(*) AS n FROM dead_letters GROUP BY status ORDER BY status"
    )
    assert [(r["status"], r["n"]) for r in rows] == [("dead", 3), ("purged", 3)]
    audit = await services.pool.fetchrow(
        "SELECT action, actor, message_count FROM dlq_actions WHERE id = $1", done["action_id"]
    )
    assert (audit["action"], audit["message_count"]) == ("purge", 3) and audit["actor"]


@pytest.fixture
def sandbox_config(sandbox_config_for_receiver: SandboxConfig) -> SandboxConfig:
    return sandbox_config_for_receiver  # Atomic's webhooks reach the receiver


async def test_retry_and_forget_call_what_the_cli_calls(
    services: Services, worker: Any, receiver: str, sandbox: Sandbox, console: str
) -> None:
    """Retry refuses a verified Item (nothing sent); Forget, confirmed, removes it at Plaid and at
    Atomic and destroys its tokens, as `paw item forget` does."""
    item = await verified_item(services, sandbox, receiver)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(console + f"/console/items/{item.id}") as resp:
            csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', await resp.text())
        assert csrf is not None
        form = {"csrf_token": csrf.group(1)}
        origin = {"Origin": console}
        async with http.post(
            console + f"/console/api/items/{item.id}/retry", data=form, headers=origin
        ) as resp:
            assert resp.status == 409 and "cannot move" in (await resp.json())["error"]
        async with http.post(
            console + f"/console/api/items/{item.id}/forget", data=form, headers=origin
        ) as resp:
            assert resp.status == 400  # not confirmed: nothing done
        assert item.plaid_item_id in sandbox.state.plaid.live_exchanged_items()
        async with http.post(
            console + f"/console/api/items/{item.id}/forget", data={**form, "confirm": "yes"}, headers=origin
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["forgotten"] is True
    gone = await services.store.get(item.id)
    assert gone is not None and gone.access_token is None and gone.plaid_removed_at is not None
    assert item.plaid_item_id not in sandbox.state.plaid.live_exchanged_items()
    assert gone.atomic_removed_at is not None


async def test_paw_console_serves_and_refuses_to_listen_beyond_loopback_without_sign_in(
    services: Services, settings: Settings
) -> None:
    code, _, err = await run_paw(settings, "console", "--host", "0.0.0.0", timeout=30)  # noqa: S104 - refused
    assert code == 2 and "loopback" in err.decode() and len(err.decode().strip().splitlines()) == 1
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.cli",
        "console",
        "--port",
        str(port),
        env=paw_env(settings),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:

        async def serves() -> bool:
            try:
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(f"http://127.0.0.1:{port}/console/") as r,
                ):
                    return r.status == 200 and "Overview" in await r.text()
            except aiohttp.ClientError:
                return False

        assert await eventually(serves, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
