"""structlog set-up: JSON off a terminal, console on one, and redaction as a processor."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from structlog.typing import EventDict, WrappedLogger

from worker.redact import redact, redact_text


def redact_processor(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Masks tokens and secrets in every field, and in rendered exceptions."""
    out: dict[str, Any] = redact(event_dict)
    return out


def _redact_rendered(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    exc = event_dict.get("exception")
    if isinstance(exc, str):
        event_dict["exception"] = redact_text(exc)
    return event_dict


def configure(fmt: str = "auto", level: str = "info") -> None:
    json_out = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,  # render tracebacks to text first, so they are redacted too
        redact_processor,
        _redact_rendered,
    ]
    renderer: list[Any] = (
        [structlog.processors.JSONRenderer()] if json_out else [structlog.dev.ConsoleRenderer()]
    )
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
