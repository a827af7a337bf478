"""Failing over between RabbitMQ nodes, on the local broker: a node that refuses is passed over, a
connection that dies under a publish moves to the next node and the publish is sent again there, and
a nacked publish is sent again on a fresh channel. A "node" that dies is a TCP relay in front of the
local broker, cut by the test; the broker itself is never stopped (the whole three-node cluster is
tests/chaos/test_cluster.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aio_pika
import pytest
from yarl import URL

from tests.helpers import eventually, free_port, queue_messages
from worker.bus.failover import FailoverConnection, with_heartbeat
from worker.bus.publisher import Publisher
from worker.bus.topology import Topology
from worker.errors import PublishFailed, Unreachable
from worker.reach import open_broker
from worker.settings import Settings


@dataclasses.dataclass
class Relay:
    """A TCP relay to the broker: a node that can be made deaf (nothing it hears comes back) and cut."""

    port: int
    server: asyncio.Server | None = None
    deaf: bool = False
    heard: int = 0  # bytes passed on to the broker
    writers: list[asyncio.StreamWriter] = dataclasses.field(default_factory=list)

    def cut(self) -> None:
        """The node dies: every connection through it ends at once, and it accepts no other."""
        if self.server is not None:
            self.server.close()
        for w in self.writers:
            w.transport.abort()


async def relay_to(host: str, port: int) -> Relay:
    node = Relay(free_port())

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, back: bool) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if not (back and node.deaf):
                    writer.write(data)
                    await writer.drain()
                if not back:
                    node.heard += len(data)
        writer.transport.abort()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, port)
        node.writers += [writer, up_writer]
        await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))

    node.server = await asyncio.start_server(serve, "127.0.0.1", node.port)
    return node


@pytest.fixture
async def relay(settings: Settings) -> AsyncIterator[Relay]:
    parts = urlsplit(settings.amqp_url)
    r = await relay_to(parts.hostname or "127.0.0.1", parts.port or 5672)
    try:
        yield r
    finally:
        r.cut()


def asked(url: str) -> URL:
    """The URL a connection uses for the node ``url`` names (with the default heartbeat)."""
    return with_heartbeat(URL(url))


def via(settings: Settings, port: int) -> str:
    return urlsplit(settings.amqp_url)._replace(netloc=f"guest:guest@127.0.0.1:{port}").geturl()


async def test_a_node_that_refuses_is_passed_over(settings: Settings) -> None:
    dead = via(settings, free_port())
    s = dataclasses.replace(settings, amqp_url=f"{dead},{settings.amqp_url}")
    connection = await open_broker(s, "paw-test-failover")
    try:
        assert isinstance(connection, FailoverConnection)
        assert connection.url == asked(settings.amqp_url)
        assert list(connection.nodes) == [asked(dead), asked(settings.amqp_url)]
    finally:
        await connection.close()


async def test_when_every_node_refuses_the_error_names_them_all(settings: Settings) -> None:
    ports = free_port(), free_port()
    s = dataclasses.replace(settings, amqp_url=",".join(f"amqp://paw:hunter2@127.0.0.1:{p}/" for p in ports))
    with pytest.raises(Unreachable) as caught:
        await open_broker(s, "paw-test-failover")
    assert str(caught.value) == (
        f"RabbitMQ at 127.0.0.1:{ports[0]}/, 127.0.0.1:{ports[1]}/ (AMQP_URL) refused the connection"
    )


@pytest.fixture
async def queue(settings: Settings) -> AsyncIterator[str]:
    name = f"{settings.queue_prefix}.failover-{uuid.uuid4().hex[:6]}"
    conn = await aio_pika.connect(settings.amqp_url)
    channel = await conn.channel()
    await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
    try:
        yield name
    finally:
        await channel.queue_delete(name)
        await conn.close()


async def test_a_publish_whose_node_dies_under_it_is_sent_again_on_the_next(
    settings: Settings, relay: Relay, queue: str
) -> None:
    s = dataclasses.replace(settings, amqp_url=f"{via(settings, relay.port)},{settings.amqp_url}")
    connection = await open_broker(s, "paw-test-failover")
    try:
        assert isinstance(connection, FailoverConnection) and connection.url.port == relay.port
        publisher = Publisher(connection, Topology.from_settings(s), timeout=10)
        await publisher.publish(queue, b'{"n": 1}', message_id="first", to_queue=True)
        relay.deaf, heard = True, relay.heard  # the broker gets the next publish, its confirm is lost ...
        publishing = asyncio.create_task(
            publisher.publish(queue, b'{"n": 2}', message_id="second", to_queue=True)
        )

        async def sent() -> bool:
            return relay.heard > heard

        await eventually(sent, timeout=5)
        assert not publishing.done()
        relay.cut()  # ... and the node dies with the publish in flight
        await asyncio.wait_for(publishing, 10)  # confirmed, by the other node
        assert publisher.resent == 1
        assert connection.url == asked(settings.amqp_url)
        ids = [m.message_id for m in await queue_messages(settings.amqp_url, queue)]
        # at least once: the copy the dead node had heard may be there too (consumers deduplicate)
        assert ids in (["first", "second"], ["first", "second", "second"]), ids
    finally:
        await connection.close()


async def test_a_publish_with_no_node_left_fails_at_once(
    settings: Settings, relay: Relay, queue: str
) -> None:
    # a cluster of one, trying again after 0.2 s (aio-pika's reconnect_interval, 5 s by default)
    s = dataclasses.replace(settings, amqp_url=via(settings, relay.port) + "?reconnect_interval=0.2")
    connection = await open_broker(s, "paw-test-failover")
    try:
        publisher = Publisher(connection, Topology.from_settings(s), timeout=10)
        relay.cut()

        async def gave_up() -> bool:
            return not publisher.is_ready

        await eventually(gave_up, timeout=10)
        with pytest.raises(PublishFailed, match="not connected"):
            await asyncio.wait_for(publisher.publish(queue, b"{}", to_queue=True), 1)
    finally:
        await connection.close()


async def test_a_nacked_publish_is_sent_again_on_a_fresh_channel(settings: Settings) -> None:
    """A full queue that rejects publishes nacks them; once there is room, the same publish goes in."""
    name = f"{settings.queue_prefix}.full-{uuid.uuid4().hex[:6]}"
    conn = await aio_pika.connect(settings.amqp_url)
    channel = await conn.channel()
    full = await channel.declare_queue(name, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    connection = await open_broker(settings, "paw-test-failover")
    try:
        publisher = Publisher(connection, Topology.from_settings(settings), timeout=3)
        await publisher.publish(name, b'{"n": 1}', to_queue=True)
        first_channel = publisher._channel
        with pytest.raises(PublishFailed, match=rf"broker refused {name} \(\d+ times\)"):
            await publisher.publish(name, b'{"n": 2}', to_queue=True)
        assert publisher._channel is not first_channel  # the nacking channel was replaced

        async def make_room() -> None:
            await asyncio.sleep(0.3)
            await full.purge()

        room = asyncio.create_task(make_room())
        await publisher.publish(name, b'{"n": 3}', to_queue=True)  # nacked, then taken
        await room
        assert [m.body for m in await queue_messages(settings.amqp_url, name)] == [b'{"n": 3}']
    finally:
        await connection.close()
        await channel.queue_delete(name)
        await conn.close()


async def test_a_handler_in_flight_when_its_node_dies_runs_to_its_end(
    settings: Settings, relay: Relay, queue: str
) -> None:
    """aiormq cancels the handlers of a channel that closes; one cancelled between an exchange and
    its commit would lose the exchanged token. Here it finishes, its ack is refused, and the
    message comes again through the next node."""
    s = dataclasses.replace(settings, amqp_url=f"{via(settings, relay.port)},{settings.amqp_url}")
    connection = await open_broker(s, "paw-test-failover")
    seen: list[str] = []
    release = asyncio.Event()

    async def handler(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        seen.append("started")
        await release.wait()  # an upstream call in flight
        seen.append("finished")
        try:
            await message.ack()
        except Exception as e:  # the channel it came on is gone
            seen.append(type(e).__name__)

    try:
        channel = await connection.channel()
        consumed = await channel.declare_queue(queue, passive=True)
        await consumed.consume(handler)
        publisher = Publisher(connection, Topology.from_settings(s), timeout=10)
        await publisher.publish(queue, b"{}", to_queue=True)

        async def started(times: int) -> bool:
            return seen.count("started") >= times

        await eventually(lambda: started(1), timeout=10)
        relay.cut()  # the node dies with the handler in flight

        async def reconnected() -> bool:
            return connection.url == asked(settings.amqp_url) and connection.connected.is_set()

        await eventually(reconnected, timeout=10)
        release.set()
        await eventually(lambda: started(2), timeout=10)  # redelivered through the other node

        async def done() -> bool:
            return seen.count("finished") == 2

        await eventually(done, timeout=10)
        # both ran to their end: the first one's ack was refused (its channel was gone), not the second's
        assert sorted(seen) == sorted(
            ["started", "started", "finished", "finished", "ChannelInvalidStateError"]
        )
    finally:
        release.set()
        await connection.close()
