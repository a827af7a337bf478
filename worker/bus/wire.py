"""A confirmed publish onto aiormq's channel, in fewer steps than ``Channel.basic_publish``.

What aiormq 7.2's ``basic_publish`` does per message, and what this does instead:

- marshals the ``Basic.Publish`` method frame with pamqp: here once per channel, exchange and
  routing key (:func:`publish_frame`, cached);
- takes the channel's lock (an async context manager) and, unless told ``wait=False``, holds it
  until the connection's writer has drained the frames to the socket, so publishes go out one at
  a time, each a task switch to the writer and back: here the delivery tag is taken and the frames
  queued in one step with no ``await`` between (:meth:`Sender.send`), and a lock is only taken
  while the writer's queue is full (then every publish waits its turn, first come first served);
- runs under its own ``asyncio.timeout`` and a cancellation guard: here the caller's bound serves;
- is a coroutine the caller must keep from being cancelled (a cancelled confirm future breaks
  aiormq's reader on a Basic.Return: see :class:`worker.bus.publisher.Publisher`), which took a
  task per publish: here the caller gets the confirm future itself and waits on it shielded.

Measured in bench/README.md (issue 16): a quarter of a confirmed publish's client CPU.

What it relies on in aiormq (pinned ``>=7.2.4,<7.3`` in pyproject.toml; the broker tests in
``tests/integration/test_publisher.py`` fail if any of it moves): a channel's ``delivery_tag``
(the broker numbers publishes in the order their frames reach the socket), ``confirmations``
(delivery tag → future, settled by the channel's reader on Ack, Nack or Return),
``message_id_delivery_tag`` (how the reader finds the publish a Basic.Return is for),
``create_future`` (rejected when the channel closes), ``max_content_size``, the connection's
``write_queue`` and ``aiormq.abc.ChannelFrame``. Every publish on a channel must come through one
:class:`Sender`, or delivery tags and frames could be taken in different orders.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from typing import Any

import aiormq
import aiormq.abc
import pamqp.frame
from aiormq.abc import ChannelFrame
from pamqp import commands
from pamqp.body import ContentBody
from pamqp.header import ContentHeader


@functools.lru_cache(maxsize=1024)
def publish_frame(channel_number: int, exchange: str, routing_key: str) -> bytes:
    """The marshalled ``Basic.Publish`` (mandatory: a message no queue takes comes back)."""
    if len(routing_key.encode()) > 255:
        raise ValueError("routing key longer than 255 bytes")
    method = commands.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True)
    return pamqp.frame.marshal(method, channel_number)


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
        pamqp.frame.marshal(ContentHeader(0, len(body), properties), channel_number),
    ]
    for start in range(0, len(body), max_content_size):
        parts.append(pamqp.frame.marshal(ContentBody(body[start : start + max_content_size]), channel_number))
    return b"".join(parts)


def _forget(by_message_id: dict[str, int], message_id: str, tag: int, _: asyncio.Future[Any]) -> None:
    if by_message_id.get(message_id) == tag:
        del by_message_id[message_id]


class Sender:
    """Queues publishes for a channel's connection; each returns its confirm future."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()  # held only while waiting for room in the writer's queue
        self._waiting = 0  # publishes in the slow path; while any, every publish joins them in turn

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
        if channel.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError(f"channel {channel.number} is closed")
        if not channel.publisher_confirms:
            raise RuntimeError("Sender needs a channel with publisher confirms")
        if not properties.message_id:
            properties.message_id = uuid.uuid4().hex  # a Return is matched to its publish by it
        payload = frames(channel.number, exchange, routing_key, properties, body, channel.max_content_size)
        queue: asyncio.Queue[ChannelFrame] = channel.write_queue
        frame = ChannelFrame(payload=payload, should_close=False)
        if not self._waiting and not queue.full():
            # No await between taking the tag and queueing the frame: no other publish comes between.
            confirmation = _take_tag(channel, properties.message_id)
            queue.put_nowait(frame)
            return confirmation
        # The queue is full: wait for room, in turn (the lock is first come, first served, and no
        # publish passes those waiting), each holding the next tag while it waits.
        self._waiting += 1
        try:
            async with self._lock:
                if channel.is_closed:
                    raise aiormq.exceptions.ChannelInvalidStateError(f"channel {channel.number} is closed")
                confirmation = _take_tag(channel, properties.message_id)
                try:
                    await queue.put(frame)
                except BaseException:  # not queued: the broker never sees it, the next publish takes its tag
                    channel.confirmations.pop(channel.delivery_tag, None)
                    channel.delivery_tag -= 1
                    confirmation.cancel()
                    raise
                return confirmation
        finally:
            self._waiting -= 1


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
