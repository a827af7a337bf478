"""structlog set-up: one stream on stderr, JSON lines off a terminal, console on one.

paw's lines go through structlog's processor chain; every standard-library logger's (aiohttp,
aio-pika/aiormq, asyncpg, asyncio, warnings) through :class:`structlog.stdlib.ProcessorFormatter`
with the same processors, redaction included; one handler on the root logger writes both, under one
lock. Every line has ``level``, ``logger``, ``service`` (the process role) and ``version`` (the
package's); JSON lines also have ``severity`` (Google Cloud Logging's names). A traceback is a field
of its line (``exception``), never lines of its own.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TextIO
from urllib.parse import urlsplit

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from worker import settings as settings_mod
from worker import version
from worker.redact import redact
from worker.settings import Settings

# Cloud Logging reads a stderr line without ``severity`` as an error.
SEVERITY = {"debug": "DEBUG", "info": "INFO", "warning": "WARNING", "error": "ERROR", "critical": "CRITICAL"}
# Libraries log at INFO and above whatever PAW_LOG_LEVEL says: their DEBUG output is per-frame noise
# (aiormq logs every AMQP frame it sends, message bodies included).
LIBRARY_FLOOR = logging.INFO


def redact_processor(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Masks tokens and secrets in every field, rendered tracebacks included."""
    out: dict[str, Any] = redact(event_dict)
    return out


class UtcStamper:
    """``timestamp`` as structlog's ``TimeStamper(fmt="iso", utc=True)`` writes it
    (``2026-12-07T05:41:50.484595Z``, no fraction at a whole second), with the date and time of day
    formatted once a second rather than a ``datetime`` made and formatted for every line."""

    __slots__ = ("_second",)

    def __init__(self) -> None:
        # (second, its text) in one attribute, replaced whole: lines logged from other threads
        # never see one second's text paired with another second
        self._second = (-1, "")

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        second, micros = divmod(time.time_ns() // 1000, 1_000_000)
        cached = self._second
        if cached[0] != second:
            cached = self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        event_dict["timestamp"] = f"{cached[1]}.{micros:06d}Z" if micros else f"{cached[1]}Z"
        return event_dict


def add_severity(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    event_dict["severity"] = SEVERITY.get(str(event_dict.get("level")), "DEFAULT")
    return event_dict


def _process_fields(service: str, version: str) -> Processor:
    def add(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event_dict["service"] = service
        event_dict["version"] = version
        return event_dict

    return add


def json_line(obj: Any, **dumps_kw: Any) -> str:
    """A log line's JSON, by orjson (a quarter of json.dumps's CPU per line); what orjson does not
    write (an integer beyond 64 bits, a type whose fallback gives another such) by json.dumps, so a
    line is never lost to its encoder."""
    try:
        return orjson.dumps(obj, default=dumps_kw.get("default"), option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(obj, **dumps_kw)


def _snake(name: str) -> str:
    """``LineTooLong`` -> ``line_too_long``, ``InvalidURLError`` -> ``invalid_url_error``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def aiohttp_rejections(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """aiohttp's server logs a malformed request (bad request line, oversized or invalid header) as
    an error with a traceback whose message quotes up to 100 bytes of the offending line: that can be
    an ``Authorization`` header. Such a record becomes one ``http.rejected`` line with the status and
    a reason named after aiohttp's exception, without the traceback and without the quoted bytes."""
    record = event_dict.get("_record")
    exc_info = event_dict.get("exc_info")
    if record is None or not record.name.startswith("aiohttp.") or not isinstance(exc_info, tuple):
        return event_dict
    # aiohttp is imported by whoever logged through it; paw's CLI does not import it for this
    http_exceptions = sys.modules.get("aiohttp.http_exceptions")
    exc = exc_info[1]
    if http_exceptions is None or not isinstance(exc, http_exceptions.HttpProcessingError):
        return event_dict
    del event_dict["exc_info"]
    event_dict["event"] = "http.rejected"
    event_dict["status"] = exc.code or 400
    event_dict["reason"] = _snake(type(exc).__name__)
    # a client's error, not the server's; aiohttp already logs garbage in place of a method at DEBUG
    event_dict["level"] = "debug" if record.levelno < logging.WARNING else "warning"
    return event_dict


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one writer of the stream: the standard library's records through its formatter, paw's
    lines (rendered by structlog already) through :meth:`write_line`, under the same lock. Writes to
    ``stream``, or to whatever ``sys.stderr`` is at the time (pytest swaps it)."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__(stream or sys.stderr)
        self._follow_stderr = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        if self._follow_stderr:
            self.stream = sys.stderr
        super().emit(record)

    def write_line(self, line: str) -> None:
        with self.lock:  # type: ignore[union-attr]
            stream = sys.stderr if self._follow_stderr else self.stream
            stream.write(line + self.terminator)
            stream.flush()

    def handleError(self, record: logging.LogRecord) -> None:
        # the default prints a multi-line traceback into the stream; one line instead
        error = sys.exc_info()[0]
        line = {"event": "log.unrenderable", "level": "error", "severity": "ERROR", "logger": record.name}
        try:
            self.stream.write(json.dumps({**line, "error": error.__name__ if error else None}) + "\n")
        except Exception:  # noqa: S110 - nowhere left to report it
            pass


class HandlerLogger:
    """What structlog wraps for paw's own lines: hands the rendered line to the stream's handler
    (no LogRecord, no caller lookup: a line costs what the processors cost)."""

    def __init__(self, handler: _Handler, name: str) -> None:
        self._handler = handler
        self.name = name

    def msg(self, message: str) -> None:
        self._handler.write_line(message)

    log = debug = info = warn = warning = error = exception = critical = fatal = msg


def _colors(environ: Mapping[str, str], stream: TextIO) -> bool:
    """https://no-color.org and https://force-color.org: NO_COLOR wins, then FORCE_COLOR, else a tty."""
    if environ.get("NO_COLOR"):
        return False
    if environ.get("FORCE_COLOR"):
        return True
    return stream.isatty()


_installed: _Handler | None = None
_saved_hooks = (sys.excepthook, threading.excepthook, sys.unraisablehook)  # before configure()


def configure(
    fmt: str = "auto",
    level: str = "info",
    *,
    service: str = "cli",
    environ: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
) -> None:
    """Configures structlog and the standard library's root logger for one stream on ``stream``
    (stderr by default). ``environ`` is read for NO_COLOR and FORCE_COLOR only."""
    global _installed, _saved_hooks
    if _installed is None:
        _saved_hooks = (sys.excepthook, threading.excepthook, sys.unraisablehook)
    out = stream or sys.stderr
    json_out = fmt == "json" or (fmt == "auto" and not out.isatty())
    level_no = logging.getLevelName(level.upper())
    floor = max(level_no, LIBRARY_FLOOR)
    # The same processors for paw's lines (structlog's chain) and the libraries' (the formatter's):
    # the fields the code does not control first, then redaction, then the ones it does.
    untrusted: list[Processor] = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level]
    redaction: list[Processor] = [
        structlog.processors.format_exc_info,  # tracebacks to text first, so they are redacted too
        redact_processor,
    ]
    trusted: list[Processor] = [
        structlog.stdlib.add_logger_name,
        UtcStamper(),
        _process_fields(service, version()),
    ]
    renderer: list[Processor] = (
        [add_severity, structlog.processors.JSONRenderer(serializer=json_line)]
        if json_out
        else [structlog.dev.ConsoleRenderer(colors=_colors(environ or {}, out))]
    )
    handler = _Handler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*untrusted, aiohttp_rejections, *redaction, *trusted],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
        )
    )
    structlog.configure(
        processors=[*untrusted, *redaction, *trusted, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=lambda *args: HandlerLogger(handler, str(args[0]) if args else "paw"),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    root.addHandler(handler)
    root.setLevel(floor)  # libraries: from INFO up, or from the level asked if higher
    _installed = handler
    logging.captureWarnings(True)  # warnings.warn(...) through the py.warnings logger, one line each
    if json_out:  # an uncaught or unraisable exception is a JSON line too
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread
        sys.unraisablehook = _log_unraisable
    else:
        sys.excepthook, threading.excepthook, sys.unraisablehook = _saved_hooks


def reset() -> None:
    """Undoes :func:`configure` (for tests that configure in-process)."""
    global _installed
    if _installed is not None:
        logging.getLogger().removeHandler(_installed)
        _installed = None
    logging.captureWarnings(False)
    sys.excepthook, threading.excepthook, sys.unraisablehook = _saved_hooks
    structlog.reset_defaults()


# For the start-up line: the settings shown as they are (an allowlist: a setting added later stays out
# until someone decides it may be logged), and the secrets, of which only "set" or "default" is said.
SHOWN = (
    "exchange",
    "queue_prefix",
    "prefetch",
    "plaid_connections",
    "db_pool_size",
    "publish_timeout",
    "http_timeout",
    "retry_base_ms",
    "retry_factor",
    "retry_budget",
    "item_lease_s",
    "atomic_pending_reconcile_s",
    "max_body_bytes",
    "webhook_max_age_s",
    "webhook_future_skew_s",
    "api_rate_per_s",
    "max_in_flight",
    "log_level",
)
# Of a secret, the start-up line says only whether it is set: the settings table says which are.
SECRETS = {var.env: var.field for var in settings_mod.ENV.values() if var.secret and "URL" not in var.env}
DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "amqp": 5672, "amqps": 5671}


def without_credentials(url: str) -> str:
    """``scheme://host:port/path``: no user, no password, no query (libpq takes passwords there too)."""
    parts = urlsplit(url)
    port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}{parts.path}"


def effective_config(s: Settings) -> dict[str, Any]:
    """What a process runs with, for its start-up line: where Plaid, Atomic, Postgres and RabbitMQ
    are, the names and the limits. Of a secret, only whether it is set or the sandbox default."""
    defaults = settings_mod.load({})
    secrets: dict[str, list[str]] = {"set": [], "default": []}
    for var, field in SECRETS.items():
        secrets["default" if getattr(s, field) == getattr(defaults, field) else "set"].append(var)
    return {
        "plaid_env": s.plaid_env,
        "plaid_host": without_credentials(s.plaid_host),
        "atomic_host": without_credentials(s.atomic_base_url),
        "database": without_credentials(s.database_url),
        "broker": ",".join(without_credentials(url) for url in s.amqp_urls),
        **{name: getattr(s, name) for name in SHOWN},
        "admin": f"{s.admin_host}:{s.admin_port}",
        "active_token_key": s.active_key_id,
        "secrets_set": secrets["set"],
        "secrets_default": secrets["default"],
    }


def _log_uncaught(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    structlog.get_logger("paw").critical("process.uncaught_exception", exc_info=(exc_type, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    structlog.get_logger("paw").critical(
        "thread.uncaught_exception",
        thread=args.thread.name if args.thread is not None else None,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def _log_unraisable(unraisable: Any) -> None:  # sys.UnraisableHookArgs
    structlog.get_logger("paw").warning(
        "process.unraisable_exception",
        message=unraisable.err_msg or "Exception ignored in",
        object=repr(unraisable.object)[:200],
        exc_info=(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback),
    )
