"""A connection to RabbitMQ, and a publisher that only returns once the broker confirmed."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractExchange,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from worker.bus.topology import Topology
from worker.errors import PublishFailed

log = structlog.get_logger(__name__)


async def connect(url: str, name: str) -> AbstractRobustConnection:
    conn = await aio_pika.connect_robust(url, client_properties={"connection_name": name})
    return conn


class Publisher:
    """Publishes persistent, mandatory messages and waits for the confirm, within a bound.

    One robust channel, opened on first use and kept: aio-pika reopens it by itself when the
    connection comes back, so it is never replaced (a replacement would leak a channel per outage).
    While the connection is down a publish fails at once instead of waiting for the reconnect; a
    publish caught by the drop itself is bounded by ``timeout``. Either way the caller gets
    :class:`PublishFailed` and nothing was acknowledged.
    """

    def __init__(self, connection: AbstractRobustConnection, topo: Topology, *, timeout: float = 5.0) -> None:
        self.connection = connection
        self.topo = topo
        self.timeout = timeout
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._lock = asyncio.Lock()

    async def _ready(self) -> tuple[AbstractRobustChannel, AbstractExchange]:
        if not self.connection.connected.is_set():
            raise PublishFailed("broker unavailable: not connected")
        if self._channel is None or self._exchange is None:
            async with self._lock:
                if self._channel is None or self._exchange is None:
                    channel = self.connection.channel(publisher_confirms=True, on_return_raises=True)
                    await channel.initialize()
                    self._exchange = await channel.get_exchange(self.topo.exchange, ensure=False)
                    self._channel = channel
        if self._channel.is_closed:
            await self._channel.ready()  # reopened by aio-pika after a reconnect or a channel error
        return self._channel, self._exchange

    @property
    def is_ready(self) -> bool:
        """Connected, and the channel is open (or not opened yet: nothing needed it so far)."""
        if self.connection.is_closed or not self.connection.connected.is_set():
            return False
        return self._channel is None or not self._channel.is_closed

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        expiration_ms: int | None = None,
        to_queue: bool = False,
    ) -> None:
        """Publishes to the events exchange (or, with ``to_queue``, straight to the queue named
        ``routing_key``) and returns once confirmed. Raises :class:`PublishFailed` otherwise."""
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=dict(headers or {}),
            message_id=message_id,
            expiration=expiration_ms / 1000 if expiration_ms is not None else None,
        )
        try:
            async with asyncio.timeout(self.timeout):
                channel, events = await self._ready()
                exchange = channel.default_exchange if to_queue else events
                await exchange.publish(message, routing_key, mandatory=True)
        except TimeoutError:
            raise PublishFailed(f"no confirm for {routing_key} within {self.timeout}s") from None
        except aio_pika.exceptions.PublishError:
            raise PublishFailed(f"{routing_key} is unroutable") from None
        except aio_pika.exceptions.DeliveryError:
            raise PublishFailed(f"broker refused {routing_key}") from None
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as e:
            raise PublishFailed(f"broker unavailable: {type(e).__name__}") from None
