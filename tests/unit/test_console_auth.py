"""The console's security decisions, pure (no server): roles, scrypt hashes and the users file, signed
sessions and their lifetimes, CSRF tokens, origins, proxy trust, where the console may listen, the
sign-in throttle and the settings read from the environment."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from worker.console import auth
from worker.console.auth import (
    AuthMode,
    BadSession,
    ConsoleAuth,
    LoginThrottle,
    Person,
    Refusal,
    Role,
    Session,
)

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
NOW = 1_800_000_000
IDLE, MAX_AGE = 1800, 43200


def config(**overrides: object) -> ConsoleAuth:
    return ConsoleAuth(**{"mode": AuthMode.NONE, "session_secret": SECRET, **overrides})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def stored() -> str:
    return auth.hash_password("correct horse")


# -- Roles -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "may"),
    [
        (Role.VIEWER, {"view"}),
        (Role.OPERATOR, {"view", "replay", "retry"}),
        (Role.ADMIN, {"view", "replay", "retry", "purge", "forget"}),
    ],
)
def test_each_role_may_do_exactly_its_actions(role: Role, may: set[str]) -> None:
    assert {a for a in auth.ACTIONS if auth.allowed(role, a)} == may


def test_an_unknown_action_is_an_error_not_a_quiet_no() -> None:
    with pytest.raises(ValueError, match="unknown console action 'delete'"):
        auth.allowed(Role.ADMIN, "delete")


def test_roles_parse_in_any_case_and_refuse_others() -> None:
    assert Role.parse(" Operator ") is Role.OPERATOR
    with pytest.raises(ValueError, match="unknown role 'root'"):
        Role.parse("root")


# -- Passwords ---------------------------------------------------------------------------------


def test_a_hash_is_scrypt_with_the_stated_parameters(stored: str) -> None:
    kind, n, r, p, salt, key = stored.split("$")
    assert (kind, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(key)) == 32


def test_only_the_right_password_verifies(stored: str) -> None:
    assert auth.verify_password("correct horse", stored)
    assert not auth.verify_password("correct horsE", stored)
    assert not auth.verify_password("", stored)


def test_the_same_password_hashes_differently_each_time() -> None:
    assert auth.hash_password("same") != auth.hash_password("same")


def test_verification_uses_the_parameters_the_hash_was_made_with() -> None:
    salt = b"0123456789abcdef"
    key = hashlib.scrypt(b"pw", salt=salt, n=2**10, r=4, p=2, dklen=32)
    stored = f"scrypt$1024$4$2${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"
    assert auth.verify_password("pw", stored)
    assert not auth.verify_password("pw2", stored)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "plaintext",
        "scrypt$",
        "bcrypt$16384$8$1$MDEyMzQ1Njc4OWFiY2RlZg==$MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        "scrypt$1000$8$1$MDEyMzQ1Njc4OWFiY2RlZg==$MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",  # n not 2**k
        "scrypt$1073741824$8$1$MDEyMzQ1Njc4OWFiY2RlZg==$MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",  # 1 TiB
        "scrypt$16384$8$1$!!$!!",
    ],
)
def test_a_malformed_hash_matches_nothing(bad: str) -> None:
    assert not auth.verify_password("plaintext", bad)


# -- The users file ----------------------------------------------------------------------------


def test_the_users_file_reads_names_roles_and_hashes_around_comments(stored: str) -> None:
    text = f"# on call\n\nalice admin {stored}\nbob operator {stored}  # nights\n  carol VIEWER {stored}\n"
    users = auth.parse_users(text)
    assert {u.name: u.role for u in users.values()} == {
        "alice": Role.ADMIN,
        "bob": Role.OPERATOR,
        "carol": Role.VIEWER,
    }
    assert auth.verify_password("correct horse", users["bob"].password_hash)
    assert stored not in repr(users)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("alice admin", "users line 3: expected 'name role scrypt$…', found 2 fields"),
        ("al ice admin HASH", "users line 3: expected 'name role scrypt$…', found 4 fields"),
        ("alice root HASH", "users line 3: unknown role 'root'"),
        ("-alice admin HASH", "users line 3: '-alice' is not a user name"),
        ("alice admin scrypt$x", "users line 3: the password hash is not scrypt$"),
        ("alice admin hunter2-in-the-wrong-place", "users line 3: the password hash is not scrypt$"),
    ],
)
def test_each_users_file_error_names_its_line_and_never_quotes_a_hash(
    stored: str, line: str, message: str
) -> None:
    text = f"# header\n\n{line.replace('HASH', stored)}\n"
    with pytest.raises(ValueError) as raised:
        auth.parse_users(text, source="users")
    assert message in str(raised.value)
    assert stored not in str(raised.value) and "hunter2" not in str(raised.value)


def test_a_user_defined_twice_is_an_error(stored: str) -> None:
    with pytest.raises(ValueError, match="users file line 2: user 'alice' is already defined"):
        auth.parse_users(f"alice admin {stored}\nalice viewer {stored}\n")


def test_a_users_file_line_is_read_back_as_written() -> None:
    line = auth.users_file_line("olive", Role.OPERATOR, "operator-pw")
    assert line.startswith("olive operator scrypt$16384$8$1$") and "operator-pw" not in line
    olive = auth.parse_users(line)["olive"]
    assert olive.role is Role.OPERATOR and auth.verify_password("operator-pw", olive.password_hash)


def test_a_users_file_line_refuses_a_bad_name_or_an_empty_password() -> None:
    with pytest.raises(ValueError, match="is not a user name"):
        auth.users_file_line("o live", Role.VIEWER, "pw")
    with pytest.raises(ValueError, match="the password is empty"):
        auth.users_file_line("olive", Role.VIEWER, "")


# -- Sessions ----------------------------------------------------------------------------------


def session(**overrides: object) -> Session:
    fields: dict[str, object] = {
        "user": "vic",
        "role": Role.VIEWER,
        "sid": "sid-1",
        "issued_at": NOW,
        "last_seen": NOW,
        **overrides,
    }
    return Session(**fields)  # type: ignore[arg-type]


def opened(value: str, now: float = NOW, secret: bytes = SECRET) -> Session:
    return auth.open_session(value, secret, now=now, idle_s=IDLE, max_age_s=MAX_AGE)


def test_a_sealed_session_opens_unchanged() -> None:
    assert opened(auth.seal_session(session(), SECRET)) == session()


def test_a_session_whose_payload_was_changed_is_refused() -> None:
    body, signature = auth.seal_session(session(), SECRET).split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["r"], payload["u"] = "admin", "alice"
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    with pytest.raises(BadSession, match="bad signature"):
        opened(f"{forged}.{signature}")


def test_a_session_signed_with_another_secret_or_for_another_purpose_is_refused() -> None:
    with pytest.raises(BadSession, match="bad signature"):
        opened(auth.seal_session(session(), OTHER_SECRET))
    with pytest.raises(BadSession):
        opened(auth.seal_login_nonce("sid-1", SECRET, NOW))


@pytest.mark.parametrize("value", ["", "abc", "a.b.c", "é.é", "x" * 5000 + ".y", "e30.!!!"])
def test_a_malformed_session_is_refused(value: str) -> None:
    with pytest.raises(BadSession):
        opened(value)


def test_an_idle_session_expires_and_activity_keeps_it() -> None:
    value = auth.seal_session(session(), SECRET)
    assert opened(value, now=NOW + IDLE).user == "vic"
    with pytest.raises(BadSession, match="idle"):
        opened(value, now=NOW + IDLE + 1)
    later = auth.touched(session(), NOW + IDLE - 100)
    assert opened(auth.seal_session(later, SECRET), now=NOW + 2 * IDLE - 100).user == "vic"


def test_a_session_ends_at_its_absolute_lifetime_however_active() -> None:
    busy = auth.touched(session(), NOW + MAX_AGE - 5)
    assert opened(auth.seal_session(busy, SECRET), now=NOW + MAX_AGE).user == "vic"
    with pytest.raises(BadSession, match="expired"):
        opened(auth.seal_session(busy, SECRET), now=NOW + MAX_AGE + 1)


def test_a_session_from_the_future_is_refused() -> None:
    future = session(issued_at=NOW + 3600, last_seen=NOW + 3600)
    with pytest.raises(BadSession, match="malformed"):
        opened(auth.seal_session(future, SECRET))


def test_new_sessions_never_share_an_id() -> None:
    ids = {auth.new_session("vic", Role.VIEWER, NOW).sid for _ in range(100)}
    assert len(ids) == 100


def test_a_session_repr_shows_no_id() -> None:
    assert "sid-1" not in repr(session())


# -- CSRF --------------------------------------------------------------------------------------


def test_the_csrf_token_belongs_to_one_session_and_one_secret() -> None:
    token = auth.csrf_for(SECRET, "sid-1")
    assert token == auth.csrf_for(SECRET, "sid-1")
    assert token != auth.csrf_for(SECRET, "sid-2")
    assert token != auth.csrf_for(OTHER_SECRET, "sid-1")
    assert token != auth.login_token(SECRET, "sid-1")


def test_token_matches_only_the_same_token() -> None:
    assert auth.token_matches("abc", "abc")
    assert not auth.token_matches(None, "abc")
    assert not auth.token_matches("", "abc")
    assert not auth.token_matches("abd", "abc")


def test_the_sign_in_forms_nonce_lasts_ten_minutes() -> None:
    value = auth.seal_login_nonce("n-1", SECRET, NOW)
    assert auth.open_login_nonce(value, SECRET, NOW + auth.LOGIN_FORM_S) == "n-1"
    with pytest.raises(BadSession, match="expired"):
        auth.open_login_nonce(value, SECRET, NOW + auth.LOGIN_FORM_S + 1)
    with pytest.raises(BadSession, match="bad signature"):
        auth.open_login_nonce(value, OTHER_SECRET, NOW)


# -- Origins -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://127.0.0.1:9102", "http://127.0.0.1:9102"),
        ("https://Console.Example", "https://console.example:443"),
        ("http://console.example/console/items?q=1", "http://console.example:80"),
        ("http://[::1]:9102/x", "http://[::1]:9102"),
        ("null", None),
        ("ftp://console.example", None),
        ("http://console.example:99999", None),
        ("http://", None),
    ],
)
def test_origins_are_normalized_to_scheme_host_port(url: str, origin: str | None) -> None:
    assert auth.normalize_origin(url) == origin


OWN = ("http://127.0.0.1:9102",)


@pytest.mark.parametrize(
    ("origin", "referer", "refused"),
    [
        ("http://127.0.0.1:9102", None, None),
        ("http://127.0.0.1:9102", "http://evil.example/", None),  # Origin decides when present
        (None, "http://127.0.0.1:9102/console/items", None),
        ("http://evil.example", None, "Origin is not this console"),
        ("https://127.0.0.1:9102", None, "Origin is not this console"),
        ("http://127.0.0.1:9103", None, "Origin is not this console"),
        ("null", "http://127.0.0.1:9102/console/", "Origin is not this console"),
        (None, "http://evil.example/console/", "Referer is not this console"),
        (None, None, "no Origin or Referer"),
    ],
)
def test_a_mutation_must_come_from_the_consoles_own_origin(
    origin: str | None, referer: str | None, refused: str | None
) -> None:
    reason = auth.origin_refusal(origin, referer, OWN)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason


# -- Proxy identity ----------------------------------------------------------------------------

PROXIED = config(
    mode=AuthMode.PROXY,
    trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")),
    proxy_role_header="X-Forwarded-Groups",
)


def headers(**values: str) -> CIMultiDict[str]:
    return CIMultiDict({k.replace("_", "-"): v for k, v in values.items()})


def test_a_trusted_proxys_header_names_the_person() -> None:
    who = auth.proxy_person(PROXIED, "10.1.2.3", headers(x_forwarded_user="alice@example.com"))
    assert who == Person("alice@example.com", Role.VIEWER, "proxy:alice@example.com")
    ipv6 = auth.proxy_person(PROXIED, "fd00::7", headers(x_forwarded_user="bob"))
    mapped = auth.proxy_person(PROXIED, "::ffff:10.0.0.5", headers(x_forwarded_user="bob"))
    assert isinstance(ipv6, Person) and isinstance(mapped, Person)


@pytest.mark.parametrize(
    ("groups", "role"),
    [
        ("staff, Operator", Role.OPERATOR),
        ("operator admin", Role.ADMIN),
        ("viewer;operator", Role.OPERATOR),
        ("paw-admins", Role.VIEWER),
        ("", Role.VIEWER),
    ],
)
def test_the_role_header_gives_the_highest_role_it_names(groups: str, role: Role) -> None:
    who = auth.proxy_person(PROXIED, "10.0.0.1", headers(x_forwarded_user="al", x_forwarded_groups=groups))
    assert isinstance(who, Person) and who.role is role


@pytest.mark.parametrize(
    ("remote", "sent", "refusal"),
    [
        ("192.168.1.9", {"x_forwarded_user": "alice"}, 403),
        ("192.168.1.9", {"x_forwarded_groups": "admin"}, 403),
        ("2001:db8::1", {"x_forwarded_user": "alice"}, 403),
        (None, {"x_forwarded_user": "alice"}, 403),
        ("192.168.1.9", {}, 401),
        ("10.0.0.1", {}, 401),
        ("10.0.0.1", {"x_forwarded_user": "  "}, 401),
        ("10.0.0.1", {"x_forwarded_user": "al\x00ice"}, 401),
    ],
)
def test_identity_headers_from_anywhere_else_are_refused(
    remote: str | None, sent: dict[str, str], refusal: int
) -> None:
    who = auth.proxy_person(PROXIED, remote, headers(**sent))
    assert isinstance(who, Refusal) and who.status == refusal


# -- Where the console may listen --------------------------------------------------------------


ANY = "0.0.0.0"  # noqa: S104 (the addresses refused are the point)


@pytest.mark.parametrize(
    ("mode", "host", "tls", "refused"),
    [
        (AuthMode.NONE, "127.0.0.1", False, None),
        (AuthMode.NONE, "127.0.0.2", False, None),
        (AuthMode.NONE, "::1", False, None),
        (AuthMode.NONE, "localhost", False, None),
        (AuthMode.NONE, ANY, True, "loopback only, not 0.0.0.0"),
        (AuthMode.NONE, "", False, "loopback only, not all interfaces"),
        (AuthMode.NONE, "::", False, "loopback only"),
        (AuthMode.NONE, "10.0.0.5", False, "loopback only"),
        (AuthMode.NONE, "console.internal", False, "loopback only"),
        (AuthMode.LOCAL, "127.0.0.1", False, None),
        (AuthMode.LOCAL, ANY, True, None),
        (AuthMode.LOCAL, ANY, False, "needs TLS"),
        (AuthMode.PROXY, ANY, False, None),
    ],
)
def test_check_binding(mode: AuthMode, host: str, tls: bool, refused: str | None, stored: str) -> None:
    cfg = config(
        mode=mode,
        users={"alice": auth.User("alice", Role.ADMIN, stored)},
        trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),),
    )
    reason = auth.check_binding(cfg, host, tls)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason


def test_local_mode_without_users_or_proxy_mode_without_proxies_may_not_listen() -> None:
    assert "no users" in (auth.check_binding(config(mode=AuthMode.LOCAL), "127.0.0.1", False) or "")
    assert "TRUSTED_PROXIES" in (auth.check_binding(config(mode=AuthMode.PROXY), "127.0.0.1", False) or "")


# -- Sign-in throttle --------------------------------------------------------------------------


def test_five_failures_a_minute_block_that_user_from_that_address_only() -> None:
    throttle = LoginThrottle(limit=5, window_s=60)
    key = ("olive", "192.0.2.1")
    for i in range(5):
        assert not throttle.blocked(key, NOW + i)
        throttle.failed(key, NOW + i)
    assert throttle.blocked(key, NOW + 5)
    assert throttle.retry_after(key, NOW + 5) == 55
    assert not throttle.blocked(("olive", "192.0.2.2"), NOW + 5)
    assert not throttle.blocked(("vic", "192.0.2.1"), NOW + 5)
    assert not throttle.blocked(key, NOW + 60)  # the first failure is a minute old: four left
    throttle.failed(key, NOW + 60)
    assert throttle.blocked(key, NOW + 60)
    throttle.forget(key)
    assert not throttle.blocked(key, NOW + 60)


def test_the_throttle_holds_a_bounded_number_of_keys() -> None:
    throttle = LoginThrottle(limit=1, window_s=60, max_keys=3)
    throttle.failed(("first", "a"), NOW)
    assert throttle.blocked(("first", "a"), NOW)
    for name in ("b", "c", "d"):
        throttle.failed((name, "a"), NOW)
    assert not throttle.blocked(("first", "a"), NOW)  # the oldest key went
    assert throttle.blocked(("d", "a"), NOW)


# -- Settings from the environment -------------------------------------------------------------


def test_by_default_no_sign_in_and_a_secret_made_for_this_process() -> None:
    cfg = ConsoleAuth.from_env({"USER": "dora"})
    assert (cfg.mode, cfg.users, cfg.tls, cfg.trusted_proxies) == (AuthMode.NONE, {}, False, ())
    assert (cfg.idle_timeout_s, cfg.max_age_s) == (1800, 43200)
    assert cfg.secret_generated and len(cfg.session_secret) == 32
    assert cfg.session_secret != ConsoleAuth.from_env({}).session_secret
    assert cfg.local_user == "dora"


def test_local_mode_reads_its_users_file_and_secret(tmp_path: Path, stored: str) -> None:
    users = tmp_path / "users"
    users.write_text(f"olive operator {stored}\n")
    cfg = ConsoleAuth.from_env(
        {
            "PAW_CONSOLE_AUTH": "local",
            "PAW_CONSOLE_USERS_FILE": str(users),
            "PAW_CONSOLE_SESSION_SECRET": SECRET.hex(),
            "PAW_CONSOLE_IDLE_S": "600",
            "PAW_CONSOLE_TLS_CERT": "/etc/paw/cert.pem",
            "PAW_CONSOLE_TLS_KEY": "/etc/paw/key.pem",
            "PAW_CONSOLE_ORIGIN": "https://paw.example.com",
        }
    )
    assert cfg.mode is AuthMode.LOCAL and cfg.users["olive"].role is Role.OPERATOR
    assert (cfg.session_secret, cfg.secret_generated) == (SECRET, False)
    assert (cfg.idle_timeout_s, cfg.tls, cfg.origins) == (600, True, ("https://paw.example.com:443",))


@pytest.mark.parametrize(
    "text",
    [
        SECRET.hex(),
        SECRET.hex().upper(),
        base64.b64encode(SECRET).decode(),
        base64.urlsafe_b64encode(SECRET).decode().rstrip("="),
    ],
)
def test_the_session_secret_is_hex_or_base64(text: str) -> None:
    assert auth.decode_secret(text) == SECRET


def test_proxy_mode_reads_its_proxies_and_headers() -> None:
    cfg = ConsoleAuth.from_env(
        {
            "PAW_CONSOLE_AUTH": "Proxy",
            "PAW_CONSOLE_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.7 ,fd00::/8",
            "PAW_CONSOLE_PROXY_USER_HEADER": "X-Auth-Request-Email",
            "PAW_CONSOLE_PROXY_ROLE_HEADER": "X-Auth-Request-Groups",
        }
    )
    assert cfg.mode is AuthMode.PROXY and cfg.secret_generated
    assert [str(n) for n in cfg.trusted_proxies] == ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8"]
    assert (cfg.proxy_user_header, cfg.proxy_role_header) == ("X-Auth-Request-Email", "X-Auth-Request-Groups")


SHORT_SECRET = "ab" * 16


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PAW_CONSOLE_AUTH": "ldap"}, "PAW_CONSOLE_AUTH must be none, local or proxy, not 'ldap'"),
        ({"PAW_CONSOLE_AUTH": "local"}, "PAW_CONSOLE_AUTH=local needs PAW_CONSOLE_USERS_FILE"),
        (
            {"PAW_CONSOLE_AUTH": "local", "PAW_CONSOLE_USERS_FILE": "/nonexistent/users"},
            "PAW_CONSOLE_USERS_FILE /nonexistent/users: cannot read it",
        ),
        (
            {"PAW_CONSOLE_AUTH": "local", "PAW_CONSOLE_USERS_FILE": "USERS"},
            "needs PAW_CONSOLE_SESSION_SECRET",
        ),
        ({"PAW_CONSOLE_USERS_FILE": "USERS"}, "PAW_CONSOLE_USERS_FILE is set but PAW_CONSOLE_AUTH is none"),
        ({"PAW_CONSOLE_SESSION_SECRET": SHORT_SECRET}, "PAW_CONSOLE_SESSION_SECRET holds 16 bytes"),
        ({"PAW_CONSOLE_SESSION_SECRET": "not a secret!"}, "neither hex nor base64"),
        ({"PAW_CONSOLE_AUTH": "proxy"}, "PAW_CONSOLE_AUTH=proxy needs PAW_CONSOLE_TRUSTED_PROXIES"),
        (
            {"PAW_CONSOLE_AUTH": "proxy", "PAW_CONSOLE_TRUSTED_PROXIES": "10.0.0.0/8,sso-proxy"},
            "PAW_CONSOLE_TRUSTED_PROXIES: 'sso-proxy' is not an address or a CIDR",
        ),
        ({"PAW_CONSOLE_TRUSTED_PROXIES": "10.0.0.1"}, "PAW_CONSOLE_TRUSTED_PROXIES is set but"),
        ({"PAW_CONSOLE_TLS_CERT": "/c.pem"}, "PAW_CONSOLE_TLS_CERT and PAW_CONSOLE_TLS_KEY go together"),
        ({"PAW_CONSOLE_IDLE_S": "soon"}, "PAW_CONSOLE_IDLE_S must be a whole number of seconds above 0"),
        ({"PAW_CONSOLE_IDLE_S": "0"}, "PAW_CONSOLE_IDLE_S must be a whole number"),
        ({"PAW_CONSOLE_MAX_AGE_S": "-5"}, "PAW_CONSOLE_MAX_AGE_S must be a whole number"),
        (
            {
                "PAW_CONSOLE_AUTH": "proxy",
                "PAW_CONSOLE_TRUSTED_PROXIES": "::1",
                "PAW_CONSOLE_PROXY_USER_HEADER": "X User",
            },
            "PAW_CONSOLE_PROXY_USER_HEADER: 'X User' is not a header name",
        ),
        ({"PAW_CONSOLE_ORIGIN": "127.0.0.1:9102"}, "PAW_CONSOLE_ORIGIN: '127.0.0.1:9102' is not"),
    ],
)
def test_each_settings_error_is_one_line_naming_its_variable(
    env: dict[str, str], message: str, tmp_path: Path, stored: str
) -> None:
    users = tmp_path / "users"
    users.write_text(f"olive operator {stored}\n")
    env = {k: v.replace("USERS", str(users)) if v == "USERS" else v for k, v in env.items()}
    with pytest.raises(ValueError) as raised:
        ConsoleAuth.from_env(env)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value) and SHORT_SECRET not in str(raised.value)


def test_a_users_file_error_names_the_file_and_line(tmp_path: Path, stored: str) -> None:
    users = tmp_path / "users"
    users.write_text(f"olive operator {stored}\nvic superuser {stored}\n")
    env = {
        "PAW_CONSOLE_AUTH": "local",
        "PAW_CONSOLE_USERS_FILE": str(users),
        "PAW_CONSOLE_SESSION_SECRET": SECRET.hex(),
    }
    with pytest.raises(ValueError, match=r"PAW_CONSOLE_USERS_FILE .*users line 2: unknown role 'superuser'"):
        ConsoleAuth.from_env(env)
    users.write_text("# nobody yet\n")
    with pytest.raises(ValueError, match="holds no users"):
        ConsoleAuth.from_env(env)


def test_a_short_secret_is_refused_even_when_built_directly() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        ConsoleAuth(mode=AuthMode.NONE, session_secret=b"short")


def test_no_repr_shows_the_secret_or_a_hash(stored: str) -> None:
    cfg = config(mode=AuthMode.LOCAL, users={"olive": auth.User("olive", Role.OPERATOR, stored)})
    shown = repr(cfg)
    assert "olive" in shown
    assert stored not in shown and SECRET.hex() not in shown and repr(SECRET) not in shown


# -- The fallback sign-in page -----------------------------------------------------------------


def test_the_fallback_sign_in_page_has_the_form_and_escapes_the_error() -> None:
    request = make_mocked_request("GET", "/console/login")
    response = auth.render_login_fallback(request, auth.LoginContext("tok-1", "<b>no</b>"), 401)
    assert response.status == 401 and response.content_type == "text/html"
    body = response.text or ""
    assert '<input type="hidden" name="csrf_token" value="tok-1">' in body
    assert 'name="user"' in body and 'name="password"' in body and '<button type="submit">' in body
    assert "&lt;b&gt;no&lt;/b&gt;" in body and "<b>no</b>" not in body
    assert "<script" not in body and "style=" not in body  # the CSP allows neither inline
