"""The one HTTP server builder: it serves with paw's limits, and refuses to start when aiohttp would
drop them (the limits themselves are exercised over sockets in tests/integration/test_limits.py)."""

from __future__ import annotations

import dataclasses
import logging

import aiohttp
import pytest
from aiohttp import web

from worker.http_server import HTTP_LIMITS, HttpLimits, HttpLimitsNotApplied, _check_applied, start_http


async def hello(_: web.Request) -> web.Response:
    return web.Response(text="hello")


def hello_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", hello)
    return app


async def test_serves_on_the_port_it_reports() -> None:
    runner, url = await start_http(hello_app(), "127.0.0.1", 0, shutdown_timeout=1)
    try:
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        async with aiohttp.ClientSession() as http, http.get(url) as r:
            assert (r.status, await r.text()) == (200, "hello")
    finally:
        await runner.cleanup()


async def test_every_connection_handler_gets_the_limits_and_no_access_log() -> None:
    limits = HttpLimits(max_line_size=1000, max_field_size=2000, max_headers=7)
    runner, _ = await start_http(hello_app(), "127.0.0.1", 0, shutdown_timeout=1, limits=limits)
    try:
        assert runner.server is not None
        handler = runner.server()
        assert (handler.max_line_size, handler.max_field_size, handler.max_headers) == (1000, 2000, 7)
        assert handler.access_logger is None
    finally:
        await runner.cleanup()


async def test_the_start_up_check_catches_limits_given_as_handler_args_to_the_runner(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The mistake this module exists to prevent: ``handler_args=`` is ``web.Application``'s keyword.
    Given to the runner, aiohttp falls back to its defaults on every connection."""
    runner = web.AppRunner(hello_app(), access_log=None, handler_args=dataclasses.asdict(HTTP_LIMITS))
    await runner.setup()
    try:
        with caplog.at_level(logging.WARNING, "aiohttp.server"), pytest.raises(HttpLimitsNotApplied):
            _check_applied(runner, HTTP_LIMITS)
        assert "Failed to create request handler with custom kwargs" in caplog.text
    finally:
        await runner.cleanup()


async def test_the_start_up_check_catches_an_access_log_left_on() -> None:
    runner = web.AppRunner(hello_app(), **dataclasses.asdict(HTTP_LIMITS))
    await runner.setup()
    try:
        with pytest.raises(HttpLimitsNotApplied, match="access log on"):
            _check_applied(runner, HTTP_LIMITS)
    finally:
        await runner.cleanup()
