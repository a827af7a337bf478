"""Limits on what comes from outside: rate per API key (429), requests in flight (503), header and
body sizes (400/413), each answered with a clear body.

Every server here is started by the production builder (:func:`worker.http_server.start_http`,
through :func:`webhooks.server.start_receiver` and :func:`worker.admin.start_admin` where it can), so
these tests fail when the limits do not reach aiohttp's parser."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import warnings
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from webhooks.app import Receiver, create_app
from webhooks.limits import InFlight, TokenBuckets
from webhooks.server import DRAIN_S, start_receiver
from worker.admin import start_admin
from worker.http_server import HTTP_LIMITS, start_http
from worker.services import Services
from worker.settings import Settings


@pytest.fixture
async def limited(settings: Settings, services: Services) -> AsyncIterator[tuple[str, Receiver]]:
    rx = Receiver(
        settings=dataclasses.replace(settings, api_keys=("key-number-one-1234", "key-number-two-1234")),
        publisher=services.publisher,
        store=services.store,
        keys=None,
        api_rate=TokenBuckets(rate=1.0, burst=5.0),
        in_flight=InFlight(2),
    )
    runner, url = await start_http(create_app(rx), "127.0.0.1", 0, shutdown_timeout=DRAIN_S)
    try:
        yield url, rx
    finally:
        await runner.cleanup()


async def test_rate_per_api_key_answers_429_with_retry_after(limited: tuple[str, Receiver]) -> None:
    url, _ = limited
    async with aiohttp.ClientSession() as http:

        async def get(key: str) -> tuple[int, dict[str, str], dict[str, object]]:
            async with http.get(
                f"{url}/v1/items/00000000-0000-0000-0000-000000000000",
                headers={"Authorization": f"Bearer {key}"},
            ) as r:
                return r.status, dict(r.headers), await r.json()

        first = [await get("key-number-one-1234") for _ in range(5)]
        assert [s for s, _, _ in first] == [404] * 5
        status, headers, body = await get("key-number-one-1234")
        assert status == 429 and int(headers["Retry-After"]) >= 1
        assert body["error"] == "rate_limited" and "API key" in str(body["detail"])
        assert (await get("key-number-two-1234"))[0] == 404  # the other key has its own budget


async def test_requests_in_flight_beyond_the_bound_get_503(limited: tuple[str, Receiver]) -> None:
    url, rx = limited
    host, port = url.removeprefix("http://").split(":")
    held = []
    for _ in range(2):  # two uploads that never finish hold both slots
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /webhooks/atomic HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        held.append((reader, writer))

    async def both_held() -> bool:
        return rx.in_flight is not None and rx.in_flight.now == 2

    from tests.helpers import eventually

    await eventually(both_held)
    async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as r:
        assert r.status == 503 and (await r.json())["error"] == "overloaded"
    for _, writer in held:
        writer.close()
    await eventually(lambda: _free(rx))
    async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as r:
        assert r.status == 200


async def _free(rx: Receiver) -> bool:
    return rx.in_flight is not None and rx.in_flight.now == 0


# -- the request head: line, header size, header count (aiohttp's parser, before any handler) ----


FALLBACK = "Failed to create request handler with custom kwargs"


class AiohttpRecords(logging.Handler):
    """Records of aiohttp's own loggers, attached to them directly (whatever propagates or not)."""

    NAMES = ("aiohttp.server", "aiohttp.web", "aiohttp.access", "aiohttp.internal")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def fallbacks(self) -> list[str]:
        """aiohttp's "Failed to create request handler with custom kwargs …" (one per connection)."""
        return [r.getMessage() for r in self.records if FALLBACK in r.getMessage()]

    @classmethod
    @contextlib.contextmanager
    def capture(cls) -> Iterator[AiohttpRecords]:
        handler = cls()
        loggers = [logging.getLogger(name) for name in cls.NAMES]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.addHandler(handler)
            lg.setLevel(logging.DEBUG)
        try:
            yield handler
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.removeHandler(handler)
                lg.setLevel(level)


@pytest.fixture
def aiohttp_records() -> Iterator[AiohttpRecords]:
    """Fails the test if aiohttp fell back to its default limits on any connection, or warned."""
    with AiohttpRecords.capture() as records, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield records
    assert records.fallbacks() == [], "aiohttp dropped the limits"
    assert [str(w.message) for w in caught] == []


@pytest.fixture(params=["receiver", "admin"])
async def served(
    request: pytest.FixtureRequest, aiohttp_records: AiohttpRecords, services: Services
) -> AsyncIterator[str]:
    """The receiver as ``paw receiver`` starts it, or an admin server as ``paw worker`` does."""
    if request.param == "receiver":
        runner, url = await start_receiver(services, "127.0.0.1", 0)
    else:
        runner = await start_admin({}, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield url
    finally:
        await runner.cleanup()


def head(count: int, *, path: str = "/healthz", big: int = 0) -> bytes:
    """A GET with exactly ``count`` headers; with ``big``, one of them has a ``big``-byte value."""
    lines = [f"GET {path} HTTP/1.1", "Host: paw", "Connection: close"]
    if big:
        lines.append("X-Big: " + "a" * big)
    lines += [f"X-Filler-{i}: {i}" for i in range(count - len(lines) + 1)]
    assert len(lines) - 1 == count
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def status_of(url: str, request: bytes) -> int:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return int(status_line.split()[1])


def test_the_limits_are_the_readmes() -> None:
    assert (HTTP_LIMITS.max_line_size, HTTP_LIMITS.max_field_size) == (8190, 8190)  # 8 KiB with CRLF
    assert HTTP_LIMITS.max_headers == 100


async def test_100_headers_are_served(served: str) -> None:
    assert await status_of(served, head(100)) == 200


async def test_101_headers_get_400(served: str) -> None:
    assert await status_of(served, head(101)) == 400


async def test_a_header_of_8_kib_and_more_gets_400(served: str) -> None:
    assert await status_of(served, head(3, big=4 * 1024)) == 200
    assert await status_of(served, head(3, big=8 * 1024)) == 400
    assert await status_of(served, head(3, big=64 * 1024)) == 400


async def test_a_request_line_over_8_kib_gets_400(served: str) -> None:
    assert await status_of(served, head(2, path="/healthz?q=" + "a" * 8300)) == 400


async def test_oversized_header_from_a_client_gets_400(limited: tuple[str, Receiver]) -> None:
    url, _ = limited
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}/healthz", headers={"X-Big": "a" * 9000}) as r,
    ):
        assert r.status == 400


async def test_no_aiohttp_warning_over_many_connections(served: str, aiohttp_records: AiohttpRecords) -> None:
    """aiohttp's fallback warns once per connection: 20 connections, good and bad, and no warning.
    (A malformed request is logged by aiohttp too, as an error; that line is not the fallback.)"""
    statuses = await asyncio.gather(*(status_of(served, head(101 if i % 2 else 5)) for i in range(20)))
    assert sorted(set(statuses)) == [200, 400]
    assert len(aiohttp_records.records) >= 10  # the capture sees aiohttp's records
    assert aiohttp_records.fallbacks() == []
