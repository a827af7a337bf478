"""The worker's Plaid transport (aiohttp) sends what plaid-python itself sends, over real HTTP, and
turns every way a call can fail into the :class:`UpstreamError` the rules classify.

A small aiohttp server on loopback stands in for the far end where the emulator cannot misbehave
the way a proxy or a dropped connection does (a non-JSON answer, an answer that never comes)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import plaid
import pytest
from aiohttp import web
from plaid.api import plaid_api
from plaid.model.item_public_token_exchange_request import ItemPublicTokenExchangeRequest

from worker.errors import UpstreamError
from worker.items.rules import Kind, classify
from worker.plaid_api import PLAID_VERSION, PlaidClient

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ANSWER = {"access_token": "access-sandbox-x", "item_id": "item-1", "request_id": "req-1"}


async def serve(handler: Handler) -> tuple[str, web.AppRunner]:
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return f"http://127.0.0.1:{port}", runner


async def test_requests_are_the_ones_plaid_python_sends() -> None:
    seen: list[tuple[str, dict[str, str], Any]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.path, dict(request.headers), await request.json()))
        return web.json_response(ANSWER)

    host, runner = await serve(record)
    try:
        client = PlaidClient(host=host, client_id="cid", secret="sec", connections=4, timeout=5)
        try:
            exchange = await client.exchange_public_token("public-sandbox-abc")
        finally:
            await client.close()

        def sdk_call() -> None:
            config = plaid.Configuration(
                host=host, api_key={"clientId": "cid", "secret": "sec", "plaidVersion": PLAID_VERSION}
            )
            with plaid.ApiClient(config) as api_client:
                plaid_api.PlaidApi(api_client).item_public_token_exchange(
                    ItemPublicTokenExchangeRequest(public_token="public-sandbox-abc")
                )

        await asyncio.to_thread(sdk_call)
    finally:
        await runner.cleanup()
    assert (exchange.access_token, exchange.item_id, exchange.request_id) == (
        "access-sandbox-x",
        "item-1",
        "req-1",
    )
    ours, sdk = seen
    assert ours[0] == sdk[0] == "/item/public_token/exchange"
    assert ours[2] == sdk[2] == {"public_token": "public-sandbox-abc"}
    wanted = ("PLAID-CLIENT-ID", "PLAID-SECRET", "Plaid-Version", "User-Agent", "Content-Type")
    assert {h: ours[1].get(h) for h in wanted} == {h: sdk[1].get(h) for h in wanted}
    assert ours[1]["PLAID-SECRET"] == "sec" and ours[1]["Plaid-Version"] == PLAID_VERSION


async def test_a_cookie_plaid_sets_is_not_sent_back_as_plaid_python_sends_none() -> None:
    cookies: list[str | None] = []

    async def sticky(request: web.Request) -> web.Response:  # as a load balancer pins a client
        cookies.append(request.headers.get("Cookie"))
        response = web.json_response(ANSWER)
        response.set_cookie("AWSALB", "node-7")
        return response

    host, runner = await serve(sticky)
    host = host.replace("127.0.0.1", "localhost")  # a cookie jar keeps no cookie of a bare IP address
    try:
        client = PlaidClient(host=host, client_id="cid", secret="sec", connections=4, timeout=5)
        try:
            for _ in range(2):
                await client.exchange_public_token("public-sandbox-abc")
        finally:
            await client.close()
    finally:
        await runner.cleanup()
    assert cookies == [None, None]


async def failure(handler: Handler | None, timeout: float = 5) -> UpstreamError:
    """What the client raises for one call against ``handler`` (None: nothing listening)."""
    runner = None
    if handler is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            host = f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: refused
    else:
        host, runner = await serve(handler)
    client = PlaidClient(host=host, client_id="cid", secret="sec", connections=4, timeout=timeout)
    try:
        with pytest.raises(UpstreamError) as caught:
            await client.exchange_public_token("public-sandbox-abc")
        return caught.value
    finally:
        await client.close()
        if runner is not None:
            await runner.cleanup()


async def test_plaid_errors_keep_code_type_request_id_and_retry_after() -> None:
    async def refuse(_: web.Request) -> web.Response:
        body = {"error_code": "INVALID_PUBLIC_TOKEN", "error_type": "INVALID_INPUT", "request_id": "r9"}
        return web.json_response(body, status=400)

    async def limit(_: web.Request) -> web.Response:
        # Plaid documents no Retry-After on its API's 429s (PLAID_FACTS.md: that is its webhook
        # sender's); a proxy in front of it may send one, and paw honours it if present.
        body = {"error_code": "RATE_LIMIT_EXCEEDED", "error_type": "RATE_LIMIT_EXCEEDED", "request_id": "r8"}
        return web.json_response(body, status=429, headers={"Retry-After": "7"})

    async def plaid_limit(_: web.Request) -> web.Response:  # as Plaid answers: the type, no header
        body = {"error_code": "AUTH_LIMIT", "error_type": "RATE_LIMIT_EXCEEDED", "request_id": "r7"}
        return web.json_response(body, status=429)

    refused = await failure(refuse)
    assert (refused.status, refused.error_code, refused.error_type, refused.request_id) == (
        400,
        "INVALID_PUBLIC_TOKEN",
        "INVALID_INPUT",
        "r9",
    )
    assert classify(refused) is Kind.PERMANENT and "public-sandbox-abc" not in str(refused)
    limited = await failure(limit)
    assert (limited.error_code, limited.retry_after, classify(limited)) == (
        "RATE_LIMIT_EXCEEDED",
        7.0,
        Kind.TRANSIENT,
    )
    plaid_limited = await failure(plaid_limit)
    assert (plaid_limited.error_code, plaid_limited.retry_after, classify(plaid_limited)) == (
        "AUTH_LIMIT",
        None,
        Kind.TRANSIENT,  # by its type: the code alone is not one paw lists
    )


async def test_no_answer_a_proxy_page_or_garbage_is_transient() -> None:
    async def proxy_page(_: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>Bad Gateway</html>", content_type="text/html")

    async def garbage(_: web.Request) -> web.Response:
        return web.Response(status=200, text="{not json", content_type="application/json")

    async def no_request_id(_: web.Request) -> web.Response:
        return web.Response(status=200, text=json.dumps([1, 2]), content_type="application/json")

    async def too_slow(_: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response(ANSWER)

    refused = await failure(None)
    assert (refused.error_code, refused.status) == ("NETWORK_ERROR", None)
    page = await failure(proxy_page)
    assert (page.error_code, page.status) == ("HTTP_502", 502)
    assert (await failure(garbage)).error_code == "BAD_RESPONSE"
    assert (await failure(no_request_id)).error_code == "BAD_RESPONSE"
    slow = await failure(too_slow, timeout=0.2)
    assert slow.error_code == "NETWORK_ERROR"
    for err in (refused, page, slow):
        assert classify(err) is Kind.TRANSIENT
