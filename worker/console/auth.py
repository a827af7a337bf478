"""The console's security layer: who is asking, what they may do, and proof that a change came from
the console's own page.

Sign-in modes (``PAW_CONSOLE_AUTH``): ``none`` (loopback only; everyone is the local operator,
role admin), ``local`` (a users file of scrypt hashes; TLS or loopback) and ``proxy`` (an SSO proxy's
identity header, trusted only from the configured proxy addresses). Roles: viewer < operator
(replay, retry) < admin (purge, forget). Sessions are HMAC-signed cookies (``SameSite=Strict``,
``HttpOnly``, ``Path=/console``) with an idle and an absolute lifetime; every POST carries a
per-session CSRF token and a same-origin ``Origin`` (or ``Referer``); every response carries the
security headers.

The top half is pure decisions over plain values; :class:`ConsoleSecurity` (the middlewares and the
sign-in handlers) only carries them out. Nothing here logs or renders a password, a hash, the session
secret or a cookie value.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import getpass
import hashlib
import hmac
import html
import ipaddress
import json
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from enum import StrEnum
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

log = structlog.get_logger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

HOME: Final = "/console/"
COOKIE_PATH: Final = "/console"
LOGIN_PATH: Final = "/console/login"
LOGOUT_PATH: Final = "/console/logout"
API_PREFIX: Final = "/console/api/"
STATIC_PREFIX: Final = "/console/static/"
SESSION_COOKIE: Final = "paw_console_session"
LOGIN_COOKIE: Final = "paw_console_login"
CSRF_FIELD: Final = "csrf_token"
CSRF_HEADER: Final = "X-CSRF-Token"
SAFE_METHODS: Final = frozenset({"GET", "HEAD"})

SECURITY_HEADERS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
    }
)

DEFAULT_IDLE_S: Final = 30 * 60
DEFAULT_MAX_AGE_S: Final = 12 * 3600
LOGIN_FORM_S: Final = 10 * 60  # how long a sign-in form's pre-session token lasts
CLOCK_SKEW_S: Final = 60
MIN_SECRET_BYTES: Final = 32


# -- Roles -------------------------------------------------------------------------------------


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise ValueError(f"unknown role {text!r} (viewer, operator or admin)") from None


_RANK: Final[Mapping[Role, int]] = MappingProxyType({Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2})

ACTIONS: Final[Mapping[str, Role]] = MappingProxyType(
    {
        "view": Role.VIEWER,
        "replay": Role.OPERATOR,
        "retry": Role.OPERATOR,
        "purge": Role.ADMIN,
        "forget": Role.ADMIN,
    }
)


def allowed(role: Role, action: str) -> bool:
    """May ``role`` do ``action`` (view, replay, retry, purge, forget)? An unknown action is a bug:
    ValueError, never a quiet yes or no."""
    try:
        needed = ACTIONS[action]
    except KeyError:
        raise ValueError(f"unknown console action {action!r} ({', '.join(ACTIONS)})") from None
    return _RANK[role] >= _RANK[needed]


@dataclasses.dataclass(frozen=True)
class Person:
    """Who a request is from. ``actor`` goes into the audit: ``local:alice``, ``proxy:alice@example.com``
    or ``local:<OS user>`` (mode none)."""

    name: str
    role: Role
    actor: str
    can_sign_out: bool = False  # signed in with a password (mode local): the page offers Sign out


# -- Passwords (scrypt) ------------------------------------------------------------------------

SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
SALT_BYTES: Final = 16
KEY_BYTES: Final = 32
_MAX_SCRYPT_MEMORY: Final = 256 * 2**20  # a users file cannot make one sign-in take more


@dataclasses.dataclass(frozen=True)
class _Scrypt:
    n: int
    r: int
    p: int
    salt: bytes = dataclasses.field(repr=False)
    key: bytes = dataclasses.field(repr=False)


def _derive(password: str, n: int, r: int, p: int, salt: bytes, length: int) -> bytes:
    memory = 128 * r * (n + p + 2)
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length, maxmem=2 * memory + 2**20
    )


def hash_password(password: str) -> str:
    """``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>`` (n=2**14, r=8, p=1, 16-byte salt, 32-byte key)."""
    salt = secrets.token_bytes(SALT_BYTES)
    key = _derive(password, SCRYPT_N, SCRYPT_R, SCRYPT_P, salt, KEY_BYTES)
    salt64, key64 = base64.b64encode(salt).decode("ascii"), base64.b64encode(key).decode("ascii")
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt64}${key64}"


def _parse_hash(stored: str) -> _Scrypt:
    """The parts of a stored hash; the ValueError never quotes the hash."""
    shape = "the password hash is not scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>"
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError(shape)
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        key = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        raise ValueError(shape) from None
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or 128 * r * n * p > _MAX_SCRYPT_MEMORY:
        raise ValueError("the password hash's scrypt parameters are out of range (n a power of 2; r, p >= 1)")
    if len(salt) < 8 or len(key) < 16:
        raise ValueError("the password hash's salt or key is too short")
    return _Scrypt(n, r, p, salt, key)


def verify_password(password: str, stored: str) -> bool:
    """Does ``password`` match ``stored`` (constant-time comparison)? A malformed hash matches nothing."""
    try:
        h = _parse_hash(stored)
    except ValueError:
        return False
    return hmac.compare_digest(_derive(password, h.n, h.r, h.p, h.salt, len(h.key)), h.key)


@cache
def _dummy_hash() -> str:
    """What an unknown user's password is checked against, so both failures take as long."""
    return hash_password(secrets.token_hex(16))


# -- The users file ----------------------------------------------------------------------------

_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}\Z")


@dataclasses.dataclass(frozen=True)
class User:
    name: str
    role: Role
    password_hash: str = dataclasses.field(repr=False)


def _check_user_name(name: str) -> None:
    if not _USER_NAME.match(name):
        raise ValueError(f"{name!r} is not a user name (letters, digits and . _ @ + -, up to 64)")


def parse_users(text: str, source: str = "users file") -> dict[str, User]:
    """``name role scrypt$…`` per line; ``#`` starts a comment. Each error names its line."""
    users: dict[str, User] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source} line {number}"
        fields = line.split()
        if len(fields) != 3:
            raise ValueError(f"{where}: expected 'name role scrypt$…', found {len(fields)} fields")
        name, role, stored = fields
        try:
            _check_user_name(name)
            parsed = Role.parse(role)
            _parse_hash(stored)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if name in users:
            raise ValueError(f"{where}: user {name!r} is already defined")
        users[name] = User(name, parsed, stored)
    return users


def users_file_line(name: str, role: Role, password: str) -> str:
    """One line of the users file (``paw console user NAME --role ROLE`` prints it)."""
    _check_user_name(name)
    if not password:
        raise ValueError("the password is empty")
    return f"{name} {role.value} {hash_password(password)}"


# -- Signed values: sessions and the sign-in form's token ---------------------------------------


def _mac(secret: bytes, purpose: str, data: bytes) -> bytes:
    """HMAC-SHA256, one purpose per use, so a value signed for one use is refused by the others."""
    return hmac.new(secret, purpose.encode("ascii") + b"\x00" + data, hashlib.sha256).digest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class BadSession(ValueError):
    """The cookie is not a valid session (tampered, malformed or expired); ``str()`` says which."""


def _seal(secret: bytes, purpose: str, payload: Mapping[str, Any]) -> str:
    body = _b64url(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8"))
    return f"{body}.{_b64url(_mac(secret, purpose, body.encode('ascii')))}"


def _unseal(secret: bytes, purpose: str, value: str) -> dict[str, Any]:
    if len(value) > 4096 or not value.isascii() or value.count(".") != 1:
        raise BadSession("malformed")
    body, signature = value.split(".")
    try:
        given = _unb64url(signature)
    except (ValueError, binascii.Error):
        raise BadSession("malformed") from None
    if not hmac.compare_digest(given, _mac(secret, purpose, body.encode("ascii"))):
        raise BadSession("bad signature")
    try:
        payload = json.loads(_unb64url(body))
    except (ValueError, binascii.Error):
        raise BadSession("malformed") from None
    if not isinstance(payload, dict):
        raise BadSession("malformed")
    return payload


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("not an integer")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError("not a string")
    return value


@dataclasses.dataclass(frozen=True)
class Session:
    user: str
    role: Role
    sid: str = dataclasses.field(repr=False)
    issued_at: int
    last_seen: int


def new_session(user: str, role: Role, now: float) -> Session:
    """A fresh session (new id: a sign-in never reuses one the browser brought)."""
    t = int(now)
    return Session(user=user, role=role, sid=secrets.token_urlsafe(18), issued_at=t, last_seen=t)


def touched(session: Session, now: float) -> Session:
    return dataclasses.replace(session, last_seen=max(session.last_seen, int(now)))


def seal_session(session: Session, secret: bytes) -> str:
    """The cookie value: base64url(compact JSON) + "." + base64url(HMAC-SHA256)."""
    payload = {
        "u": session.user,
        "r": session.role.value,
        "s": session.sid,
        "i": session.issued_at,
        "t": session.last_seen,
    }
    return _seal(secret, "session", payload)


def open_session(value: str, secret: bytes, *, now: float, idle_s: int, max_age_s: int) -> Session:
    """The session in a cookie value, or :class:`BadSession` (tampered, malformed, idle, expired)."""
    payload = _unseal(secret, "session", value)
    try:
        session = Session(
            user=_str(payload["u"]),
            role=Role(payload["r"]),
            sid=_str(payload["s"]),
            issued_at=_int(payload["i"]),
            last_seen=_int(payload["t"]),
        )
    except (KeyError, ValueError, TypeError):
        raise BadSession("malformed") from None
    t = int(now)
    if session.issued_at > t + CLOCK_SKEW_S or session.last_seen < session.issued_at:
        raise BadSession("malformed")
    if t - session.issued_at > max_age_s:
        raise BadSession("expired")
    if t - session.last_seen > idle_s:
        raise BadSession("idle")
    return session


def csrf_for(secret: bytes, sid: str) -> str:
    """The CSRF token of a session: HMAC(secret, session id)."""
    return _mac(secret, "csrf", sid.encode("utf-8")).hex()


def login_token(secret: bytes, nonce: str) -> str:
    """The sign-in form's pre-session token, bound to the nonce in its short-lived cookie."""
    return _mac(secret, "login", nonce.encode("utf-8")).hex()


def seal_login_nonce(nonce: str, secret: bytes, now: float) -> str:
    return _seal(secret, "login-form", {"n": nonce, "i": int(now)})


def open_login_nonce(value: str, secret: bytes, now: float) -> str:
    payload = _unseal(secret, "login-form", value)
    try:
        nonce, issued = _str(payload["n"]), _int(payload["i"])
    except (KeyError, TypeError):
        raise BadSession("malformed") from None
    if not -CLOCK_SKEW_S <= int(now) - issued <= LOGIN_FORM_S:
        raise BadSession("expired")
    return nonce


def token_matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


# -- Origins -----------------------------------------------------------------------------------

_DEFAULT_PORTS: Final[Mapping[str, int]] = MappingProxyType({"http": 80, "https": 443})


def normalize_origin(url: str) -> str | None:
    """``scheme://host:port`` of a URL or an ``Origin`` value (default port written out), or None."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port or _DEFAULT_PORTS[scheme]}"


def origin_refusal(origin: str | None, referer: str | None, own: Iterable[str]) -> str | None:
    """Why a mutation's ``Origin`` (or, without one, its ``Referer``) is not the console's own
    origin; None when it is."""
    ours = set(own)
    if origin is not None:
        if normalize_origin(origin) not in ours:
            return "cross-origin request refused (Origin is not this console)"
        return None
    if referer:
        if normalize_origin(referer) not in ours:
            return "cross-origin request refused (Referer is not this console)"
        return None
    return "request refused: no Origin or Referer header"


# -- Proxy identity and the listening address --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Refusal:
    status: int
    reason: str


def parse_ip(text: str | None) -> IPAddress | None:
    """An address, IPv4-mapped IPv6 as IPv4; None when it is not one."""
    if not text:
        return None
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def from_trusted_proxy(remote: str | None, proxies: Iterable[IPNetwork]) -> bool:
    ip = parse_ip(remote)
    return ip is not None and any(ip.version == net.version and ip in net for net in proxies)


def role_from_header(value: str | None) -> Role:
    """The highest role named in a role/groups header (comma, semicolon or space separated, any
    case); viewer when it names none."""
    names = {part.strip().lower() for part in re.split(r"[,;\s]+", value or "") if part.strip()}
    found = [r for r in Role if r.value in names]
    return max(found, key=lambda r: _RANK[r], default=Role.VIEWER)


def proxy_person(config: ConsoleAuth, remote: str | None, headers: Mapping[str, str]) -> Person | Refusal:
    """Mode proxy: the person the SSO proxy names, believed only from a trusted proxy address. The
    identity headers from anywhere else: 403."""
    user = headers.get(config.proxy_user_header)
    role = headers.get(config.proxy_role_header) if config.proxy_role_header else None
    if not from_trusted_proxy(remote, config.trusted_proxies):
        if user is not None or role is not None:
            return Refusal(403, "identity header refused: this address is not a trusted proxy")
        return Refusal(401, "sign in through the SSO proxy")
    name = (user or "").strip()
    if not name:
        return Refusal(401, f"the proxy sent no {config.proxy_user_header} header")
    if len(name) > 256 or not name.isprintable():
        return Refusal(401, f"the proxy's {config.proxy_user_header} is not a usable name")
    return Person(name=name, role=role_from_header(role), actor=f"proxy:{name}")


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address; all interfaces (``""``, ``0.0.0.0``, ``::``) and other
    names are not (nothing is resolved)."""
    h = host.strip().lower()
    if h == "localhost":
        return True
    ip = parse_ip(h)
    return ip is not None and ip.is_loopback


def check_binding(config: ConsoleAuth, host: str, tls: bool) -> str | None:
    """Why the console must not listen on ``host`` with ``config``; None when it may."""
    shown = host or "all interfaces"
    loopback = is_loopback(host)
    if config.mode is AuthMode.NONE and not loopback:
        return (
            f"without sign-in (PAW_CONSOLE_AUTH=none) the console listens on loopback only, not {shown}: "
            "set PAW_CONSOLE_AUTH=local or proxy"
        )
    if config.mode is AuthMode.LOCAL:
        if not config.users:
            return "PAW_CONSOLE_AUTH=local with no users: nobody could sign in"
        if not loopback and not tls:
            return (
                f"local sign-in sends passwords: on {shown} it needs TLS "
                "(PAW_CONSOLE_TLS_CERT and PAW_CONSOLE_TLS_KEY), or a loopback address"
            )
    if config.mode is AuthMode.PROXY and not config.trusted_proxies:
        return "PAW_CONSOLE_AUTH=proxy needs PAW_CONSOLE_TRUSTED_PROXIES"
    return None


# -- Sign-in throttle --------------------------------------------------------------------------


class LoginThrottle:
    """At most ``limit`` failed sign-ins per (user, address) in ``window_s``; in memory, per process,
    holding at most ``max_keys`` keys (the oldest go first)."""

    def __init__(self, limit: int = 5, window_s: float = 60.0, max_keys: int = 10_000) -> None:
        self.limit, self.window_s, self.max_keys = limit, window_s, max_keys
        self._failures: OrderedDict[tuple[str, str], list[float]] = OrderedDict()

    def _recent(self, key: tuple[str, str], now: float) -> list[float]:
        times = [t for t in self._failures.get(key, ()) if now - t < self.window_s]
        if not times:
            self._failures.pop(key, None)
        return times

    def blocked(self, key: tuple[str, str], now: float) -> bool:
        return len(self._recent(key, now)) >= self.limit

    def retry_after(self, key: tuple[str, str], now: float) -> int:
        times = self._recent(key, now)
        return max(1, math.ceil(self.window_s - (now - times[0]))) if times else 0

    def failed(self, key: tuple[str, str], now: float) -> None:
        times = self._recent(key, now)
        times.append(now)
        self._failures[key] = times
        self._failures.move_to_end(key)
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def forget(self, key: tuple[str, str]) -> None:
        self._failures.pop(key, None)


# -- Configuration -----------------------------------------------------------------------------


class AuthMode(StrEnum):
    NONE = "none"
    LOCAL = "local"
    PROXY = "proxy"


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


@dataclasses.dataclass(frozen=True)
class ConsoleAuth:
    """How the console knows who is asking. Built once by :meth:`from_env` and passed down."""

    mode: AuthMode
    session_secret: bytes = dataclasses.field(repr=False)
    users: Mapping[str, User] = dataclasses.field(default_factory=dict)
    idle_timeout_s: int = DEFAULT_IDLE_S
    max_age_s: int = DEFAULT_MAX_AGE_S
    trusted_proxies: tuple[IPNetwork, ...] = ()
    proxy_user_header: str = "X-Forwarded-User"
    proxy_role_header: str | None = None
    tls: bool = False
    origins: tuple[str, ...] = ()  # the console's public origins; empty: the request's own scheme://Host
    local_user: str = "operator"  # mode none: the OS user everyone is
    secret_generated: bool = False  # no PAW_CONSOLE_SESSION_SECRET: a random one for this process

    def __post_init__(self) -> None:
        if len(self.session_secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the console's session secret must hold at least {MIN_SECRET_BYTES} bytes")
        if self.idle_timeout_s < 1 or self.max_age_s < 1:
            raise ValueError("the console's session lifetimes must be positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ConsoleAuth:
        """From ``PAW_CONSOLE_*`` (README, Console). Every error is one ValueError line naming its
        variable, and never quotes the secret."""

        def get(name: str) -> str | None:
            return env.get(name, "").strip() or None

        mode_text = (get("PAW_CONSOLE_AUTH") or "none").lower()
        try:
            mode = AuthMode(mode_text)
        except ValueError:
            raise ValueError(f"PAW_CONSOLE_AUTH must be none, local or proxy, not {mode_text!r}") from None

        users: dict[str, User] = {}
        users_file = get("PAW_CONSOLE_USERS_FILE")
        if mode is AuthMode.LOCAL:
            if users_file is None:
                raise ValueError(
                    "PAW_CONSOLE_AUTH=local needs PAW_CONSOLE_USERS_FILE "
                    "(one 'name role hash' per line: paw console user NAME --role ROLE)"
                )
            users = _read_users(users_file)
        elif users_file is not None:
            raise ValueError(f"PAW_CONSOLE_USERS_FILE is set but PAW_CONSOLE_AUTH is {mode}: set it to local")

        proxies_text = get("PAW_CONSOLE_TRUSTED_PROXIES")
        proxies = _parse_proxies(proxies_text) if proxies_text else ()
        if mode is AuthMode.PROXY and not proxies:
            raise ValueError(
                "PAW_CONSOLE_AUTH=proxy needs PAW_CONSOLE_TRUSTED_PROXIES (the SSO proxy's addresses, CIDRs)"
            )
        if mode is not AuthMode.PROXY and proxies:
            raise ValueError(f"PAW_CONSOLE_TRUSTED_PROXIES is set but PAW_CONSOLE_AUTH is {mode}: use proxy")

        secret_text = get("PAW_CONSOLE_SESSION_SECRET")
        if secret_text is not None:
            secret, generated = decode_secret(secret_text), False
        elif mode is AuthMode.LOCAL:
            raise ValueError(
                "PAW_CONSOLE_AUTH=local needs PAW_CONSOLE_SESSION_SECRET "
                "(32+ random bytes, hex or base64: openssl rand -hex 32)"
            )
        else:
            secret, generated = secrets.token_bytes(MIN_SECRET_BYTES), True

        cert, key = get("PAW_CONSOLE_TLS_CERT"), get("PAW_CONSOLE_TLS_KEY")
        if (cert is None) != (key is None):
            raise ValueError("PAW_CONSOLE_TLS_CERT and PAW_CONSOLE_TLS_KEY go together: set both or neither")

        return cls(
            mode=mode,
            session_secret=secret,
            users=users,
            idle_timeout_s=_seconds(env, "PAW_CONSOLE_IDLE_S", DEFAULT_IDLE_S),
            max_age_s=_seconds(env, "PAW_CONSOLE_MAX_AGE_S", DEFAULT_MAX_AGE_S),
            trusted_proxies=proxies,
            proxy_user_header=_header(get("PAW_CONSOLE_PROXY_USER_HEADER") or "X-Forwarded-User", "USER"),
            proxy_role_header=_header(role_header, "ROLE")
            if (role_header := get("PAW_CONSOLE_PROXY_ROLE_HEADER"))
            else None,
            tls=cert is not None,
            origins=_parse_origins(get("PAW_CONSOLE_ORIGIN")),
            local_user=_os_user(env),
            secret_generated=generated,
        )


def decode_secret(text: str) -> bytes:
    """``PAW_CONSOLE_SESSION_SECRET``: hex, else base64 (standard or URL-safe), 32 bytes or more."""
    text = text.strip()
    if re.fullmatch(r"(?:[0-9A-Fa-f]{2})+", text):
        raw = bytes.fromhex(text)
    else:
        try:
            padded = text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4)
            raw = base64.b64decode(padded, validate=True)
        except (ValueError, binascii.Error):
            raise ValueError("PAW_CONSOLE_SESSION_SECRET is neither hex nor base64") from None
    if len(raw) < MIN_SECRET_BYTES:
        raise ValueError(
            f"PAW_CONSOLE_SESSION_SECRET holds {len(raw)} bytes; it needs at least {MIN_SECRET_BYTES} "
            "(openssl rand -hex 32)"
        )
    return raw


def _read_users(path: str) -> dict[str, User]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"PAW_CONSOLE_USERS_FILE {path}: cannot read it ({type(e).__name__})") from None
    users = parse_users(text, source=f"PAW_CONSOLE_USERS_FILE {path}")
    if not users:
        raise ValueError(f"PAW_CONSOLE_USERS_FILE {path} holds no users")
    return users


def _parse_proxies(text: str) -> tuple[IPNetwork, ...]:
    out: list[IPNetwork] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"PAW_CONSOLE_TRUSTED_PROXIES: {part!r} is not an address or a CIDR") from None
    return tuple(out)


def _parse_origins(text: str | None) -> tuple[str, ...]:
    out: list[str] = []
    for part in (p.strip() for p in (text or "").split(",")):
        if not part:
            continue
        origin = normalize_origin(part)
        if origin is None:
            raise ValueError(f"PAW_CONSOLE_ORIGIN: {part!r} is not an http(s)://host[:port] origin")
        out.append(origin)
    return tuple(out)


def _seconds(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name} must be a whole number of seconds above 0, not {text!r}")
    return value


def _header(name: str, which: str) -> str:
    if not _HEADER_NAME.match(name):
        raise ValueError(f"PAW_CONSOLE_PROXY_{which}_HEADER: {name!r} is not a header name")
    return name


def _os_user(env: Mapping[str, str]) -> str:
    name = env.get("LOGNAME") or env.get("USER") or env.get("USERNAME")
    if not name:
        try:
            name = getpass.getuser()
        except (OSError, KeyError, ImportError):
            name = "operator"
    name = name.strip()
    return name if name and len(name) <= 64 and name.isprintable() else "operator"


# -- aiohttp: middlewares, sign-in and sign-out ------------------------------------------------

# What the middleware leaves on each request (aiohttp 3.14's typed request keys)
PERSON_KEY: Final = web.RequestKey("console_user", Person)
SESSION_KEY: Final = web.RequestKey("console_session", Session)  # the session the request runs under
CSRF_KEY: Final = web.RequestKey("console_csrf_token", str)  # that session's CSRF token


@dataclasses.dataclass(frozen=True)
class LoginContext:
    """What a sign-in page shows: the form's token and the error of the last attempt, if any."""

    csrf_token: str
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"csrf_token": self.csrf_token, "error": self.error}


LoginRenderer = Callable[[web.Request, LoginContext, int], web.StreamResponse]


def render_login_fallback(request: web.Request, context: LoginContext, status: int) -> web.StreamResponse:
    """A plain sign-in page (no template, no script, no style): the app may pass its own renderer."""
    error = f'<p role="alert">{html.escape(context.error)}</p>\n' if context.error else ""
    body = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>Sign in · paw console</title></head>\n<body><main>\n<h1>Sign in to paw</h1>\n"
        f"{error}"
        f'<form method="post" action="{LOGIN_PATH}">\n'
        f'<input type="hidden" name="{CSRF_FIELD}" value="{html.escape(context.csrf_token)}">\n'
        '<label>user <input type="text" name="user" autocomplete="username" required autofocus></label>\n'
        '<label>password <input type="password" name="password" autocomplete="current-password" required>'
        "</label>\n"
        '<button type="submit">Sign in</button>\n</form>\n</main></body></html>\n'
    )
    return web.Response(text=body, content_type="text/html", status=status)


def _wants_json(request: web.Request) -> bool:
    return request.path.startswith(API_PREFIX)


def refusal_response(request: web.Request, status: int, reason: str) -> web.Response:
    """``{"error": reason}`` under ``/console/api/``, plain text elsewhere."""
    if _wants_json(request):
        return web.json_response({"error": reason}, status=status)
    return web.Response(status=status, text=reason)


CONSOLE_PREFIX: Final = "/console"


def _is_public(path: str) -> bool:
    """Paths that need no person: the sign-in form, sign-out (it checks its own token) and the
    static files (no data in them)."""
    return (
        path in (LOGIN_PATH, LOGOUT_PATH)
        or path.startswith(STATIC_PREFIX)
        # outside the console (a browser's /favicon.ico): nothing to protect, and a redirect to the
        # sign-in form would mint a new form token under the one the person is filling in
        or not path.startswith(CONSOLE_PREFIX)
    )


def _secure(headers: MutableMapping[str, str]) -> None:
    for name, value in SECURITY_HEADERS.items():
        headers[name] = value


def _field(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


async def _submitted_token(request: web.Request) -> str | None:
    """The CSRF token a mutation carries: the ``X-CSRF-Token`` header, else the form's ``csrf_token``."""
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        value = (await request.post()).get(CSRF_FIELD)
        return value if isinstance(value, str) else None
    return None


class ConsoleSecurity:
    """Carries out the decisions above for one console app: ``.middlewares`` for
    ``web.Application(middlewares=...)`` and ``.add_login_routes(app)``. ``clock`` (seconds since
    the epoch) is injectable so tests can age sessions without sleeping; ``render`` draws the sign-in
    page (the app passes its template; the fallback is plain HTML)."""

    def __init__(
        self,
        config: ConsoleAuth,
        *,
        clock: Callable[[], float] = time.time,
        render: LoginRenderer = render_login_fallback,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.render = render
        self.throttle = throttle or LoginThrottle()
        self._local_person = Person(
            name=config.local_user, role=Role.ADMIN, actor=f"local:{config.local_user}"
        )

    # -- the middlewares

    @property
    def middlewares(self) -> list[Middleware]:
        if self.config.secret_generated:
            log.warning(
                "console.session_secret_generated",
                detail="no PAW_CONSOLE_SESSION_SECRET: a random one for this process; sessions end with it",
            )
        return [self._headers_middleware(), self._auth_middleware()]

    def _headers_middleware(self) -> Middleware:
        @web.middleware
        async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                _secure(exc.headers)
                raise
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("console.error", method=request.method, path=request.path)
                response = refusal_response(request, 500, "internal error")
            if not response.prepared:
                _secure(response.headers)
            return response

        return security_headers

    def _auth_middleware(self) -> Middleware:
        @web.middleware
        async def console_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
            unsafe = request.method not in SAFE_METHODS
            if unsafe:
                reason = origin_refusal(
                    request.headers.get("Origin"), request.headers.get("Referer"), self.own_origins(request)
                )
                if reason is not None:
                    return self._refuse(request, 403, reason)
            if _is_public(request.path):
                return await handler(request)
            now = self.clock()
            found = self._read_session(request, now)
            who = self._identify(request, found)
            if isinstance(who, Refusal):
                return self._unauthenticated(request, who)
            session = found
            if session is None or session.user != who.name:
                if unsafe:
                    return self._refuse(request, 403, "no session for this form: reload the page")
                session = new_session(who.name, who.role, now)
            token = csrf_for(self.config.session_secret, session.sid)
            if unsafe and not token_matches(await _submitted_token(request), token):
                return self._refuse(request, 403, "CSRF token missing or wrong: reload the page")
            session = dataclasses.replace(touched(session, now), role=who.role)
            request[PERSON_KEY] = who
            request[SESSION_KEY] = session
            request[CSRF_KEY] = token
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                self._set_session_cookie(exc, session, now)
                raise
            if not response.prepared:
                self._set_session_cookie(response, session, now)
            return response

        return console_auth

    def own_origins(self, request: web.Request) -> tuple[str, ...]:
        """``PAW_CONSOLE_ORIGIN`` when set, else this request's own ``scheme://Host``."""
        if self.config.origins:
            return self.config.origins
        own = normalize_origin(f"{request.scheme}://{request.host}")
        return (own,) if own else ()

    def _read_session(self, request: web.Request, now: float) -> Session | None:
        value = request.cookies.get(SESSION_COOKIE)
        if not value:
            return None
        try:
            return open_session(
                value,
                self.config.session_secret,
                now=now,
                idle_s=self.config.idle_timeout_s,
                max_age_s=self.config.max_age_s,
            )
        except BadSession as e:
            log.info("console.session_rejected", reason=str(e), remote=request.remote, path=request.path)
            return None

    def _identify(self, request: web.Request, session: Session | None) -> Person | Refusal:
        if self.config.mode is AuthMode.NONE:
            return self._local_person
        if self.config.mode is AuthMode.PROXY:
            who = proxy_person(self.config, request.remote, request.headers)
            if isinstance(who, Refusal) and who.status == 403:
                log.warning(
                    "console.proxy_header_untrusted",
                    remote=request.remote,
                    header=self.config.proxy_user_header,
                    path=request.path,
                )
            return who
        user = self.config.users.get(session.user) if session is not None else None
        if user is None:
            return Refusal(401, "sign in first")
        return Person(name=user.name, role=user.role, actor=f"local:{user.name}", can_sign_out=True)

    def _unauthenticated(self, request: web.Request, refusal: Refusal) -> web.StreamResponse:
        response: web.StreamResponse
        to_login = self.config.mode is AuthMode.LOCAL and refusal.status == 401
        if to_login and request.headers.get("HX-Request") == "true":
            response = self._refuse(request, 401, refusal.reason)
            response.headers["HX-Redirect"] = LOGIN_PATH  # htmx: the whole page goes to the sign-in
        elif to_login and request.method in SAFE_METHODS and not _wants_json(request):
            response = web.Response(status=303, headers={"Location": LOGIN_PATH})
        else:
            response = self._refuse(request, refusal.status, refusal.reason)
        if SESSION_COOKIE in request.cookies:
            response.del_cookie(SESSION_COOKIE, path=COOKIE_PATH)
        return response

    def _refuse(self, request: web.Request, status: int, reason: str) -> web.Response:
        log.info(
            "console.refused",
            status=status,
            reason=reason,
            method=request.method,
            path=request.path,
            remote=request.remote,
        )
        return refusal_response(request, status, reason)

    def _set_session_cookie(self, response: web.StreamResponse, session: Session, now: float) -> None:
        left = self.config.max_age_s - (int(now) - session.issued_at)
        response.set_cookie(
            SESSION_COOKIE,
            seal_session(session, self.config.session_secret),
            path=COOKIE_PATH,
            max_age=max(0, min(self.config.idle_timeout_s, left)),
            httponly=True,
            samesite="Strict",
            secure=True if self.config.tls else None,
        )

    # -- sign-in and sign-out

    def add_login_routes(self, app: web.Application) -> None:
        """``GET``/``POST /console/login`` and ``POST /console/logout``."""
        if self.config.mode is AuthMode.LOCAL:
            _dummy_hash()  # made now, so the first unknown user's sign-in takes no longer than others
        app.router.add_get(LOGIN_PATH, self.login_page)
        app.router.add_post(LOGIN_PATH, self.login)
        app.router.add_post(LOGOUT_PATH, self.logout)

    def login_context(
        self, error: str | None = None, request: web.Request | None = None
    ) -> tuple[LoginContext, str]:
        """A sign-in form's context and the value of the short-lived cookie its token is bound to
        (:meth:`login_page` sets it; an app drawing its own page must set it too, Path=/console/login).
        A browser that holds a valid form cookie keeps its nonce: a second form (another tab, a
        reload) does not void the first."""
        secret = self.config.session_secret
        nonce = secrets.token_urlsafe(18)
        held = request.cookies.get(LOGIN_COOKIE) if request is not None else None
        if held:
            with contextlib.suppress(BadSession):
                nonce = open_login_nonce(held, secret, self.clock())
        return LoginContext(login_token(secret, nonce), error), seal_login_nonce(nonce, secret, self.clock())

    def _login_form(self, request: web.Request, error: str | None, status: int) -> web.StreamResponse:
        context, cookie = self.login_context(error, request)
        response = self.render(request, context, status)
        response.set_cookie(
            LOGIN_COOKIE,
            cookie,
            path=LOGIN_PATH,
            max_age=LOGIN_FORM_S,
            httponly=True,
            samesite="Strict",
            secure=True if self.config.tls else None,
        )
        return response

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        if self.config.mode is not AuthMode.LOCAL:
            raise web.HTTPSeeOther(HOME)  # the proxy or the machine says who this is
        session = self._read_session(request, self.clock())
        if session is not None and session.user in self.config.users:
            raise web.HTTPSeeOther(HOME)
        return self._login_form(request, None, 200)

    async def login(self, request: web.Request) -> web.StreamResponse:
        if self.config.mode is not AuthMode.LOCAL:
            return self._refuse(request, 404, f"no sign-in with PAW_CONSOLE_AUTH={self.config.mode}")
        now = self.clock()
        form = await request.post()
        user = _field(form, "user").strip()[:256]
        password = _field(form, "password")
        if not self._login_form_is_ours(request, _field(form, CSRF_FIELD), now):
            log.info("console.refused", status=403, reason="sign-in form token", remote=request.remote)
            return self._login_form(request, "The sign-in form expired: sign in again.", 403)
        key = (user.lower(), request.remote or "")
        if self.throttle.blocked(key, now):
            log.warning("console.login_throttled", remote=request.remote)
            response = self._login_form(request, "Too many failed sign-ins: wait a minute.", 429)
            response.headers["Retry-After"] = str(self.throttle.retry_after(key, now))
            return response
        known = self.config.users.get(user)
        stored = known.password_hash if known is not None else _dummy_hash()
        matches = await asyncio.to_thread(verify_password, password, stored)
        if known is None or not matches:
            self.throttle.failed(key, now)
            # a name nobody has may be a password typed in the wrong box: not logged
            log.info(
                "console.login_failed",
                user=known.name if known else None,
                known_user=known is not None,
                remote=request.remote,
            )
            return self._login_form(request, "Wrong user or password.", 401)
        self.throttle.forget(key)
        session = new_session(known.name, known.role, now)
        response = web.Response(status=303, headers={"Location": HOME})
        self._set_session_cookie(response, session, now)
        response.del_cookie(LOGIN_COOKIE, path=LOGIN_PATH)
        log.info("console.login", actor=f"local:{known.name}", role=known.role.value, remote=request.remote)
        return response

    def _login_form_is_ours(self, request: web.Request, token: str, now: float) -> bool:
        value = request.cookies.get(LOGIN_COOKIE)
        if not value:
            return False
        try:
            nonce = open_login_nonce(value, self.config.session_secret, now)
        except BadSession:
            return False
        return token_matches(token, login_token(self.config.session_secret, nonce))

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """Clears the session cookie (a signed-in person's request must carry its CSRF token)."""
        session = self._read_session(request, self.clock())
        if session is not None:
            given = await _submitted_token(request)
            if not token_matches(given, csrf_for(self.config.session_secret, session.sid)):
                return self._refuse(request, 403, "CSRF token missing or wrong: reload the page")
            log.info("console.logout", user=session.user, remote=request.remote)
        where = LOGIN_PATH if self.config.mode is AuthMode.LOCAL else HOME
        response = web.Response(status=303, headers={"Location": where})
        response.del_cookie(SESSION_COOKIE, path=COOKIE_PATH)
        return response


def security_middlewares(config: ConsoleAuth, *, clock: Callable[[], float] = time.time) -> list[Middleware]:
    """The console's middlewares: security headers on every response, then who is asking (sign-in
    redirect, 401, proxy trust), the session cookie's refresh and the CSRF and Origin checks."""
    return ConsoleSecurity(config, clock=clock).middlewares


def add_login_routes(
    app: web.Application,
    config: ConsoleAuth,
    *,
    render: LoginRenderer = render_login_fallback,
    clock: Callable[[], float] = time.time,
) -> None:
    """``/console/login`` (GET form, POST sign-in, throttled) and ``POST /console/logout``."""
    ConsoleSecurity(config, clock=clock, render=render).add_login_routes(app)


# -- Helpers for the pages ---------------------------------------------------------------------


def person(request: web.Request) -> Person:
    """Who the request is from (set by :func:`security_middlewares`)."""
    try:
        return request[PERSON_KEY]
    except KeyError:
        raise RuntimeError(
            "no console person on this request: is the app behind security_middlewares?"
        ) from None


def csrf_token(request: web.Request) -> str:
    """The token a page puts in its forms (``csrf_token``) or htmx sends (``X-CSRF-Token``)."""
    try:
        return request[CSRF_KEY]
    except KeyError:
        raise RuntimeError("no CSRF token on this request: is the app behind security_middlewares?") from None


def require(request: web.Request, action: str) -> Person:
    """The person, when their role may do ``action``; else 403 with the reason."""
    who = person(request)
    if allowed(who.role, action):
        return who
    reason = f"forbidden: {action} needs the {ACTIONS[action].value} role ({who.name} is {who.role.value})"
    log.info("console.forbidden", actor=who.actor, action=action, path=request.path)
    if _wants_json(request):
        raise web.HTTPForbidden(text=json.dumps({"error": reason}), content_type="application/json")
    raise web.HTTPForbidden(text=reason)
