"""A connection to RabbitMQ, and a publisher that only returns once the broker confirmed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from worker.bus.failover import FailoverConnection, open_failover
from worker.bus.topology import Topology
from worker.bus.wire import Sender
from worker.errors import PublishFailed, Unroutable

log = structlog.get_logger(__name__)

NO_ROUTE = 312  # AMQP reply code of a mandatory message no queue is bound for


async def connect(urls: str | Sequence[str], name: str) -> FailoverConnection:
    """A robust connection to the first node of ``urls`` that answers, failing over to the others
    (:mod:`worker.bus.failover`); one URL is a cluster of one."""
    nodes = [urls] if isinstance(urls, str) else list(urls)
    return await open_failover(nodes, client_properties={"connection_name": name})


class Publisher:
    """Publishes persistent, mandatory messages and waits for the confirm, within a bound.

    One robust channel, opened on first use and kept: aio-pika reopens it by itself when the
    connection comes back, so an outage does not replace it (a replacement would leak a channel per
    outage). Only a channel the broker nacks on is replaced, and closed (:meth:`_renew`).

    A publish ends confirmed or in :class:`PublishFailed`, within ``timeout``, never in between.
    When the connection is lost under it (its node went away), the broker's confirm can no longer
    come; while the connection still has a node to try (:attr:`FailoverConnection.trying_nodes`), the
    publish waits for the reconnect and sends the message again, on whichever node answered. The
    first copy may have reached the queue before the loss: consumers deduplicate (the inbox, the
    public token, the outcome events' ``event_id``), as they do for any redelivery. A publish made
    while every node has failed in turn fails at once instead of waiting for the reconnect.
    """

    def __init__(self, connection: AbstractRobustConnection, topo: Topology, *, timeout: float = 5.0) -> None:
        self.connection = connection
        self.topo = topo
        self.timeout = timeout
        self._channel: AbstractRobustChannel | None = None
        self._lock = asyncio.Lock()
        self._sender = Sender()  # every publish on the channel, in delivery-tag order
        self.resent = 0  # publishes sent again after their connection was lost under them

    async def _ready(self) -> AbstractRobustChannel:
        conn = self.connection
        if isinstance(conn, FailoverConnection):
            if not conn.settled:  # down, or reopened with its channels not restored yet
                if not conn.trying_nodes:
                    raise PublishFailed("broker unavailable: not connected")
                await conn.reopened_after(conn.generation)  # bounded by the caller's timeout
        elif not conn.connected.is_set():
            raise PublishFailed("broker unavailable: not connected")
        channel = self._channel
        if channel is None:
            async with self._lock:
                if self._channel is None:
                    opened = self.connection.channel(publisher_confirms=True, on_return_raises=True)
                    await opened.initialize()
                    self._channel = opened
                channel = self._channel
        if channel.is_closed:
            await channel.ready()  # reopened by aio-pika after a reconnect or a channel error
        return channel

    def _lost_since(self, generation: int | None) -> bool:
        """The connection the publish went out on is gone, and there is another one to come (or
        already here): the publish is worth sending again."""
        conn = self.connection
        if not isinstance(conn, FailoverConnection) or not conn.trying_nodes:
            return False
        return conn.generation != generation or not conn.settled

    def _generation(self) -> int | None:
        conn = self.connection
        return conn.generation if isinstance(conn, FailoverConnection) else None

    @property
    def is_ready(self) -> bool:
        """Connected and the channel open (or not opened yet: nothing needed it so far); or failing
        over to a node not tried yet, where a publish waits for the reconnect."""
        conn = self.connection
        if conn.is_closed:
            return False
        if isinstance(conn, FailoverConnection) and not conn.settled:
            return conn.trying_nodes
        if not conn.connected.is_set():
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
        # Straight to aiormq's channel under aio-pika's robust one (worker/bus/wire.py), with the
        # properties aio-pika's Message would build: its Message and Exchange layers were a fifth of
        # a publish's CPU, aiormq's basic_publish a quarter of the rest.
        properties = aiormq.spec.Basic.Properties(
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT.value,
            headers=dict(headers or {}),
            message_id=message_id,
            expiration=str(expiration_ms) if expiration_ms is not None else None,
        )
        exchange = "" if to_queue else self.topo.exchange
        refusals = 0
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    generation = self._generation()
                    channel: AbstractRobustChannel | None = None
                    try:
                        channel = await self._ready()
                        underlay = await channel.get_underlay_channel()
                        confirm = await self._sender.send(
                            underlay, body, exchange=exchange, routing_key=routing_key, properties=properties
                        )
                        # Shielded: a publish this timeout gives up on leaves its confirm future to
                        # the broker's answer. Cancelled, the future would be done while aiormq
                        # still maps its message id to it, and a Basic.Return for it then raises
                        # InvalidStateError in the channel's reader (aiormq 7.2.4,
                        # Channel._on_return_frame): the reader dies, its frame queue fills, and
                        # the connection's reader blocks on it. The whole connection then stood
                        # still (no delivery, confirm or heartbeat read) until aiormq's
                        # three-heartbeat check reconnected, 183 s later; seen in bench runs at
                        # full load, where a burst of outcome events that nobody is bound for
                        # (returned) outlived the timeout.
                        await asyncio.shield(confirm)
                        return
                    except aiormq.exceptions.PublishError:
                        raise  # returned: unroutable, whatever the channel
                    except aiormq.exceptions.DeliveryError:
                        # Nacked: the broker did not take the message, so it is sent again, on a
                        # fresh channel. RabbitMQ 3.10 nacks every publish of a channel whose first
                        # one to a quorum queue met a leader that had just died; a new channel finds
                        # the new leader. Backing off, until the timeout.
                        refusals += 1
                        await self._renew(channel)
                        await asyncio.sleep(min(0.05 * 2**refusals, 1.0))
                        log.info("publish.resend", routing_key=routing_key, error="nack")
                        continue
                    except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as e:
                        if channel is not None and channel is not self._channel:
                            continue  # its channel was renewed under it (a nack): send it again
                        if generation is None or not self._lost_since(generation):
                            raise PublishFailed(f"broker unavailable: {type(e).__name__}") from None
                        assert isinstance(self.connection, FailoverConnection)
                        # sent again only on a connection opened since: each attempt needs a new one
                        await self.connection.reopened_after(generation)
                        self.resent += 1
                        log.info("publish.resend", routing_key=routing_key, error=type(e).__name__)
        except TimeoutError:
            if refusals:
                raise PublishFailed(f"broker refused {routing_key} ({refusals} times)") from None
            raise PublishFailed(f"no confirm for {routing_key} within {self.timeout}s") from None
        except aiormq.exceptions.PublishError as e:
            delivery = getattr(getattr(e, "message", None), "delivery", None)
            if getattr(delivery, "reply_code", None) == NO_ROUTE:
                raise Unroutable(f"{routing_key} is unroutable") from None
            why = getattr(delivery, "reply_text", "?")
            raise PublishFailed(f"{routing_key} was returned: {why}") from None

    async def _renew(self, stale: AbstractRobustChannel | None) -> None:
        """Closes ``stale`` and lets the next publish open a new channel; once per channel, however
        many publishes were nacked on it (the others find the new one)."""
        async with self._lock:
            if stale is None or self._channel is not stale:
                return
            self._channel = None
        with contextlib.suppress(aiormq.exceptions.AMQPError, ConnectionError, RuntimeError):
            await stale.close()
