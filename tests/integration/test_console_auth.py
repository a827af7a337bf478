"""The console's security layer over real sockets: a small aiohttp app (a page, a JSON page, an
operator's POST and an admin's POST) behind :mod:`worker.console.auth`, served by paw's own HTTP
builder and driven by an aiohttp client with a cookie jar, as a browser would. The clock is injected,
so idle and absolute expiry are tested without sleeping. Neither Postgres nor RabbitMQ is needed."""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
import re
from collections.abc import AsyncIterator, Iterator
from http.cookies import SimpleCookie
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs
from yarl import URL

from worker.console import auth
from worker.console.auth import AuthMode, ConsoleAuth, ConsoleSecurity, Role
from worker.http_server import start_http

SECRET = bytes(range(32))
NOW = 1_800_000_000.0
PASSWORDS = {"alice": "admin-password-1", "olive": "operator-password-1", "vic": "viewer-password-1"}
ROLES = {"alice": Role.ADMIN, "olive": Role.OPERATOR, "vic": Role.VIEWER}
MINUTE = 60


@pytest.fixture(scope="module")
def users() -> dict[str, auth.User]:
    return {n: auth.User(n, ROLES[n], auth.hash_password(p)) for n, p in PASSWORDS.items()}


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


# -- The app under test ------------------------------------------------------------------------


async def page(request: web.Request) -> web.StreamResponse:
    who = auth.person(request)
    return web.Response(
        text=f"<p>{who.actor} {who.role.value}</p><input name=csrf_token value={auth.csrf_token(request)}>",
        content_type="text/html",
    )


async def things(request: web.Request) -> web.StreamResponse:
    who = auth.person(request)
    return web.json_response({"actor": who.actor, "role": who.role.value})


async def retry(request: web.Request) -> web.StreamResponse:
    who = auth.require(request, "retry")
    form = await request.post()
    return web.Response(text=f"retried {request.match_info['id']} by {who.actor} ({form.get('reason')})")


async def purge(request: web.Request) -> web.StreamResponse:
    who = auth.require(request, "purge")
    return web.json_response({"purged": 3, "actor": who.actor})


async def boom(_: web.Request) -> web.StreamResponse:
    raise RuntimeError("kaput")


def make_app(security: ConsoleSecurity) -> web.Application:
    app = web.Application(middlewares=security.middlewares)
    app.router.add_get("/console/", page)
    app.router.add_get("/console/api/things", things)
    app.router.add_post("/console/items/{id}/retry", retry)
    app.router.add_post("/console/api/purge", purge)
    app.router.add_get("/console/boom", boom)
    security.add_login_routes(app)
    return app


@dataclasses.dataclass
class Console:
    url: str
    clock: Clock
    http: aiohttp.ClientSession
    config: ConsoleAuth

    def at(self, path: str) -> str:
        return f"{self.url}{path}"

    async def get(self, path: str, **kw: Any) -> Answer:
        async with self.http.get(self.at(path), allow_redirects=False, **kw) as r:
            return await Answer.of(r)

    async def post(self, path: str, **kw: Any) -> Answer:
        kw.setdefault("headers", {"Origin": self.url})
        async with self.http.post(self.at(path), allow_redirects=False, **kw) as r:
            return await Answer.of(r)

    async def token(self) -> str:
        """The CSRF token the signed-in page carries."""
        found = await self.get("/console/")
        assert found.status == 200, found
        match = re.search(r"name=csrf_token value=(\w+)", found.text)
        assert match is not None
        return match.group(1)

    async def sign_in(self, user: str, password: str | None = None) -> Answer:
        form = await self.get("/console/login")
        assert form.status == 200, form
        return await self.post(
            "/console/login",
            data={
                "user": user,
                "password": PASSWORDS[user] if password is None else password,
                "csrf_token": form.form_token,
            },
        )

    def cookie(self, name: str = auth.SESSION_COOKIE) -> str | None:
        found = self.http.cookie_jar.filter_cookies(URL(self.at("/console/login")))
        return found[name].value if name in found else None


@dataclasses.dataclass
class Answer:
    status: int
    headers: Any
    text: str

    @classmethod
    async def of(cls, r: aiohttp.ClientResponse) -> Answer:
        return cls(r.status, r.headers, await r.text())

    @property
    def form_token(self) -> str:
        match = re.search(r'name="csrf_token" value="([^"]+)"', self.text)
        assert match is not None, self.text
        return match.group(1)

    def set_cookie(self, name: str) -> str | None:
        """The raw Set-Cookie line for ``name``."""
        return next((h for h in self.headers.getall("Set-Cookie", []) if h.startswith(f"{name}=")), None)

    def json(self) -> Any:
        return json.loads(self.text)


def assert_secured(answer: Answer) -> None:
    for name, value in auth.SECURITY_HEADERS.items():
        assert answer.headers.get(name) == value, (answer.status, name, answer.headers)
    assert answer.headers["Content-Security-Policy"] == "default-src 'self'; frame-ancestors 'none'"


async def serve(config: ConsoleAuth, clock: Clock) -> AsyncIterator[Console]:
    security = ConsoleSecurity(config, clock=clock)
    runner, url = await start_http(make_app(security), "127.0.0.1", 0, shutdown_timeout=1)
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            yield Console(url, clock, http, config)
    finally:
        await runner.cleanup()


@pytest.fixture
async def local(users: dict[str, auth.User]) -> AsyncIterator[Console]:
    async for c in serve(ConsoleAuth(mode=AuthMode.LOCAL, session_secret=SECRET, users=users), Clock()):
        yield c


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    with capture_logs() as captured:
        yield captured


# -- Sign-in -----------------------------------------------------------------------------------


async def test_a_stranger_is_sent_to_sign_in_and_the_api_answers_401(local: Console) -> None:
    html = await local.get("/console/")
    assert (html.status, html.headers["Location"]) == (303, "/console/login")
    api = await local.get("/console/api/things")
    assert (api.status, api.json()) == (401, {"error": "sign in first"})
    htmx = await local.get("/console/", headers={"HX-Request": "true"})
    assert (htmx.status, htmx.headers["HX-Redirect"]) == (401, "/console/login")
    for answer in (html, api, htmx):
        assert_secured(answer)


async def test_signing_in_sets_a_strict_http_only_cookie_and_names_the_person(local: Console) -> None:
    signed = await local.sign_in("olive")
    assert (signed.status, signed.headers["Location"]) == (303, "/console/")
    cookie = signed.set_cookie(auth.SESSION_COOKIE) or ""
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age=1800"):
        assert attribute in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback
    assert local.cookie(auth.LOGIN_COOKIE) is None  # the form's cookie is spent
    home = await local.get("/console/")
    assert home.status == 200 and "local:olive operator" in home.text
    assert (await local.get("/console/api/things")).json() == {"actor": "local:olive", "role": "operator"}
    assert (await local.get("/console/login")).headers["Location"] == "/console/"  # already signed in
    assert_secured(signed)


async def test_under_tls_the_cookies_are_secure(users: dict[str, auth.User]) -> None:
    config = ConsoleAuth(mode=AuthMode.LOCAL, session_secret=SECRET, users=users, tls=True)
    async for c in serve(config, Clock()):
        form = await c.get("/console/login")
        login_cookie = form.set_cookie(auth.LOGIN_COOKIE) or ""
        assert "Secure" in login_cookie and "Path=/console/login" in login_cookie
        jar = SimpleCookie()
        jar.load(login_cookie)
        signed = await c.post(
            "/console/login",
            data={"user": "vic", "password": PASSWORDS["vic"], "csrf_token": form.form_token},
            headers={"Origin": c.url, "Cookie": f"{auth.LOGIN_COOKIE}={jar[auth.LOGIN_COOKIE].value}"},
        )
        assert signed.status == 303
        assert "Secure" in (signed.set_cookie(auth.SESSION_COOKIE) or "")


async def test_a_wrong_password_and_an_unknown_user_get_the_same_401(local: Console) -> None:
    wrong = await local.sign_in("olive", password="guess")
    unknown = await local.post(
        "/console/login",
        data={
            "user": "mallory",
            "password": "guess",
            "csrf_token": (await local.get("/console/login")).form_token,
        },
    )
    assert wrong.status == unknown.status == 401
    assert "Wrong user or password." in wrong.text
    assert wrong.text.replace(wrong.form_token, "T") == unknown.text.replace(unknown.form_token, "T")
    assert local.cookie() is None
    assert (await local.get("/console/")).status == 303
    assert_secured(wrong)


async def test_five_failures_a_minute_then_429_even_with_the_right_password(local: Console) -> None:
    for _ in range(5):
        assert (await local.sign_in("olive", password="guess")).status == 401
    throttled = await local.sign_in("olive")
    assert throttled.status == 429 and "Too many failed sign-ins" in throttled.text
    assert int(throttled.headers["Retry-After"]) == 60
    assert_secured(throttled)
    assert (await local.sign_in("vic")).status == 303  # another user from this address is not blocked
    local.http.cookie_jar.clear()
    local.clock.now += MINUTE
    assert (await local.sign_in("olive")).status == 303


async def test_a_sign_in_without_its_forms_token_is_refused(local: Console) -> None:
    no_form = await local.post("/console/login", data={"user": "olive", "password": PASSWORDS["olive"]})
    assert no_form.status == 403 and local.cookie() is None
    form = await local.get("/console/login")
    forged = await local.post(
        "/console/login", data={"user": "olive", "password": PASSWORDS["olive"], "csrf_token": "0" * 64}
    )
    assert forged.status == 403 and local.cookie() is None
    cross_site = await local.post(
        "/console/login",
        data={"user": "olive", "password": PASSWORDS["olive"], "csrf_token": form.form_token},
        headers={"Origin": "http://evil.example"},
    )
    assert cross_site.status == 403 and local.cookie() is None
    local.clock.now += auth.LOGIN_FORM_S + 1  # a form left open too long
    stale = await local.post(
        "/console/login",
        data={"user": "olive", "password": PASSWORDS["olive"], "csrf_token": form.form_token},
    )
    assert stale.status == 403 and "expired" in stale.text and local.cookie() is None
    for answer in (no_form, forged, cross_site, stale):
        assert_secured(answer)


# -- Sessions ----------------------------------------------------------------------------------


async def test_a_tampered_session_cookie_is_refused(local: Console) -> None:
    await local.sign_in("vic")
    value = local.cookie()
    assert value is not None
    body, signature = value.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload.update(u="alice", r="admin")
    forged_body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    for forged in (f"{forged_body}.{signature}", f"{body}.{signature[:-2]}AA", "garbage"):
        local.http.cookie_jar.clear()
        local.http.cookie_jar.update_cookies({auth.SESSION_COOKIE: forged}, URL(local.at("/console/")))
        refused = await local.get("/console/")
        assert (refused.status, refused.headers["Location"]) == (303, "/console/login")
        assert "Max-Age=0" in (refused.set_cookie(auth.SESSION_COOKIE) or "")  # and the cookie is cleared
        assert (await local.get("/console/api/things")).status == 401


async def test_an_idle_session_ends_and_each_request_keeps_it_alive(local: Console) -> None:
    await local.sign_in("olive")
    local.clock.now += 29 * MINUTE
    assert (await local.get("/console/")).status == 200  # and the cookie is issued again
    local.clock.now += 29 * MINUTE
    assert (await local.get("/console/api/things")).status == 200
    local.clock.now += 30 * MINUTE + 1
    gone = await local.get("/console/")
    assert (gone.status, gone.headers["Location"]) == (303, "/console/login")


async def test_a_session_ends_after_twelve_hours_however_busy(local: Console) -> None:
    await local.sign_in("olive")
    while local.clock.now + 25 * MINUTE <= NOW + 12 * 3600:
        local.clock.now += 25 * MINUTE
        assert (await local.get("/console/api/things")).status == 200
    local.clock.now = NOW + 12 * 3600 + 1
    assert (await local.get("/console/")).status == 303


async def test_signing_out_clears_the_session_and_needs_the_token(local: Console) -> None:
    await local.sign_in("olive")
    assert (await local.post("/console/logout")).status == 403  # no token: a forged sign-out
    assert local.cookie() is not None
    out = await local.post("/console/logout", data={"csrf_token": await local.token()})
    assert (out.status, out.headers["Location"]) == (303, "/console/login")
    assert local.cookie() is None
    assert (await local.get("/console/")).status == 303


# -- CSRF, Origin and roles --------------------------------------------------------------------


async def test_a_post_without_the_csrf_token_is_refused(local: Console) -> None:
    await local.sign_in("alice")
    missing = await local.post("/console/items/7/retry", data={"reason": "x"})
    assert missing.status == 403 and "CSRF" in missing.text
    wrong = await local.post("/console/items/7/retry", data={"reason": "x", "csrf_token": "f" * 64})
    assert wrong.status == 403
    api = await local.post("/console/api/purge", json={"all": True}, headers={"Origin": local.url})
    assert api.status == 403 and "CSRF" in api.json()["error"]
    for answer in (missing, wrong, api):
        assert_secured(answer)


async def test_a_post_with_the_token_but_a_foreign_origin_is_refused(local: Console) -> None:
    await local.sign_in("olive")
    token = await local.token()
    form = {"reason": "bank back", "csrf_token": token}
    foreign = await local.post("/console/items/7/retry", data=form, headers={"Origin": "http://evil.example"})
    assert foreign.status == 403 and "Origin" in foreign.text
    other_port = await local.post(
        "/console/items/7/retry", data=form, headers={"Origin": "http://127.0.0.1:1"}
    )
    assert other_port.status == 403
    referer = await local.post(
        "/console/items/7/retry", data=form, headers={"Referer": "http://evil.example/x"}
    )
    assert referer.status == 403 and "Referer" in referer.text
    neither = await local.post("/console/items/7/retry", data=form, headers={})
    assert neither.status == 403 and "no Origin or Referer" in neither.text
    api = await local.post(
        "/console/api/purge", headers={"Origin": "http://evil.example", "X-CSRF-Token": token}
    )
    assert api.status == 403 and "Origin" in api.json()["error"]
    for answer in (foreign, other_port, referer, neither, api):
        assert_secured(answer)

    done = await local.post("/console/items/7/retry", data=form)
    assert (done.status, done.text) == (200, "retried 7 by local:olive (bank back)")
    by_referer = await local.post(
        "/console/items/8/retry", data=form, headers={"Referer": local.at("/console/items/8")}
    )
    assert by_referer.status == 200
    by_header = await local.post(
        "/console/items/9/retry", data={"reason": "h"}, headers={"Origin": local.url, "X-CSRF-Token": token}
    )
    assert (by_header.status, by_header.text) == (200, "retried 9 by local:olive (h)")


async def test_each_role_may_do_only_its_own_actions(local: Console) -> None:
    await local.sign_in("vic")
    viewer = await local.post("/console/items/7/retry", data={"csrf_token": await local.token()})
    assert viewer.status == 403 and "retry needs the operator role" in viewer.text
    assert_secured(viewer)

    local.http.cookie_jar.clear()
    await local.sign_in("olive")
    token = await local.token()
    assert (await local.post("/console/items/7/retry", data={"csrf_token": token})).status == 200
    operator = await local.post("/console/api/purge", headers={"Origin": local.url, "X-CSRF-Token": token})
    assert operator.status == 403 and "purge needs the admin role" in operator.json()["error"]

    local.http.cookie_jar.clear()
    await local.sign_in("alice")
    admin = await local.post(
        "/console/api/purge", headers={"Origin": local.url, "X-CSRF-Token": await local.token()}
    )
    assert (admin.status, admin.json()) == (200, {"purged": 3, "actor": "local:alice"})


async def test_a_token_from_another_session_does_not_count(
    local: Console, users: dict[str, auth.User]
) -> None:
    await local.sign_in("olive")
    first = await local.token()
    local.http.cookie_jar.clear()
    await local.sign_in("olive")  # a new session, a new token
    assert (await local.post("/console/items/7/retry", data={"csrf_token": first})).status == 403
    assert (
        await local.post("/console/items/7/retry", data={"csrf_token": await local.token()})
    ).status == 200


# -- Security headers on every response --------------------------------------------------------


async def test_every_response_carries_the_security_headers(
    local: Console, logs: list[dict[str, Any]]
) -> None:
    answers = [
        await local.get("/console/login"),
        await local.get("/console/nowhere"),
        await local.get("/console/"),
        await local.post("/console/login", data={}),
    ]
    await local.sign_in("alice")
    answers += [
        await local.get("/console/"),
        await local.get("/console/nowhere"),  # 404 under a session
        await local.get("/console/boom"),  # 500
        await local.post("/console/", data={"csrf_token": await local.token()}),  # 405
    ]
    async with local.http.head(local.at("/console/")) as r:
        answers.append(await Answer.of(r))
    assert [a.status for a in answers] == [200, 303, 303, 403, 200, 404, 500, 405, 200]
    for answer in answers:
        assert_secured(answer)
    assert answers[6].text == "internal error" and "kaput" not in answers[6].text
    assert any(e["event"] == "console.error" for e in logs)


# -- Proxy and no sign-in ----------------------------------------------------------------------


def proxied(*networks: str) -> ConsoleAuth:
    return ConsoleAuth(
        mode=AuthMode.PROXY,
        session_secret=SECRET,
        trusted_proxies=tuple(ipaddress.ip_network(n) for n in networks),
        proxy_role_header="X-Forwarded-Groups",
    )


async def test_a_trusted_proxys_header_identifies_the_person() -> None:
    async for c in serve(proxied("127.0.0.0/8", "::1"), Clock()):
        sso = {"X-Forwarded-User": "olive@example.com", "X-Forwarded-Groups": "staff,operator"}
        seen = await c.get("/console/api/things", headers=sso)
        assert (seen.status, seen.json()) == (200, {"actor": "proxy:olive@example.com", "role": "operator"})
        page = await c.get("/console/", headers=sso)
        assert page.status == 200 and "proxy:olive@example.com operator" in page.text
        token = re.search(r"csrf_token value=(\w+)", page.text)
        assert token is not None
        done = await c.post(
            "/console/items/3/retry", data={"csrf_token": token.group(1)}, headers={**sso, "Origin": c.url}
        )
        assert (done.status, done.text) == (200, "retried 3 by proxy:olive@example.com (None)")
        no_token = await c.post("/console/items/3/retry", headers={**sso, "Origin": c.url})
        assert no_token.status == 403
        viewer = await c.get("/console/api/things", headers={"X-Forwarded-User": "vic@example.com"})
        assert viewer.json()["role"] == "viewer"  # no role header: viewer
        nobody = await c.get("/console/api/things")
        assert nobody.status == 401 and "X-Forwarded-User" in nobody.json()["error"]
        assert (await c.get("/console/login")).headers["Location"] == "/console/"


async def test_a_proxy_header_from_an_untrusted_address_is_refused_and_logged(
    logs: list[dict[str, Any]],
) -> None:
    async for c in serve(proxied("10.0.0.0/8"), Clock()):
        spoofed = await c.get("/console/", headers={"X-Forwarded-User": "alice@example.com"})
        assert spoofed.status == 403 and "not a trusted proxy" in spoofed.text
        assert_secured(spoofed)
        role_only = await c.get("/console/api/things", headers={"X-Forwarded-Groups": "admin"})
        assert role_only.status == 403 and "not a trusted proxy" in role_only.json()["error"]
        bare = await c.get("/console/")
        assert bare.status == 401
    untrusted = [e for e in logs if e["event"] == "console.proxy_header_untrusted"]
    assert len(untrusted) == 2 and untrusted[0]["remote"] == "127.0.0.1"


async def test_without_sign_in_everyone_is_the_local_admin_and_posts_still_need_a_token() -> None:
    config = dataclasses.replace(ConsoleAuth.from_env({"USER": "dora"}), session_secret=SECRET)
    async for c in serve(config, Clock()):
        assert (await c.get("/console/api/things")).json() == {"actor": "local:dora", "role": "admin"}
        fresh = await c.post("/console/api/purge", headers={"Origin": c.url})
        assert fresh.status == 403
        token = await c.token()
        done = await c.post("/console/api/purge", headers={"Origin": c.url, "X-CSRF-Token": token})
        assert (done.status, done.json()) == (200, {"purged": 3, "actor": "local:dora"})
        foreign = await c.post(
            "/console/api/purge", headers={"Origin": "http://evil.example", "X-CSRF-Token": token}
        )
        assert foreign.status == 403


# -- Nothing secret in the logs ----------------------------------------------------------------


async def test_no_password_hash_secret_or_cookie_reaches_the_logs(
    local: Console, users: dict[str, auth.User], logs: list[dict[str, Any]]
) -> None:
    await local.sign_in("olive", password="nearly-" + PASSWORDS["olive"])
    await local.post(
        "/console/login",
        data={
            "user": PASSWORDS["vic"],
            "password": "x",
            "csrf_token": (await local.get("/console/login")).form_token,
        },
    )  # a password typed in the user box
    await local.sign_in("olive")
    cookie = local.cookie()
    await local.post("/console/items/1/retry", data={"csrf_token": "f" * 64})
    local.http.cookie_jar.update_cookies(
        {auth.SESSION_COOKIE: "x" + (cookie or "")}, URL(local.at("/console/"))
    )
    await local.get("/console/")
    text = repr(logs)
    assert {"console.login_failed", "console.login", "console.refused", "console.session_rejected"} <= {
        e["event"] for e in logs
    }
    secrets_ = [
        *PASSWORDS.values(),
        SECRET.hex(),
        repr(SECRET),
        cookie or "-",
        *(u.password_hash for u in users.values()),
    ]
    for secret in secrets_:
        assert secret not in text
