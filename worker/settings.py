"""Settings, read once from the environment in ``main()`` and passed down.

Nothing below this module reads ``os.environ``. A missing or malformed value raises
:class:`SettingsError` naming the variable; the CLI prints that one line and exits 2.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Callable, Mapping
from typing import TypeVar
from urllib.parse import urlsplit

from worker.errors import SettingsError

T = TypeVar("T")

# The development key only ever works with PLAID_ENV=sandbox; production refuses to start without
# PAW_TOKEN_KEYS. It is a published constant, so nothing sealed with it is secret.
DEV_TOKEN_KEYS = "dev1:" + base64.urlsafe_b64encode(b"paw-sandbox-development-key-32b!").decode()
DEV_ATOMIC_WEBHOOK_SECRET = "paw-sandbox-atomic-webhook-secret"  # noqa: S105 - sandbox only
DEV_API_KEYS = "paw-dev-api-key"

PLAID_HOSTS = {
    "sandbox": "https://sandbox.plaid.com",
    "production": "https://production.plaid.com",
}


@dataclasses.dataclass(frozen=True)
class Settings:
    database_url: str = "postgresql://postgres@127.0.0.1:5432/paw"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
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
    prefetch: int = 64
    plaid_threads: int = 64
    publish_timeout: float = 5.0
    http_timeout: float = 10.0
    max_body_bytes: int = 1024 * 1024
    webhook_max_age_s: int = 300
    webhook_future_skew_s: int = 30
    retry_base_ms: int = 1000
    retry_budget: int = 5
    retry_factor: int = 4
    atomic_pending_reconcile_s: int = 900
    item_lease_s: float = 30.0
    db_pool_size: int = 20
    api_rate_per_s: float = 50.0
    max_in_flight: int = 2048
    admin_host: str = "127.0.0.1"
    admin_port: int = 9100
    log_format: str = "auto"
    log_level: str = "info"

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


def _str(name: str, raw: str) -> str:
    if not raw.strip():
        raise SettingsError(f"{name} is set but empty")
    return raw.strip()


def _int(lo: int, hi: int) -> Callable[[str, str], int]:
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
    if value <= 0:
        raise SettingsError(f"{name} must be positive, got {value}")
    return value


def _url(*schemes: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        parts = urlsplit(raw.strip())
        if parts.scheme not in schemes or not parts.hostname:
            raise SettingsError(f"{name} must be a {'/'.join(schemes)} URL with a host, got {parts.scheme!r}")
        return raw.strip().rstrip("/") if parts.scheme.startswith("http") else raw.strip()

    return parse


def _choice(*options: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        if raw not in options:
            raise SettingsError(f"{name} must be one of {', '.join(options)}, got {raw!r}")
        return raw

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


def _api_keys(name: str, raw: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    if not keys or any(len(k) < 12 for k in keys):
        raise SettingsError(f"{name} must list API keys of at least 12 characters, comma-separated")
    return keys


# env var -> (field, parser)
ENV: dict[str, tuple[str, Callable[[str, str], object]]] = {
    "DATABASE_URL": ("database_url", _url("postgresql", "postgres")),
    "AMQP_URL": ("amqp_url", _url("amqp", "amqps")),
    "PLAID_ENV": ("plaid_env", _choice("sandbox", "production")),
    "PLAID_BASE_URL": ("plaid_base_url", _url("http", "https")),
    "PLAID_CLIENT_ID": ("plaid_client_id", _str),
    "PLAID_SECRET": ("plaid_secret", _str),
    "ATOMIC_BASE_URL": ("atomic_base_url", _url("http", "https")),
    "ATOMIC_API_KEY": ("atomic_api_key", _str),
    "ATOMIC_WEBHOOK_SECRET": ("atomic_webhook_secret", _str),
    "PAW_TOKEN_KEYS": ("token_keys", parse_token_keys),
    "PAW_API_KEYS": ("api_keys", _api_keys),
    "PAW_EXCHANGE": ("exchange", _str),
    "PAW_QUEUE_PREFIX": ("queue_prefix", _str),
    "PAW_PREFETCH": ("prefetch", _int(1, 10_000)),
    "PAW_PLAID_THREADS": ("plaid_threads", _int(1, 1024)),
    "PAW_PUBLISH_TIMEOUT": ("publish_timeout", _float),
    "PAW_HTTP_TIMEOUT": ("http_timeout", _float),
    "PAW_MAX_BODY_BYTES": ("max_body_bytes", _int(1024, 64 * 1024 * 1024)),
    "PAW_WEBHOOK_MAX_AGE": ("webhook_max_age_s", _int(1, 3600)),
    "PAW_WEBHOOK_FUTURE_SKEW": ("webhook_future_skew_s", _int(0, 600)),
    "PAW_RETRY_BASE_MS": ("retry_base_ms", _int(1, 3_600_000)),
    "PAW_RETRY_BUDGET": ("retry_budget", _int(0, 20)),
    "PAW_RETRY_FACTOR": ("retry_factor", _int(1, 10)),
    "PAW_ATOMIC_PENDING_RECONCILE_S": ("atomic_pending_reconcile_s", _int(1, 7 * 86400)),
    "PAW_ITEM_LEASE_S": ("item_lease_s", _float),
    "PAW_DB_POOL_SIZE": ("db_pool_size", _int(2, 1000)),
    "PAW_API_RATE": ("api_rate_per_s", _float),
    "PAW_MAX_IN_FLIGHT": ("max_in_flight", _int(1, 1_000_000)),
    "PAW_ADMIN_HOST": ("admin_host", _str),
    "PAW_ADMIN_PORT": ("admin_port", _int(0, 65535)),
    "PAW_LOG_FORMAT": ("log_format", _choice("auto", "json", "console")),
    "PAW_LOG_LEVEL": ("log_level", _choice("debug", "info", "warning", "error")),
}

# Settings that have no safe default outside the sandbox.
REQUIRED_IN_PRODUCTION = (
    "PLAID_CLIENT_ID",
    "PLAID_SECRET",
    "ATOMIC_API_KEY",
    "ATOMIC_WEBHOOK_SECRET",
    "PAW_TOKEN_KEYS",
    "PAW_API_KEYS",
)


def load(environ: Mapping[str, str], **overrides: object) -> Settings:
    values: dict[str, object] = {}
    for var, (field, parse) in ENV.items():
        raw = environ.get(var)
        if raw is not None:
            values[field] = parse(var, raw)
    values.update(overrides)
    env = values.get("plaid_env", "sandbox")
    if env == "production":
        missing = [v for v in REQUIRED_IN_PRODUCTION if ENV[v][0] not in values]
        if missing:
            raise SettingsError(f"{missing[0]} is required when PLAID_ENV=production")
    if "token_keys" not in values:
        values["token_keys"] = parse_token_keys("PAW_TOKEN_KEYS", DEV_TOKEN_KEYS)
    return Settings(**values)  # type: ignore[arg-type]
