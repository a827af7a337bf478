"""One robust connection to a RabbitMQ cluster: whichever of its nodes answers (AMQP_URL lists them).

aio-pika's :class:`~aio_pika.RobustConnection` reconnects to the one URL it was given. A
:class:`FailoverConnection` moves on to the next node of the list whenever its connection closes or an
attempt to open one fails, so the node that went away is left at once. Within one round of the list
the next node is tried straight away; after a round in which every node failed, aio-pika's own
``reconnect_interval`` (5 s) passes before the next. Everything else is aio-pika's: on whichever node
answers it reopens the channels and their consumers. The queues are quorum queues, replicated on
every node; a consumer on a surviving node stays attached while its queue elects a new leader, and
one whose connection died is re-attached (to the new leader) through the new connection.

Startup fails fast as before, but only once every node has refused: :func:`open_failover`. A
consumer's handler in flight when the connection goes runs to its end (:func:`run_to_completion`).

What a publisher needs to know (:mod:`worker.bus.publisher`): :attr:`FailoverConnection.trying_nodes`
says whether some node has not been tried since the connection was last open, i.e. whether a
publish that met the loss should wait for the reconnect and publish again, or give up at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from aio_pika import RobustChannel, RobustConnection, RobustQueue
from aio_pika.abc import AbstractIncomingMessage, ConsumerTag, TimeoutType
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from yarl import URL

log = structlog.get_logger(__name__)

# Within a round of the nodes, the pause before trying the next one.
NEXT_NODE_PAUSE_S = 0.05
# After a connection opened, the longest a loss waits before the next node is tried.
OPENED_PAUSE_S = 1.0
# Bound on opening a connection to one node (a host that drops packets would take minutes).
CONNECT_TIMEOUT_S = 10.0
# The AMQP heartbeat asked for unless AMQP_URL sets one (``?heartbeat=N``). aiormq's default, 60 s,
# declares a connection that reads nothing dead after (60 + 1) x 3 = 183 s: a worker stood still
# that long in bench runs (a dead channel reader, see worker.bus.publisher). 15 s: 48 s, while a
# heartbeat still goes out every 7 s, far above anything a busy event loop delays.
HEARTBEAT_S = 15


def with_heartbeat(url: URL) -> URL:
    """``url``, asking for :data:`HEARTBEAT_S` unless it names its own heartbeat."""
    return url if "heartbeat" in url.query else url.update_query(heartbeat=HEARTBEAT_S)


def node_of(url: URL) -> str:
    """``host:port`` of a node, for logs (no user, no password)."""
    return f"{url.host}:{url.port or (5671 if url.scheme == 'amqps' else 5672)}"


Callback = Callable[[AbstractIncomingMessage], Awaitable[Any]]

# Handlers whose channel closed under them, running to their end (a strong reference keeps them).
_finishing: set[asyncio.Task[Any]] = set()


def _finished(task: asyncio.Task[Any]) -> None:
    _finishing.discard(task)
    if not task.cancelled() and (error := task.exception()) is not None:
        # its ack could not go out on the closed channel: the broker redelivers the message
        log.info("consumer.finished_after_close", error=type(error).__name__)


def run_to_completion(callback: Callback) -> Callback:
    """``callback``, made to run to its end even when its channel closes under it.

    aiormq cancels every handler of a channel that closes, and a connection lost with its node
    closes them all: a handler cancelled between an upstream call that cannot be repeated (a public
    token's exchange) and the commit of its result loses that result, and the redelivered message
    then fails (``INVALID_PUBLIC_TOKEN``). Shielded, the handler finishes and commits; only its ack
    fails, and the broker redelivers the message, which the handlers deduplicate as any redelivery.
    A handler cancelled by the process itself (the worker's drain) is cancelled as before."""

    async def consume(message: AbstractIncomingMessage) -> Any:
        task = asyncio.ensure_future(callback(message))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                _finishing.add(task)
                task.add_done_callback(_finished)
            raise

    return consume


class FailoverQueue(RobustQueue):
    """A robust queue whose consumers run to their end (:func:`run_to_completion`)."""

    async def consume(self, callback: Callback, *args: Any, **kwargs: Any) -> ConsumerTag:
        return await super().consume(run_to_completion(callback), *args, **kwargs)


class FailoverChannel(RobustChannel):
    QUEUE_CLASS = FailoverQueue


class FailoverConnection(RobustConnection):
    """A :class:`~aio_pika.RobustConnection` that walks ``nodes`` on every reconnect.

    One object for the process's life, as with aio-pika's: channels and consumers made on it are
    restored on whichever node it reaches. ``url`` (aio-pika's) is always the node in use or being tried.
    """

    CHANNEL_CLASS = FailoverChannel

    def __init__(self, url: URL, nodes: Sequence[URL], **kwargs: Any) -> None:
        self.nodes = tuple(nodes) or (url,)
        self._interval: float = 5.0
        # Closes and failed attempts since the connection was last open: 0 while it is up.
        self.failures = 0
        super().__init__(url, **kwargs)
        self._index = self.nodes.index(url) if url in self.nodes else 0
        self._opened: asyncio.Future[None] = self.loop.create_future()  # resolved at the next open
        self._restoring = False  # open again, its channels not restored yet

    # aio-pika sleeps ``reconnect_interval`` after every attempt, and a loss meanwhile waits for it:
    # after a whole round of failures, the interval; within a round, a moment; after an attempt
    # that opened the connection, at most a second (a node lost right after is left quickly, and a
    # node that drops every connection it accepts is not hammered).
    @property
    def reconnect_interval(self) -> float:
        if self.failures % len(self.nodes):
            return NEXT_NODE_PAUSE_S
        if self.failures == 0:
            return min(self._interval, OPENED_PAUSE_S)
        return self._interval

    @reconnect_interval.setter
    def reconnect_interval(self, value: float) -> None:
        self._interval = value

    @property
    def trying_nodes(self) -> bool:
        """Up, or down with a node not yet tried since: a publish may wait for the reconnect.
        False once every node failed in turn (the cluster is away) or the connection was closed."""
        if self.is_closed or self.close_called:
            return False
        return self.failures <= len(self.nodes)

    @property
    def generation(self) -> int:
        """How many times the connection has opened: it changes with every reconnect."""
        return self.connection_attempt

    async def reopened_after(self, generation: int) -> None:
        """Returns once the connection has opened again since ``generation`` (its channels restored);
        at once if it already has. The caller bounds the wait."""
        while self.generation == generation:
            await asyncio.shield(self._opened)

    @property
    def transport_lost(self) -> bool:
        """The current AMQP connection is gone (possibly before aio-pika has noticed)."""
        transport = self.transport
        return transport is None or transport.connection.is_closed

    @property
    def settled(self) -> bool:
        """Open, with its channels restored: what was opened on it can be used. Between a reopen
        and the end of the restore, aio-pika says connected while the channels are still the dead
        connection's."""
        return self.connected.is_set() and not self._restoring and not self.transport_lost

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        if not (self.close_called or self.is_closed):
            was = self.url
            self.failures += 1
            self._index = (self._index + 1) % len(self.nodes)
            self.url = self.nodes[self._index]
            if len(self.nodes) > 1:
                log.warning(
                    "broker.failover", left=node_of(was), trying=node_of(self.url), failures=self.failures
                )
        await super()._on_connection_close(closing)

    async def _on_connected(self) -> None:
        self._restoring = True
        try:
            await super()._on_connected()  # restores the channels (or fails), then counts the generation
        finally:
            self._restoring = False
        self.failures = 0
        opened, self._opened = self._opened, self.loop.create_future()
        opened.set_result(None)
        if self.generation > 1:
            log.info("broker.reconnected", node=node_of(self.url))


async def open_failover(
    urls: Sequence[str], *, timeout: TimeoutType = CONNECT_TIMEOUT_S, **kwargs: Any
) -> FailoverConnection:
    """A connection to the first node of ``urls`` that answers; the error of the last one if none does.

    Each node is tried with a connection of its own (aio-pika's first attempt fails fast and does not
    retry); the one that opens is kept and walks the whole list from then on.
    """
    nodes = [with_heartbeat(URL(u)) for u in urls]
    if not nodes:
        raise ValueError("no RabbitMQ node to connect to")
    error: BaseException | None = None
    for i, node in enumerate(nodes):
        connection = FailoverConnection(node, nodes, **kwargs)
        try:
            await connection.connect(timeout=timeout)
        except CONNECTION_EXCEPTIONS as e:
            await connection.close()
            error = e
            if i + 1 < len(nodes):
                log.warning("broker.node_unreachable", node=node_of(node), error=type(e).__name__)
            continue
        return connection
    assert error is not None
    raise error
