"""The on-call console in a real browser (Playwright driving Debian's chromium; `./run test` installs
both when missing): the incident of README "On call" walked through by an operator, and a viewer who
can only look. Screenshots of every page at 1280x800 go to test-artifacts/console/ (and a trace on
failure)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from sandbox.app import SandboxConfig
from tests.helpers import (
    ROOT,
    RunningWorker,
    Sandbox,
    eventually,
    free_port,
    new_public_token,
    settled,
    submit_amqp,
)
from worker.bus import dead_index
from worker.console import auth
from worker.console.app import create_app
from worker.items.model import token_hash
from worker.items.states import State
from worker.runner import run_worker
from worker.services import Services
from worker.settings import Settings

ARTIFACTS = ROOT / "test-artifacts" / "console"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# A token as Plaid issues them, unredacted (a redacted one reads public-sandbox-[redacted]).
TOKEN_SHAPED = re.compile(
    r"\b(access|public|processor|link)-(sandbox|development|production)-(?!\[redacted\])[A-Za-z0-9-]{8,}"
)
PASSWORDS = {"olive": "operator-password-1", "vic": "viewer-password-1"}


@pytest.fixture
def sandbox_config(sandbox_config_for_receiver: SandboxConfig) -> SandboxConfig:
    return sandbox_config_for_receiver  # Atomic's webhooks reach the receiver


@pytest.fixture
async def impatient_worker(services: Services) -> AsyncIterator[RunningWorker]:
    """No retry budget: the first INSTITUTION_DOWN is a dead letter (keeps the incident short)."""
    svc = dataclasses.replace(services, settings=dataclasses.replace(services.settings, retry_budget=0))
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_worker(svc, stop, ready=ready, drain_timeout=10))
    await asyncio.wait_for(ready.wait(), 10)
    running = RunningWorker(stop, task)
    yield running
    if not task.done():
        await running.shutdown()


@pytest.fixture
async def console(services: Services, settings: Settings, tmp_path: Path) -> AsyncIterator[str]:
    """The console on loopback with local users (an operator and a viewer), as `paw console` runs it."""
    users = tmp_path / "users"
    users.write_text(
        f"olive operator {auth.hash_password(PASSWORDS['olive'])}\n"
        f"vic viewer {auth.hash_password(PASSWORDS['vic'])}\n"
    )
    security = auth.ConsoleAuth.from_env(
        {
            "PAW_CONSOLE_AUTH": "local",
            "PAW_CONSOLE_USERS_FILE": str(users),
            "PAW_CONSOLE_SESSION_SECRET": uuid.uuid4().hex + uuid.uuid4().hex,
        }
    )
    runner = web.AppRunner(create_app(settings, services, security))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


class Visits:
    """Every page a person saw: its HTML is scanned for tokens, and screenshotted."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pages: dict[str, str] = {}
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    async def look(self, page: Page, shot: str) -> None:
        self.pages[page.url] = await page.content()
        await page.screenshot(path=str(ARTIFACTS / f"{self.name}-{shot}.png"), full_page=False)

    def tokens(self) -> list[str]:
        return [m.group(0) for html in self.pages.values() for m in TOKEN_SHAPED.finditer(html)]


async def sign_in(context: BrowserContext, base: str, user: str) -> Page:
    page = await context.new_page()
    await page.goto(f"{base}/console/")
    await expect(page).to_have_url(re.compile(r"/console/login"))
    await page.fill("input[name=user]", user)
    await page.fill("input[name=password]", PASSWORDS[user])
    await page.click("button[type=submit]")
    await expect(page.get_by_test_id("person")).to_contain_text(user)
    return page


@pytest.mark.timeout(180)
async def test_an_operator_replays_an_incident_and_a_viewer_only_looks(
    services: Services,
    impatient_worker: RunningWorker,
    receiver: str,
    sandbox: Sandbox,
    console: str,
    browser: Browser,
) -> None:
    sandbox.state.set_fault(
        "/accounts/get", status=400, error_code="INSTITUTION_DOWN", error_type="ITEM_ERROR"
    )
    tokens = [await new_public_token(sandbox) for _ in range(5)]
    for i, token in enumerate(tokens):
        await submit_amqp(services, {"public_token": token, "client_user_id": f"u-console-{i}"})

    async def five_indexed() -> bool:
        return (await dead_index.counts(services.pool)).get("dead", 0) == 5

    await eventually(five_indexed, timeout=30)

    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    await context.tracing.start(screenshots=True, snapshots=True)
    seen = Visits("operator")
    ok = False
    try:
        page = await sign_in(context, console, "olive")
        await seen.look(page, "overview")
        await page.click("text=Dead letters")
        group = page.locator("tr[data-reason=INSTITUTION_DOWN]")
        await expect(group.get_by_test_id("group-count")).to_have_text("5")
        await seen.look(page, "dead-letters")
        await page.click("tr[data-reason=INSTITUTION_DOWN] >> a >> nth=0")  # the reason's filter
        await page.get_by_test_id("plan-filter").click()
        await expect(page.get_by_test_id("plan")).to_contain_text("would publish 5")
        await expect(page.get_by_test_id("cli")).to_contain_text("paw dlq replay --code INSTITUTION_DOWN")
        await seen.look(page, "plan")

        sandbox.state.clear_faults()  # the bank is back
        await page.get_by_test_id("rate").fill("5")
        await page.get_by_test_id("confirm").click()
        await expect(page).to_have_url(re.compile(r"/console/jobs/\d+"))
        await expect(page.get_by_test_id("job-progress")).to_have_text("5/5", timeout=30_000)
        await expect(page.get_by_test_id("job-status")).to_have_text("done")
        await seen.look(page, "job")

        for token in tokens:
            await settled(services, token, State.ATOMIC_VERIFIED)
        item = await services.store.get_by_token_hash(token_hash(tokens[0]))
        assert item is not None
        await page.goto(f"{console}/console/items?q={item.client_user_id}")
        await seen.look(page, "items")
        await page.click(f"a[href='/console/items/{item.id}']")
        last = page.get_by_test_id("timeline").locator("tr.kind-transition").last
        await expect(last).to_contain_text("atomic_verified")
        await expect(page.get_by_test_id("timeline")).to_contain_text("replayed")
        await seen.look(page, "item")
        await page.click("text=Actions")
        await expect(page.locator("main")).to_contain_text("olive")
        await seen.look(page, "actions")
        await page.goto(f"{console}/console/dead-letters")
        await seen.look(page, "dead-letters-after")

        # a POST without the CSRF token is refused, even from a signed-in operator
        refused = await context.request.post(
            f"{console}/console/dead-letters/replay",
            form={"code": "INSTITUTION_DOWN", "rate": "5"},
            headers={"Origin": console},
        )
        assert refused.status == 403
        ok = True
    finally:
        await context.tracing.stop(path=None if ok else str(ARTIFACTS / "operator-trace.zip"))
        await context.close()

    viewer = await browser.new_context(viewport={"width": 1280, "height": 800})
    look = Visits("viewer")
    try:
        page = await sign_in(viewer, console, "vic")
        await page.goto(f"{console}/console/dead-letters")
        await look.look(page, "dead-letters")
        await page.goto(f"{console}/console/items/{item.id}")
        await look.look(page, "item")
        assert await page.locator("button[type=submit]:not([form]):has-text('Retry')").count() == 0
        assert await page.locator("[data-testid^=plan], [data-testid=retry]").count() == 0
        # a forged POST (the viewer's own, valid CSRF token and Origin) is refused by role
        token = await page.locator("meta[name=csrf-token]").get_attribute("content")
        assert token
        forged = await viewer.request.post(
            f"{console}/console/dead-letters/replay",
            form={"csrf_token": token, "all": "yes", "rate": "5"},
            headers={"Origin": console},
        )
        assert forged.status == 403
    finally:
        await viewer.close()
    assert seen.tokens() == [] and look.tokens() == []  # no page showed a token
