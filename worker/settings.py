"""Settings, read once from the environment in ``main()`` and passed down.

Nothing else reads ``os.environ``. :data:`ENV` is the one table of them: per variable, the
:class:`Settings` field it fills, its parser, what it means, its default as people see it and whether
it is a secret. ``paw --help``, ``paw config`` and the README's Configuration table are all made from
it (``python -m worker.settings --write README.md`` regenerates the README's; a test keeps them equal).

:func:`load` reports every missing or malformed value at once: one :class:`SettingsError`, one line
per problem, each naming its variable; the CLI prints them and exits 2. Choices take any case
(``PAW_LOG_LEVEL=INFO``). A secret may come from a file instead, as the postgres image offers:
``PLAID_SECRET_FILE=/run/secrets/plaid`` reads that file, trailing newline stripped.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from worker.callbacks.targets import Callback, parse_callbacks, unknown_refs
from worker.errors import SettingsError
from worker.items.model import api_key_fingerprint

# The development key only ever works with PLAID_ENV=sandbox; production refuses to start without
# PAW_TOKEN_KEYS. It is a published constant, so nothing sealed with it is secret.
DEV_TOKEN_KEYS = "dev1:" + base64.urlsafe_b64encode(b"paw-sandbox-development-key-32b!").decode()
DEV_ATOMIC_WEBHOOK_SECRET = "paw-sandbox-atomic-webhook-secret"  # noqa: S105 - sandbox only
DEV_API_KEYS = "paw-dev-api-key"

PLAID_HOSTS = {
    "sandbox": "https://sandbox.plaid.com",
    "production": "https://production.plaid.com",
}

MASKED = "****"

# What Plaid's /link/token/create accepts (plaid-python's CountryCode; Plaid's Link languages).
LINK_LANGUAGES = tuple("da de en es et fr hi it lt lv nl no pl pt ro sv vi".split())
LINK_COUNTRY_CODES = tuple("US GB ES NL FR IE CA DE IT PL DK NO SE EE LT LV PT BE AT FI".split())


@dataclasses.dataclass(frozen=True)
class Settings:
    database_url: str = "postgresql://postgres@127.0.0.1:5432/paw"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"  # one node, or a cluster's: see amqp_urls
    plaid_env: str = "sandbox"
    plaid_base_url: str = ""
    plaid_client_id: str = "paw-sandbox-client"
    plaid_secret: str = "paw-sandbox-secret"  # noqa: S105 - emulator credential
    atomic_base_url: str = "http://127.0.0.1:8090/atomic"
    atomic_api_key: str = "paw-sandbox-atomic-key"
    atomic_webhook_secret: str = DEV_ATOMIC_WEBHOOK_SECRET
    token_keys: tuple[tuple[str, bytes], ...] = ()
    api_keys: tuple[str, ...] = (DEV_API_KEYS,)
    exchange: str = "paw.events"
    queue_prefix: str = "paw"
    prefetch: int = 256
    plaid_connections: int = 256
    publish_timeout: float = 5.0
    http_timeout: float = 10.0
    max_body_bytes: int = 1024 * 1024
    webhook_max_age_s: int = 300
    webhook_future_skew_s: int = 30
    retry_base_ms: int = 1000
    retry_budget: int = 5
    retry_factor: int = 4
    atomic_pending_reconcile_s: int = 900
    verification_reconcile_s: int = 4 * 3600
    automated_microdeposits_expiry_s: int = 7 * 86400
    login_check_s: int = 600
    outbox_retention_s: int = 3600
    public_webhook_url: str = ""
    link_client_name: str = "paw"
    link_language: str = "en"
    link_country_codes: tuple[str, ...] = ("US",)
    item_lease_s: float = 30.0
    accept_insights_caution: bool = False
    db_pool_size: int = 20
    api_rate_per_s: float = 50.0
    max_in_flight: int = 2048
    callbacks: tuple[Callback, ...] = ()
    callback_allow_private: bool = False
    callback_timeout: float = 10.0
    processes: int = 0
    event_loop: str = "uvloop"
    admin_host: str = "127.0.0.1"
    admin_port: int = 9100
    console_host: str = "127.0.0.1"
    console_port: int = 9102
    log_format: str = "auto"
    log_level: str = "info"

    @property
    def amqp_urls(self) -> tuple[str, ...]:
        """The RabbitMQ nodes of AMQP_URL, in its order: one, or a cluster's several (comma-separated)."""
        return split_urls(self.amqp_url)

    @property
    def plaid_host(self) -> str:
        return self.plaid_base_url or PLAID_HOSTS[self.plaid_env]

    @property
    def retry_delays_ms(self) -> tuple[int, ...]:
        """One delay queue per attempt: base, factor x base, factor^2 x base, ... capped at one hour."""
        return tuple(
            min(self.retry_base_ms * self.retry_factor**i, 3_600_000)
            for i in range(max(self.retry_budget, 1))
        )

    @property
    def active_key_id(self) -> str:
        return self.token_keys[0][0]


FIELD_DEFAULTS: dict[str, object] = {f.name: f.default for f in dataclasses.fields(Settings)}

# A parser: ``parse(name, raw) -> value``, raising SettingsError with a message that starts with ``name``.
Parser = Callable[[str, str], object]


# A comma that starts another URL (``...,amqp://...``); one inside a password or a path does not.
_NEXT_URL = re.compile(r"\s*,\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def split_urls(text: str) -> tuple[str, ...]:
    """The URLs of a comma-separated list of them (a cluster's nodes), in order; one URL is a list of one."""
    return tuple(part for part in (p.strip() for p in _NEXT_URL.split(text.strip())) if part)


def mask_url(text: str) -> str:
    """``text`` with the password of the URL in it, if any, replaced by ``***``."""
    try:
        parts = urlsplit(text)
        if parts.password is None:
            return text
    except ValueError:
        return text
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{hostport}"))


def _quoted_url(raw: str) -> str:
    """A malformed URL, quoted for an error message without what may be a password in it."""
    shown = mask_url(raw.strip())
    if "@" in shown and ":***@" not in shown:
        shown = "***@" + shown.rpartition("@")[2]
    return repr(shown[:100])


def _str(name: str, raw: str) -> str:
    if not raw.strip():
        raise SettingsError(f"{name} is set but empty")
    return raw.strip()


def _int(lo: int, hi: int) -> Parser:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
        if not lo <= value <= hi:
            raise SettingsError(f"{name} must be between {lo} and {hi}, got {value}")
        return value

    return parse


def _float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise SettingsError(f"{name} must be a positive number, got {raw.strip()!r}")
    return value


def _url(*schemes: str) -> Parser:
    def parse(name: str, raw: str) -> str:
        try:
            parts = urlsplit(raw.strip())
            ok = parts.scheme in schemes and bool(parts.hostname)
            parts.port  # noqa: B018 - raises ValueError on a port out of range or not a number
        except ValueError:
            ok = False
        if not ok:
            wanted = "URL with a host, starting " + " or ".join(f"{s}://" for s in schemes)
            raise SettingsError(f"{name} must be a {wanted}, got {_quoted_url(raw)}")
        return raw.strip().rstrip("/") if parts.scheme.startswith("http") else raw.strip()

    return parse


_AMQP = _url("amqp", "amqps")


def _amqp_urls(name: str, raw: str) -> str:
    """One RabbitMQ node's URL, or a cluster's nodes comma-separated; each is checked as a URL of its
    own. A comma is a separator only before the next URL's scheme."""
    parts = split_urls(raw)
    if raw.strip().endswith(",") or any(part.endswith(",") for part in parts):
        raise SettingsError(f"{name} must list node URLs separated by single commas, got an empty entry")
    urls = [
        str(_AMQP(name if len(parts) == 1 else f"{name} (node {i})", part))
        for i, part in enumerate(parts, start=1)
    ]
    for url in urls:  # "amqp://mq1,mq2/" or "amqp://mq1/,mq2": one URL per node, scheme included
        where = urlsplit(url)
        if "," in (where.hostname or "") + where.path:
            raise SettingsError(
                f"{name} must give each node a URL of its own (amqp://...), comma-separated, "
                f"got {_quoted_url(url)}"
            )
    if len(set(urls)) != len(urls):
        raise SettingsError(f"{name} names a node twice")
    return ",".join(urls)


def _choice(*options: str, **aliases: str) -> Parser:
    """One of ``options``, in any case (``INFO`` is ``info``); ``aliases`` map other spellings."""

    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        value = aliases.get(value, value)
        if value not in options:
            raise SettingsError(f"{name} must be one of {', '.join(options)} (any case), got {raw!r}")
        return value

    return parse


def parse_token_keys(name: str, raw: str) -> tuple[tuple[str, bytes], ...]:
    """``kid:base64key[,kid:base64key...]``; the first key seals, all keys open."""
    keys: list[tuple[str, bytes]] = []
    for part in raw.split(","):
        kid, sep, encoded = part.strip().partition(":")
        if not sep or not kid or not kid.isidentifier():
            raise SettingsError(f"{name} must be a comma-separated list of key_id:base64key")
        try:
            key = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (binascii.Error, ValueError):
            raise SettingsError(f"{name}: key {kid!r} is not valid base64") from None
        if len(key) not in (16, 24, 32):
            raise SettingsError(f"{name}: key {kid!r} must decode to 16, 24 or 32 bytes, got {len(key)}")
        if any(k == kid for k, _ in keys):
            raise SettingsError(f"{name}: key id {kid!r} appears twice")
        keys.append((kid, key))
    return tuple(keys)


def _client_name(name: str, raw: str) -> str:
    value = raw.strip()
    if not 1 <= len(value) <= 30:
        raise SettingsError(f"{name} must be 1 to 30 characters (Link shows it to the user), got {raw!r}")
    return value


def _country_codes(name: str, raw: str) -> tuple[str, ...]:
    codes = tuple(dict.fromkeys(c.strip().upper() for c in raw.split(",") if c.strip()))
    unknown = [c for c in codes if c not in LINK_COUNTRY_CODES]
    if not codes or unknown:
        raise SettingsError(
            f"{name} must be comma-separated country codes Plaid supports "
            f"({', '.join(LINK_COUNTRY_CODES)}), got {raw!r}"
        )
    return codes


def _flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _api_keys(name: str, raw: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    if not keys or any(len(k) < 12 for k in keys):
        raise SettingsError(f"{name} must list API keys of at least 12 characters, comma-separated")
    return keys


@dataclasses.dataclass(frozen=True)
class Var:
    """One setting: its variable, the :class:`Settings` field it fills, and what people are told."""

    env: str
    field: str
    parse: Parser
    meaning: str  # one line
    shown_default: str | None = None  # where the field's own default does not say it well
    secret: bool = False  # masked wherever shown; may come from the file named by ``<env>_FILE``

    @property
    def file_env(self) -> str | None:
        return f"{self.env}_FILE" if self.secret else None

    @property
    def default(self) -> str:
        """The default, as shown to people."""
        if self.shown_default is not None:
            return self.shown_default
        return show(self, FIELD_DEFAULTS[self.field], mask=False)


def show(var: Var, value: object, *, mask: bool = True) -> str:
    """A value as people see it: a URL's password and, with ``mask``, a secret replaced by ****."""
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):  # token keys: ids only
        return ",".join(f"{kid}:{MASKED}" for kid, _ in value)
    if isinstance(value, tuple) and value and isinstance(value[0], Callback):  # refs and URLs, no secret
        return ",".join(str(c) for c in value)
    if isinstance(value, tuple):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, float):
        text = str(int(value)) if value.is_integer() else str(value)
    else:
        text = str(value)
    if not mask:
        return text
    if "://" in text:  # every URL of a list (a cluster's nodes) masked, not only the first
        return ",".join(mask_url(part) for part in split_urls(text))
    return text if not var.secret else MASKED


_EMULATOR = "the emulator's (sandbox only)"

_VARS = (
    Var(
        "DATABASE_URL",
        "database_url",
        _url("postgresql", "postgres"),
        "Postgres: postgresql://user:password@host:port/database",
        secret=True,
    ),
    Var(
        "AMQP_URL",
        "amqp_url",
        _amqp_urls,
        "RabbitMQ: amqp://user:password@host:port/vhost (amqps:// for TLS); a cluster's nodes "
        "comma-separated: connections fail over between them (README: RabbitMQ cluster); "
        "?heartbeat=15 unless the URL sets its own",
        secret=True,
    ),
    Var(
        "PLAID_ENV",
        "plaid_env",
        _choice("sandbox", "production"),
        "sandbox or production; production requires each setting whose default is sandbox only",
    ),
    Var(
        "PLAID_BASE_URL",
        "plaid_base_url",
        _url("http", "https"),
        "Plaid's API, instead of PLAID_ENV's host (e.g. the emulator, http://127.0.0.1:8090)",
        shown_default="Plaid's host for PLAID_ENV",
    ),
    Var("PLAID_CLIENT_ID", "plaid_client_id", _str, "Plaid client id", shown_default=_EMULATOR),
    Var("PLAID_SECRET", "plaid_secret", _str, "Plaid secret", shown_default=_EMULATOR, secret=True),
    Var("ATOMIC_BASE_URL", "atomic_base_url", _url("http", "https"), "Atomic's API"),
    Var(
        "ATOMIC_API_KEY",
        "atomic_api_key",
        _str,
        "Atomic API key (sent as a bearer token)",
        shown_default=_EMULATOR,
        secret=True,
    ),
    Var(
        "ATOMIC_WEBHOOK_SECRET",
        "atomic_webhook_secret",
        _str,
        "HMAC-SHA256 secret Atomic signs its webhooks with",
        shown_default=_EMULATOR,
        secret=True,
    ),
    Var(
        "PAW_TOKEN_KEYS",
        "token_keys",
        parse_token_keys,
        "AES keys sealing Plaid tokens, kid:base64key[,kid:base64key...]: the first seals, all open",
        shown_default="a published development key (sandbox only)",
        secret=True,
    ),
    Var(
        "PAW_API_KEYS",
        "api_keys",
        _api_keys,
        "bearer keys for /v1/*, comma-separated, at least 12 characters each",
        shown_default=f"{DEV_API_KEYS} (sandbox only)",
        secret=True,
    ),
    Var("PAW_EXCHANGE", "exchange", _str, "the RabbitMQ topic exchange events are published to"),
    Var(
        "PAW_QUEUE_PREFIX",
        "queue_prefix",
        _str,
        "prefix of every queue name (PREFIX.items, PREFIX.webhooks, PREFIX.dead, ...)",
    ),
    Var("PAW_PREFETCH", "prefetch", _int(1, 10_000), "unacked messages per consumer (its concurrency)"),
    Var(
        "PAW_PLAID_CONNECTIONS",
        "plaid_connections",
        _int(1, 1024),
        "connections to Plaid at most (calls beyond it wait for one); at least PAW_PREFETCH",
    ),
    Var(
        "PAW_PUBLISH_TIMEOUT",
        "publish_timeout",
        _float,
        "seconds to wait for the broker to confirm a publish",
    ),
    Var("PAW_HTTP_TIMEOUT", "http_timeout", _float, "seconds for each call to Plaid or Atomic"),
    Var(
        "PAW_MAX_BODY_BYTES",
        "max_body_bytes",
        _int(1024, 64 * 1024 * 1024),
        "largest webhook body accepted, in bytes (413 beyond)",
    ),
    Var(
        "PAW_WEBHOOK_MAX_AGE",
        "webhook_max_age_s",
        _int(1, 3600),
        "seconds a Plaid webhook's JWT iat may lie in the past",
    ),
    Var(
        "PAW_WEBHOOK_FUTURE_SKEW",
        "webhook_future_skew_s",
        _int(0, 600),
        "seconds a Plaid webhook's JWT iat may lie in the future (clock skew)",
    ),
    Var("PAW_RETRY_BASE_MS", "retry_base_ms", _int(1, 3_600_000), "first retry delay, in milliseconds"),
    Var(
        "PAW_RETRY_BUDGET",
        "retry_budget",
        _int(0, 20),
        "retries of a failing message before it is dead-lettered",
    ),
    Var(
        "PAW_RETRY_FACTOR",
        "retry_factor",
        _int(1, 10),
        "factor each retry delay grows by (delays capped at one hour)",
    ),
    Var(
        "PAW_ATOMIC_PENDING_RECONCILE_S",
        "atomic_pending_reconcile_s",
        _int(1, 7 * 86400),
        "seconds an Item waits for Atomic's webhook before the reconciler asks Atomic",
    ),
    Var(
        "PAW_VERIFICATION_RECONCILE_S",
        "verification_reconcile_s",
        _int(1, 7 * 86400),
        "seconds between two looks at an Item in awaiting_verification (re-reading Plaid's /accounts/get)",
    ),
    Var(
        "PAW_MICRODEPOSITS_EXPIRY_S",
        "automated_microdeposits_expiry_s",
        _int(1, 30 * 86400),
        "seconds an automated micro-deposit account may stay pending before its Item fails with "
        "VERIFICATION_EXPIRED (Plaid gives up after 7 days)",
    ),
    Var(
        "PAW_LOGIN_CHECK_S",
        "login_check_s",
        _int(1, 7 * 86400),
        "seconds between two checks with Plaid (/item/get) of a login_required Item nobody reported repaired",
    ),
    Var(
        "PAW_OUTBOX_RETENTION_S",
        "outbox_retention_s",
        _int(0, 30 * 86400),
        "seconds a published outcome event stays in the outbox table (`paw item show` lists them) before the "
        "relay deletes it; the Item's history keeps every transition regardless",
    ),
    Var(
        "PAW_PUBLIC_WEBHOOK_URL",
        "public_webhook_url",
        _url("http", "https"),
        "the receiver's Plaid webhook URL as Plaid reaches it (https://.../webhooks/plaid), put into "
        "every link token paw makes (new Items and update mode); required against real Plaid",
        shown_default="none (sandbox only)",
    ),
    Var(
        "PAW_LINK_CLIENT_NAME",
        "link_client_name",
        _client_name,
        "the app name Link shows the user in the link tokens paw makes (at most 30 characters)",
    ),
    Var(
        "PAW_LINK_LANGUAGE",
        "link_language",
        _choice(*LINK_LANGUAGES),
        f"Link's language in the link tokens paw makes: {', '.join(LINK_LANGUAGES)}",
    ),
    Var(
        "PAW_LINK_COUNTRY_CODES",
        "link_country_codes",
        _country_codes,
        "countries whose institutions Link offers in the link tokens paw makes, comma-separated",
    ),
    Var(
        "PAW_ITEM_LEASE_S",
        "item_lease_s",
        _float,
        "seconds a worker holds an Item between two upstream calls (a killed worker's are free after it)",
    ),
    Var(
        "PAW_ACCEPT_INSIGHTS_CAUTION",
        "accept_insights_caution",
        _flag,
        "fund accounts Database Insights passed only with caution (database_insights_pass_with_caution)",
    ),
    Var(
        "PAW_DB_POOL_SIZE",
        "db_pool_size",
        _int(2, 1000),
        "Postgres connections of one paw command, shared by its processes (a statement holds one ~1 ms)",
    ),
    Var(
        "PAW_API_RATE",
        "api_rate_per_s",
        _float,
        "requests per second per API key on /v1/* (bursts of twice that; 429 beyond)",
    ),
    Var(
        "PAW_MAX_IN_FLIGHT",
        "max_in_flight",
        _int(1, 1_000_000),
        "requests one receiver handles at once (503 beyond)",
    ),
    Var(
        "PAW_CALLBACKS",
        "callbacks",
        parse_callbacks,
        "signed callbacks of outcome events: REF URL SECRET per API key, comma-separated; REF the key's "
        "fingerprint (printf %s KEY | sha256sum | cut -c1-16) or amqp (Items submitted over AMQP), "
        "SECRET whsec_<base64> (README: Callbacks)",
        shown_default="none",
        secret=True,
    ),
    Var(
        "PAW_CALLBACK_ALLOW_PRIVATE",
        "callback_allow_private",
        _flag,
        "let callbacks reach private and loopback addresses (never link-local or cloud metadata)",
    ),
    Var(
        "PAW_CALLBACK_TIMEOUT",
        "callback_timeout",
        _float,
        "seconds a callback URL has to answer (a timeout is retried like a non-2xx answer)",
    ),
    Var(
        "PAW_PROCESSES",
        "processes",
        _int(0, 256),
        "processes of `paw worker`/`paw receiver` (0: one per core, at most pool/2; --processes wins)",
        shown_default="0 (one per core)",
    ),
    Var(
        "PAW_EVENT_LOOP",
        "event_loop",
        _choice("uvloop", "asyncio"),
        "the worker's and receiver's event loop: uvloop (less CPU per message), or asyncio's own",
    ),
    Var(
        "PAW_ADMIN_HOST",
        "admin_host",
        _str,
        "address the admin servers (probes, /metrics) listen on; keep them off the internet",
    ),
    Var(
        "PAW_ADMIN_PORT",
        "admin_port",
        _int(0, 65535),
        "the worker's admin port (the receiver's: its --admin-port, 9101); +10 per further process",
    ),
    Var(
        "PAW_CONSOLE_HOST",
        "console_host",
        _str,
        "where `paw console` listens; beyond loopback only with a sign-in (PAW_CONSOLE_AUTH)",
    ),
    Var("PAW_CONSOLE_PORT", "console_port", _int(1, 65535), "`paw console`'s port"),
    Var(
        "PAW_LOG_FORMAT",
        "log_format",
        _choice("auto", "json", "console"),
        "json, console, or auto: JSON off a terminal, console on one",
    ),
    Var(
        "PAW_LOG_LEVEL",
        "log_level",
        _choice("debug", "info", "warning", "error", warn="warning"),
        "debug, info, warning or error, in any case",
    ),
)

# The table: env var -> its Var. Every accepted variable name is a key here or a secret's ``<key>_FILE``.
ENV: dict[str, Var] = {v.env: v for v in _VARS}

# Settings that have no safe default outside the sandbox.
REQUIRED_IN_PRODUCTION = (
    "PLAID_CLIENT_ID",
    "PLAID_SECRET",
    "ATOMIC_API_KEY",
    "ATOMIC_WEBHOOK_SECRET",
    "PAW_TOKEN_KEYS",
    "PAW_API_KEYS",
    "PAW_PUBLIC_WEBHOOK_URL",
)


def effective(settings: Settings) -> dict[str, str]:
    """Every setting in ``settings`` as people may see it, secrets masked (for a start-up log line)."""
    return {var.env: show(var, getattr(settings, var.field)) for var in ENV.values()}


def names() -> set[str]:
    """Every variable paw reads: the table's, and ``<name>_FILE`` for each secret."""
    return set(ENV) | {v.file_env for v in ENV.values() if v.file_env}


@dataclasses.dataclass(frozen=True)
class Reading:
    """One variable as a process reads it."""

    var: Var
    source: str  # "default", "environment" or "file <path>"
    value: object  # parsed; the field's default where unset or malformed
    problem: str | None = None

    @property
    def shown(self) -> str:
        """The value in effect as people see it (secrets masked)."""
        if self.problem is not None:
            return "(invalid)"
        return self.var.default if self.source == "default" else show(self.var, self.value)


def _read(var: Var, environ: Mapping[str, str]) -> Reading:
    default = FIELD_DEFAULTS[var.field]
    raw, name, source = environ.get(var.env), var.env, "environment"
    if var.file_env is not None and var.file_env in environ:
        path = environ[var.file_env]
        if raw is not None:
            return Reading(var, source, default, f"{var.env} and {var.file_env} are both set: keep one")
        if not path.strip():
            return Reading(var, source, default, f"{var.file_env} is set but empty")
        source = f"file {path}"
        try:
            raw = Path(path).read_text("utf-8").rstrip("\r\n")
        except OSError as e:
            return Reading(var, source, default, f"{var.file_env}: cannot read {path}: {e.strerror or e}")
        except UnicodeDecodeError:
            return Reading(var, source, default, f"{var.file_env}: {path} is not UTF-8 text")
        name = f"{var.env} (from {var.file_env})"
    if raw is None:
        return Reading(var, "default", default)
    try:
        return Reading(var, source, var.parse(name, raw))
    except SettingsError as e:
        return Reading(var, source, default, str(e))


def _gather(
    environ: Mapping[str, str], overrides: Mapping[str, object]
) -> tuple[list[Reading], dict[str, object], list[str]]:
    readings = [_read(var, environ) for var in ENV.values()]
    problems = [r.problem for r in readings if r.problem is not None]
    values = {r.var.field: r.value for r in readings if r.source != "default" and r.problem is None}
    values.update(overrides)
    callbacks = values.get("callbacks")
    if isinstance(callbacks, tuple) and callbacks:
        keys = values.get("api_keys", FIELD_DEFAULTS["api_keys"])
        assert isinstance(keys, tuple)
        problems += [
            f"PAW_CALLBACKS: {ref} is not the fingerprint of a key in PAW_API_KEYS"
            for ref in unknown_refs(callbacks, {api_key_fingerprint(k) for k in keys})
        ]
    if values.get("plaid_env") == "production":
        failed = {r.var.env for r in readings if r.problem is not None}
        problems += [
            f"{v} is required when PLAID_ENV=production"
            for v in REQUIRED_IN_PRODUCTION
            if ENV[v].field not in values and v not in failed
        ]
    return readings, values, problems


def read(environ: Mapping[str, str]) -> tuple[list[Reading], list[str]]:
    """Every variable as a process reads it from ``environ``, and every problem (none: it loads)."""
    readings, _, problems = _gather(environ, {})
    return readings, problems


def load(environ: Mapping[str, str], **overrides: object) -> Settings:
    """The settings from ``environ``; ``overrides``, by field name, win (tests use them).

    Raises one :class:`SettingsError` listing every missing or malformed value.
    """
    _, values, problems = _gather(environ, overrides)
    if problems:
        raise SettingsError(*problems)
    if "token_keys" not in values:
        values["token_keys"] = parse_token_keys("PAW_TOKEN_KEYS", DEV_TOKEN_KEYS)
    return Settings(**values)  # type: ignore[arg-type]


README_BEGIN = (
    "<!-- settings table: made from worker/settings.py by `python -m worker.settings --write README.md` -->"
)
README_END = "<!-- end of the settings table -->"


def markdown() -> str:
    """The README's Configuration table, from :data:`ENV`."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("*", "\\*").replace("<", "&lt;")

    rows = ["| variable | default | meaning | secret |", "|---|---|---|---|"]
    for var in ENV.values():
        default = cell(var.shown_default) if var.shown_default is not None else f"`{var.default}`"
        secret = f"yes; or `{var.file_env}`" if var.secret else ""
        rows.append(f"| `{var.env}` | {default} | {cell(var.meaning)} | {secret} |")
    return "\n".join(rows) + "\n"


def _table_span(text: str) -> tuple[int, int]:
    return text.index(README_BEGIN) + len(README_BEGIN), text.index(README_END)


def readme_table(text: str) -> str:
    """The table between the markers in the README's ``text``."""
    begin, end = _table_span(text)
    return text[begin:end].strip("\n") + "\n"


def write_readme(path: Path) -> bool:
    """Puts :func:`markdown` between the markers of the README at ``path``; True if that changed it."""
    text = path.read_text("utf-8")
    begin, end = _table_span(text)
    new = text[:begin] + "\n" + markdown() + text[end:]
    if new != text:
        path.write_text(new, "utf-8")
    return new != text


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.settings", description="The settings table.")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--markdown", action="store_true", help="print the README's table")
    what.add_argument("--write", metavar="README", type=Path, help="put the table into this README")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown())
    else:
        print(f"{args.write}: {'updated' if write_readme(args.write) else 'up to date'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
