"""A confirmed publish onto aiormq's channel, in fewer steps than ``Channel.basic_publish``.

What aiormq 7.2's ``basic_publish`` does per message, and what this does instead:

- marshals the ``Basic.Publish`` method frame with pamqp: here once per channel, exchange and
  routing key (:func:`publish_frame`, cached);
- takes the channel's lock (an async context manager) and, unless told ``wait=False``, holds it
  until the connection's writer has drained the frames to the socket, so publishes go out one at
  a time, each its own write and a task switch to the writer and back: here the delivery tag is
  taken and the frames queued in one step with no ``await`` between (:meth:`Sender.send`), joined
  to the batch queued last while the writer has not taken it (one write for many publishes, fewer
  reads for the broker), and a lock is only taken while the writer's queue is full (then every
  publish waits its turn, first come first served);
- runs under its own ``asyncio.timeout`` and a cancellation guard: here the caller's bound serves;
- is a coroutine the caller must keep from being cancelled (a cancelled confirm future breaks
  aiormq's reader on a Basic.Return: see :class:`worker.bus.publisher.Publisher`), which took a
  task per publish: here the caller gets the confirm future itself and waits on it shielded.

Measured in bench/README.md (issue 16): half a confirmed publish's client CPU, a quarter of the
broker's.

What it relies on in aiormq (pinned ``>=7.2.4,<7.3`` in pyproject.toml; the broker tests in
``tests/integration/test_publisher.py`` fail if any of it moves): a channel's ``delivery_tag``
(the broker numbers publishes in the order their frames reach the socket), ``confirmations``
(delivery tag → future, settled by the channel's reader on Ack, Nack or Return),
``message_id_delivery_tag`` (how the reader finds the publish a Basic.Return is for),
``create_future`` (rejected when the channel closes), ``max_content_size``, the connection's
``write_queue`` and its writer's use of ``aiormq.abc.ChannelFrame`` (``payload`` read once when
written, then the drain future set once the socket took it). Every publish on a channel must come
through one :class:`Sender`, or delivery tags and frames could be taken in different orders.
"""

from __future__ import annotations

import asyncio
import functools
import struct
import uuid
from typing import Any

import aiormq
import aiormq.abc
import pamqp.encode
import pamqp.frame
from aiormq.abc import ChannelFrame
from pamqp import commands
from pamqp.body import ContentBody
from pamqp.constants import FRAME_END_CHAR, FRAME_HEADER
from pamqp.header import ContentHeader


@functools.lru_cache(maxsize=1024)
def publish_frame(channel_number: int, exchange: str, routing_key: str) -> bytes:
    """The marshalled ``Basic.Publish`` (mandatory: a message no queue takes comes back)."""
    if len(routing_key.encode()) > 255:
        raise ValueError("routing key longer than 255 bytes")
    method = commands.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True)
    return pamqp.frame.marshal(method, channel_number)


_BASIC_CLASS = commands.Basic.frame_id
_FLAGS = commands.Basic.Properties.flags
_HEADER_START = struct.Struct(">BHIHxxQH")  # frame type, channel, size; class, weight, body size; flags
_EMPTY_TABLE = pamqp.encode.field_table({})


def content_header(channel_number: int, body_size: int, properties: commands.Basic.Properties) -> bytes:
    """The content header frame, byte for byte as pamqp marshals it, in a fraction of the time for
    the properties a Publisher sets (pamqp walks all fourteen, looking each one's type up by name);
    with any other property set, pamqp's own. Unset is ``None`` or ``""``, as for pamqp."""
    p = properties
    if (
        p.content_encoding
        or p.priority is not None
        or p.correlation_id
        or p.reply_to
        or p.timestamp is not None
        or p.message_type
        or p.user_id
        or p.app_id
        or p.cluster_id
    ):
        return pamqp.frame.marshal(ContentHeader(0, body_size, p), channel_number)
    # The rest in AMQP's order: content_type, headers, delivery_mode, expiration, message_id.
    flags = 0
    parts = []
    if p.content_type:
        flags |= _FLAGS["content_type"]
        parts.append(pamqp.encode.short_string(p.content_type))
    if p.headers is not None:
        flags |= _FLAGS["headers"]
        parts.append(pamqp.encode.field_table(p.headers) if p.headers else _EMPTY_TABLE)
    if p.delivery_mode is not None:
        flags |= _FLAGS["delivery_mode"]
        parts.append(pamqp.encode.octet(p.delivery_mode))
    if p.expiration:
        flags |= _FLAGS["expiration"]
        parts.append(pamqp.encode.short_string(p.expiration))
    if p.message_id:
        flags |= _FLAGS["message_id"]
        parts.append(pamqp.encode.short_string(p.message_id))
    encoded = b"".join(parts)
    size = 14 + len(encoded)  # class, weight, body size, flags, then the properties
    start = _HEADER_START.pack(FRAME_HEADER, channel_number, size, _BASIC_CLASS, body_size, flags)
    return b"".join((start, encoded, FRAME_END_CHAR))


def frames(
    channel_number: int,
    exchange: str,
    routing_key: str,
    properties: commands.Basic.Properties,
    body: bytes,
    max_content_size: int,
) -> bytes:
    """One message's frames as the socket takes them: method, content header, body frames."""
    parts = [
        publish_frame(channel_number, exchange, routing_key),
        content_header(channel_number, len(body), properties),
    ]
    for start in range(0, len(body), max_content_size):
        parts.append(pamqp.frame.marshal(ContentBody(body[start : start + max_content_size]), channel_number))
    return b"".join(parts)


def _forget(by_message_id: dict[str, int], message_id: str, tag: int, _: asyncio.Future[Any]) -> None:
    if by_message_id.get(message_id) == tag:
        del by_message_id[message_id]


# A batch takes publishes up to this many bytes: what a blocked writer's queue (ten frames) can
# hold stays small.
MAX_BATCH_BYTES = 128 * 1024


class _Batch(ChannelFrame):
    """Consecutive publishes' frames, queued for the writer as one and written with one call; open
    to more until the writer takes it (reads :attr:`payload`). Its drain future has the writer wait
    for the socket to take the bytes before it takes the next frame, as aiormq's own publishes do:
    while the broker does not read (a memory alarm blocks publishers), the writer's queue fills
    and publishes wait for room instead of piling up in memory."""

    def __init__(self, queue: asyncio.Queue[ChannelFrame], first: bytes) -> None:
        object.__setattr__(self, "should_close", False)
        object.__setattr__(self, "drain_future", asyncio.get_running_loop().create_future())
        object.__setattr__(self, "queue", queue)
        object.__setattr__(self, "parts", [first])
        object.__setattr__(self, "size", len(first))
        object.__setattr__(self, "taken", False)

    queue: asyncio.Queue[ChannelFrame]
    parts: list[bytes]
    size: int
    taken: bool

    @property
    def payload(self) -> bytes:
        object.__setattr__(self, "taken", True)
        return b"".join(self.parts)

    def add(self, queue: asyncio.Queue[ChannelFrame], more: bytes) -> bool:
        """Adds the frames if the batch is still open to them (not taken, for this queue, room)."""
        if self.taken or self.queue is not queue or self.size + len(more) > MAX_BATCH_BYTES:
            return False
        self.parts.append(more)
        object.__setattr__(self, "size", self.size + len(more))
        return True


class Sender:
    """Queues publishes for a channel's connection; each returns its confirm future."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()  # held only while waiting for room in the writer's queue
        self._waiting = 0  # publishes in the slow path; while any, every publish joins them in turn
        self._open: _Batch | None = None  # the last batch queued, while the writer has not taken it

    async def send(
        self,
        channel: aiormq.abc.AbstractChannel,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        properties: commands.Basic.Properties,
    ) -> asyncio.Future[Any]:
        """Queues the message; the future ends with the broker's Ack, or fails with aiormq's
        ``DeliveryError`` (Nack), ``PublishError`` (returned) or the channel's close reason. It must
        not be cancelled: wait on it with :func:`asyncio.shield`."""
        if not isinstance(channel, aiormq.Channel):
            raise TypeError(f"an aiormq channel, not {type(channel).__name__}")
        _check_open(channel)
        if not channel.publisher_confirms:
            raise RuntimeError("Sender needs a channel with publisher confirms")
        if not properties.message_id:
            properties.message_id = uuid.uuid4().hex  # a Return is matched to its publish by it
        payload = frames(channel.number, exchange, routing_key, properties, body, channel.max_content_size)
        queue: asyncio.Queue[ChannelFrame] = channel.write_queue
        # No await between taking a tag and queueing the frames: no other publish comes between.
        if not self._waiting:
            if self._joined(queue, payload):  # behind every publish queued so far
                return _take_tag(channel, properties.message_id)
            if not queue.full():
                confirmation = _take_tag(channel, properties.message_id)
                self._open = _Batch(queue, payload)
                queue.put_nowait(self._open)
                return confirmation
        # The writer's queue is full and holds no batch open to more: wait for room, in turn (the
        # lock is first come, first served, and no publish passes those waiting), each holding the
        # next tag while it waits.
        self._waiting += 1
        try:
            async with self._lock:
                _check_open(channel)
                if self._joined(queue, payload):  # queued by the one before
                    return _take_tag(channel, properties.message_id)
                confirmation = _take_tag(channel, properties.message_id)
                batch = _Batch(queue, payload)
                try:
                    await queue.put(batch)
                except BaseException:  # not queued: the broker never sees it, the next publish takes its tag
                    channel.confirmations.pop(channel.delivery_tag, None)
                    channel.delivery_tag -= 1
                    confirmation.cancel()
                    raise
                self._open = batch
                return confirmation
        finally:
            self._waiting -= 1

    def _joined(self, queue: asyncio.Queue[ChannelFrame], more: bytes) -> bool:
        """The frames joined to the batch queued last, if it is still open to them."""
        return self._open is not None and self._open.add(queue, more)


def _check_open(channel: aiormq.Channel) -> None:
    if channel.is_closed:
        raise aiormq.exceptions.ChannelInvalidStateError(f"channel {channel.number} is closed")


def _take_tag(channel: aiormq.Channel, message_id: str) -> asyncio.Future[Any]:
    """The next delivery tag, and the future the channel's reader settles for it."""
    channel.delivery_tag += 1
    tag = channel.delivery_tag
    confirmation = channel.create_future()
    channel.confirmations[tag] = confirmation
    channel.message_id_delivery_tag[message_id] = tag
    confirmation.add_done_callback(
        functools.partial(_forget, channel.message_id_delivery_tag, message_id, tag)
    )
    return confirmation
