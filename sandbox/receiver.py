"""A tiny webhook receiver for tests, benchmarks and the demo: every POST lands in a queue."""

from __future__ import annotations

import asyncio
import dataclasses

from aiohttp import web

from sandbox.app import serve_app


@dataclasses.dataclass(frozen=True)
class ReceivedWebhook:
    path: str
    headers: dict[str, str]  # keys lower-cased
    body: bytes


class WebhookReceiver:
    """Answers every POST with ``status`` (200 unless changed) and queues what it got."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: asyncio.Queue[ReceivedWebhook] = asyncio.Queue()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        await self.received.put(ReceivedWebhook(request.path, headers, await request.read()))
        return web.Response(status=self.status)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Starts listening; returns the base URL (any path under it is accepted)."""
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner, self.base_url = await serve_app(app, host, port)
        return self.base_url

    async def next(self, wait_s: float = 5.0) -> ReceivedWebhook:
        """The next webhook received; ``TimeoutError`` if none arrives within ``wait_s``."""
        async with asyncio.timeout(wait_s):
            return await self.received.get()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
