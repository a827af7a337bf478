"""Limits on what comes from outside: rate per API key (429), requests in flight (503), header and
body sizes (400/413), each answered with a clear body."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from webhooks.app import Receiver, create_app
from webhooks.limits import InFlight, TokenBuckets
from webhooks.server import HTTP_LIMITS
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
    runner = web.AppRunner(create_app(rx), handler_args=HTTP_LIMITS)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", rx
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


async def test_oversized_header_gets_400(limited: tuple[str, Receiver]) -> None:
    url, _ = limited
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}/healthz", headers={"X-Big": "a" * 9000}) as r,
    ):
        assert r.status == 400
        assert "8190" in await r.text() or "too long" in (await r.text()).lower()
