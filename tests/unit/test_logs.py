"""One log stream: paw's lines and the standard library's (aiohttp, aiormq, asyncpg, ...) through the
same processors, as configured by ``paw`` itself (``logs.configure``). No services."""

from __future__ import annotations

import datetime
import io
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import structlog
from aiohttp.http_exceptions import BadHttpMessage, InvalidURLError, LineTooLong

from worker import logs, version
from worker.settings import load

TOKEN = "access-sandbox-12345678-1234-1234-1234-123456789abc"
FIELDS = {"event", "level", "severity", "service", "version", "logger", "timestamp"}


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    yield out
    logs.reset()


def lines(out: io.StringIO) -> list[dict[str, object]]:
    text = out.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]  # every line is JSON, or this raises


def test_library_records_are_json_lines_with_paws_fields_and_redaction(stream: io.StringIO) -> None:
    logs.configure("json", "debug", service="worker", stream=stream)
    structlog.get_logger("worker.test").debug("paw.debug", item_id="i-1")
    logging.getLogger("aiormq.connection").debug("Sending frame with body %s", TOKEN)  # below the floor
    logging.getLogger("aio_pika.robust_connection").warning("Connection attempt failed: %s", TOKEN)
    try:
        raise ValueError(f"exchange failed for {TOKEN}")
    except ValueError:
        logging.getLogger("asyncpg.pool").exception("Task exception was never retrieved")
    paw, pika, pg = lines(stream)
    for line in (paw, pika, pg):
        assert FIELDS <= line.keys()
        assert line["service"] == "worker" and line["version"] == version() != "unknown (not installed)"
    assert (paw["event"], paw["level"], paw["severity"], paw["logger"]) == (
        "paw.debug",
        "debug",
        "DEBUG",
        "worker.test",
    )
    assert (pika["level"], pika["severity"], pika["logger"]) == (
        "warning",
        "WARNING",
        "aio_pika.robust_connection",
    )
    assert pika["event"] == "Connection attempt failed: access-sandbox-[redacted]"
    assert (pg["level"], pg["severity"]) == ("error", "ERROR")
    assert "Traceback" in str(pg["exception"]) and "ValueError" in str(pg["exception"])
    assert "12345678" not in stream.getvalue()


def test_library_lines_follow_a_level_above_info(stream: io.StringIO) -> None:
    logs.configure("json", "warning", stream=stream)
    structlog.get_logger("worker.test").info("paw.info")
    logging.getLogger("aio_pika").info("Deleting queue")
    logging.getLogger("aio_pika").warning("Channel not opened")
    assert [line["event"] for line in lines(stream)] == ["Channel not opened"]


def test_a_malformed_request_is_one_http_rejected_line_without_the_quoted_bytes(stream: io.StringIO) -> None:
    logs.configure("json", "info", service="receiver", stream=stream)
    secret = "Bearer sk-live-" + "s" * 120
    server = logging.getLogger("aiohttp.server")
    for error in (
        LineTooLong(secret.encode()[:100] + b"...", 8190),
        BadHttpMessage(f"Invalid header: {secret!r}"),
        InvalidURLError(f"Invalid URL: /?{secret}"),
    ):
        try:
            raise error
        except BadHttpMessage as e:  # as aiohttp's RequestHandler.handle_error logs it
            server.exception("Error handling request from %s", "203.0.113.9", exc_info=e)
    try:
        raise RuntimeError("handler bug")
    except RuntimeError as e:  # not a malformed request: the traceback stays, in its field
        server.exception("Error handling request from %s", "203.0.113.9", exc_info=e)
    too_long, invalid, url, bug = lines(stream)
    for line, reason in (
        (too_long, "line_too_long"),
        (invalid, "bad_http_message"),
        (url, "invalid_url_error"),
    ):
        assert line["event"] == "http.rejected"
        assert (line["status"], line["reason"], line["level"], line["severity"]) == (
            400,
            reason,
            "warning",
            "WARNING",
        )
        assert (
            "exception" not in line and line["logger"] == "aiohttp.server" and line["service"] == "receiver"
        )
    assert bug["event"] == "Error handling request from 203.0.113.9" and "RuntimeError" in str(
        bug["exception"]
    )
    assert "sk-live" not in stream.getvalue() and "Bearer" not in stream.getvalue()


@pytest.mark.parametrize(
    ("environ", "colored"),
    [
        ({}, False),
        ({"FORCE_COLOR": "1"}, True),
        ({"NO_COLOR": "1", "FORCE_COLOR": "1"}, False),
        ({"NO_COLOR": ""}, False),
    ],
)
def test_the_console_renderer_honours_no_color_and_force_color(
    stream: io.StringIO, environ: dict[str, str], colored: bool
) -> None:
    logs.configure("console", "info", service="demo", environ=environ, stream=stream)
    structlog.get_logger("worker.test").warning("paw.console", item_id="i-1")
    logging.getLogger("aiohttp.access").warning("GET / 200")
    text = stream.getvalue()
    assert ("\x1b[" in text) is colored
    assert len(text.splitlines()) == 2 and "paw.console" in text and "GET / 200" in text
    assert text.count("demo") == 2 and text.count(version()) == 2  # service and version


UNCAUGHT = """
import gc, warnings
from worker import logs

logs.configure("json", "info", service="cli")
warnings.warn("old")


class Bad:
    def __del__(self):
        raise RuntimeError("in del")


Bad()
gc.collect()
raise ValueError("boom")
"""


def test_an_uncaught_exception_a_warning_and_an_unraisable_are_json_lines_too() -> None:
    proc = subprocess.run(  # noqa: S603 - the test's own interpreter
        [sys.executable, "-c", UNCAUGHT], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 1
    warned, unraisable, crashed = (json.loads(line) for line in proc.stderr.splitlines())
    assert (warned["logger"], warned["level"]) == ("py.warnings", "warning") and "old" in str(warned["event"])
    assert unraisable["event"] == "process.unraisable_exception"
    assert "RuntimeError: in del" in str(unraisable["exception"])
    assert (crashed["event"], crashed["severity"]) == ("process.uncaught_exception", "CRITICAL")
    assert "ValueError: boom" in str(crashed["exception"])


def test_the_start_up_configuration_says_where_everything_is_and_no_secret(stream: io.StringIO) -> None:
    s = load(
        {
            "DATABASE_URL": "postgresql://paw:pg-pass-1@db.internal:6432/paw?sslpassword=ssl-pass-2",
            "AMQP_URL": "amqps://paw:amqp-pass-3@mq.internal/paw-vhost",
            "PLAID_SECRET": "plaid-secret-4",
            "PAW_API_KEYS": "api-key-5-0123456789",
            "PAW_EXCHANGE": "paw.prod.events",
        }
    )
    logs.configure("json", "info", service="worker", stream=stream)
    structlog.get_logger("worker.runner").info("worker.started", config=logs.effective_config(s))
    (line,) = lines(stream)
    config = line["config"]
    assert isinstance(config, dict)
    assert config["plaid_env"] == "sandbox" and config["plaid_host"] == "https://sandbox.plaid.com"
    assert config["database"] == "postgresql://db.internal:6432/paw"
    assert config["broker"] == "amqps://mq.internal:5671/paw-vhost"
    assert (config["exchange"], config["queue_prefix"], config["prefetch"]) == ("paw.prod.events", "paw", 256)
    assert config["active_token_key"] == "dev1"
    assert config["secrets_set"] == ["PLAID_SECRET", "PAW_API_KEYS"]
    assert set(config["secrets_default"]) == set(logs.SECRETS) - {"PLAID_SECRET", "PAW_API_KEYS"}
    text = stream.getvalue()
    for secret in (
        "pg-pass-1",
        "ssl-pass-2",
        "amqp-pass-3",
        "plaid-secret-4",
        "api-key-5",
        "paw-sandbox-secret",
    ):
        assert secret not in text
    assert "[redacted]" not in text  # nothing secret-shaped was in it to begin with


def test_a_value_orjson_does_not_write_still_makes_a_json_line(stream: io.StringIO) -> None:
    """Log lines are written by orjson; what it refuses (an integer beyond 64 bits) falls back to
    json.dumps, and what neither knows is its repr: no line is lost to its encoder."""

    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    logs.configure("json", "info", service="worker", stream=stream)
    log = structlog.get_logger("worker.test")
    log.info("big", n=2**70, keys={1: "one"})
    log.info("opaque", thing=Opaque(), ratio=float("nan"))
    big, opaque = lines(stream)
    assert (big["n"], big["keys"]) == (2**70, {"1": "one"})
    assert (opaque["thing"], opaque["ratio"]) == ("<opaque>", None)


@pytest.mark.parametrize(
    "ns",
    [
        1_796_621_510_484_595_123,  # a fraction
        1_796_621_510_000_000_000,  # a whole second: no fraction, as datetime.isoformat() writes it
        1_796_621_510_000_001_999,  # one microsecond (nanoseconds below it dropped)
        1_796_621_511_999_999_999,  # the next second, its last microsecond
        951_782_400_000_500_000,  # 2000-02-29
    ],
)
def test_the_timestamp_is_structlogs_iso_utc(monkeypatch: pytest.MonkeyPatch, ns: int) -> None:
    stamper = logs.UtcStamper()
    stamper(None, "info", {})  # a second formatted before, so the one below must replace it
    monkeypatch.setattr(time, "time_ns", lambda: ns)
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    expected = epoch + datetime.timedelta(microseconds=ns // 1000)
    assert stamper(None, "info", {}) == {"timestamp": expected.isoformat().replace("+00:00", "Z")}
