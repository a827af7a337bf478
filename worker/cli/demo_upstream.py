"""The demo's upstream app: what an integrator writes to learn every outcome without polling.

Two ways, both shown: a queue of its own bound to ``item.state.#`` on the events exchange, printing
each outcome event as it arrives; and a callback endpoint that verifies each signed callback with
the ``standardwebhooks`` package (the specification's reference library, not paw's signing code).
Both deduplicate on ``event_id``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aiohttp import web
from rich.console import Console
from rich.markup import escape
from standardwebhooks import Webhook, WebhookVerificationError

from worker.callbacks.targets import AMQP_REF, Callback
from worker.items.model import api_key_fingerprint
from worker.settings import Settings

CALLBACK_PATH = "/paw/callbacks"


@dataclasses.dataclass
class UpstreamApp:
    console: Console
    secret: str = dataclasses.field(
        default_factory=lambda: "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    )
    queued: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # event id -> event
    called_back: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    bad_signatures: int = 0
    arrived: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)  # set on each new event

    def callbacks_for(self, s: Settings, url: str) -> Settings:
        """``s`` with this app's callback URL for Items submitted with the first API key or over AMQP
        (the endpoint is on loopback: private targets allowed, as only a demo may)."""
        targets = (
            Callback(api_key_fingerprint(s.api_keys[0]), url, self.secret),
            Callback(AMQP_REF, url, self.secret),
        )
        return dataclasses.replace(s, callbacks=targets, callback_allow_private=True)

    def on_event(self, event: dict[str, Any], how: str) -> None:
        seen = self.queued if how == "queue" else self.called_back
        if event["event_id"] in seen:
            return  # a duplicate (at least once): the same event_id, already handled
        seen[event["event_id"]] = event
        self.arrived.set()
        if how == "queue":
            came = f"{event['from_state']} → " if event["from_state"] else ""
            code = f" ({event['error_code']})" if event["error_code"] else ""
            self.console.print(
                f"  [dim]upstream app, queue:[/dim] Item {event['item_id'][:8]} #{event['sequence']} "
                f"{escape(came)}[bold]{escape(event['to_state'])}[/bold]{escape(code)}",
                highlight=False,
            )

    def events_of(self, item_id: uuid.UUID, how: str) -> list[dict[str, Any]]:
        seen = self.queued if how == "queue" else self.called_back
        return sorted((e for e in seen.values() if e["item_id"] == str(item_id)), key=lambda e: e["sequence"])

    async def _callback(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            payload = Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.bad_signatures += 1
            return web.Response(status=400, text="bad signature")
        self.on_event(payload["data"], "callback")
        return web.Response(status=204)

    @contextlib.asynccontextmanager
    async def callback_endpoint(self, port: int) -> AsyncIterator[str]:
        """Serves the callback endpoint on 127.0.0.1:``port``; yields its URL."""
        app = web.Application()
        app.router.add_post(CALLBACK_PATH, self._callback)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield f"http://127.0.0.1:{port}{CALLBACK_PATH}"
        finally:
            await runner.cleanup()

    @contextlib.asynccontextmanager
    async def subscribed(
        self, connection: AbstractRobustConnection, exchange_name: str
    ) -> AsyncIterator[None]:
        """A queue of the app's own (exclusive: gone with the connection), bound to every outcome event."""
        channel = await connection.channel()
        try:
            exchange = await channel.get_exchange(exchange_name, ensure=False)
            queue = await channel.declare_queue(exclusive=True)
            await queue.bind(exchange, "item.state.#")

            async def consume(message: AbstractIncomingMessage) -> None:
                async with message.process():
                    self.on_event(json.loads(message.body), "queue")

            await queue.consume(consume)
            yield
        finally:
            with contextlib.suppress(aio_pika.exceptions.AMQPError, RuntimeError):
                await channel.close()
