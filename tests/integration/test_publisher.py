"""The Publisher against the real broker: what a publish it gives up on leaves behind.

Found in bench runs at full load: outcome events that nobody is bound for come back as Basic.Return;
a burst of them outlived the publish timeout, and a Return for a publish whose confirm future the
timeout had cancelled raised InvalidStateError in aiormq's channel reader. The reader died, its
frame queue filled, the connection's reader blocked on it, and the worker's whole connection stood
still for 183 s (until aiormq's heartbeat check). A publish given up on now leaves its confirm to
the broker: no confirm future is cancelled under aiormq.

The broker is made to hold its answers by a memory alarm (the watermark set to 0, restored after):
RabbitMQ then blocks publishing connections, as it does in production when memory runs short.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import uuid
from collections.abc import AsyncIterator

import aiormq
import pamqp.frame
import pamqp.heartbeat
from aiormq.abc import ChannelFrame

from tests.helpers import eventually, queue_messages
from worker.bus.failover import HEARTBEAT_S
from worker.bus.publisher import Publisher, connect
from worker.errors import PublishFailed, Unroutable
from worker.services import Services
from worker.settings import Settings

BURST = 20


async def _rabbitmqctl(*args: str) -> str:
    """``rabbitmqctl <args>`` against the local broker; its output. Fails the test on a non-zero exit."""
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode().strip()


async def _rabbitmqctl_eval(expr: str) -> str:
    return await _rabbitmqctl("eval", expr)


@contextlib.asynccontextmanager
async def memory_alarm() -> AsyncIterator[None]:
    """The broker's memory alarm raised (its watermark at 0) until the block ends; the watermark
    restored to what it was however the test ends."""
    before = await _rabbitmqctl_eval("vm_memory_monitor:get_vm_memory_high_watermark().")
    await _rabbitmqctl_eval("vm_memory_monitor:set_vm_memory_high_watermark(0.0).")
    try:
        yield
    finally:
        await _rabbitmqctl_eval(f"vm_memory_monitor:set_vm_memory_high_watermark({before}).")


async def _publish(publisher: Publisher, routing_key: str, message_id: str) -> str:
    try:
        await publisher.publish(routing_key, b"{}", message_id=message_id)
    except Unroutable:
        return "returned"
    except PublishFailed:
        return "given up"
    return "confirmed"


async def test_publishes_given_up_on_leave_their_confirms_to_the_broker(services: Services) -> None:
    unretrieved: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: unretrieved.append(context))
    publisher = Publisher(services.connection, services.topo, timeout=5.0)
    nobody = f"nobody.bound.{uuid.uuid4().hex}"  # every publish to it comes back as a Return
    assert await _publish(publisher, nobody, "warm-up") == "returned"  # the channel is open
    channel = await (await publisher._ready()).get_underlay_channel()
    async with memory_alarm():
        publisher.timeout = 0.5

        async def blocked() -> bool:
            return await _publish(publisher, nobody, f"probe-{uuid.uuid4()}") == "given up"

        await eventually(blocked, timeout=30)  # the alarm is on: the broker holds its answers
        outcomes = await asyncio.gather(*(_publish(publisher, nobody, f"m-{n}") for n in range(BURST)))
        assert outcomes == ["given up"] * BURST
        waiting = list(channel.confirmations.values())
        assert len(waiting) > BURST  # the probes and the burst were sent and wait for the broker
        # given up on by the publisher, but not cancelled: the broker's Return finds them waiting
        assert not [f for f in waiting if f.cancelled()]
    publisher.timeout = 5.0

    async def all_answered() -> bool:
        return not channel.confirmations

    await eventually(all_answered, timeout=30)  # the reader took every Return and Ack after the alarm
    assert await _publish(publisher, nobody, "after") == "returned"
    gc.collect()  # the Returns of the publishes given up on were taken, not left as unretrieved errors
    assert [c["message"] for c in unretrieved] == []
    asyncio.get_running_loop().set_exception_handler(None)


async def _broker_heartbeat(connection_name: str) -> int:
    """The heartbeat timeout the broker agreed with the connection named ``connection_name``."""
    out = await _rabbitmqctl("-q", "list_connections", "client_properties", "timeout")
    [line] = [ln for ln in out.splitlines() if connection_name in ln]
    return int(line.rsplit("\t", 1)[1])


async def test_a_connection_asks_for_a_short_heartbeat_unless_the_url_names_one(settings: Settings) -> None:
    """A connection that reads nothing is declared dead after three heartbeats: 48 s, not aiormq's
    183 s; a heartbeat in AMQP_URL is the operator's and is kept."""
    [url] = settings.amqp_urls
    for amqp_url, expected in ((url, HEARTBEAT_S), (f"{url}?heartbeat=30", 30)):
        name = f"paw-test-heartbeat-{uuid.uuid4().hex}"
        connection = await connect(amqp_url, name)
        try:
            assert await _broker_heartbeat(name) == expected
        finally:
            await connection.close()


async def _taken(services: Services) -> dict[str, bytes]:
    """The bodies of the messages on the webhooks queue, by message id (every confirmed one is
    there: a quorum queue confirms once the message is in it)."""
    taken = await queue_messages(services.settings.amqp_url, services.topo.webhooks_queue)
    return {m.message_id or "": m.body for m in taken}


async def test_interleaved_publishes_each_get_their_own_answer(services: Services) -> None:
    """Many publishes at once, more coming while they go out (more than aiormq's writer queue holds,
    so some wait for room in it), routable and returned ones interleaved: each ends with the
    broker's answer to its own message (a Return is matched by message id, an Ack by delivery tag),
    every body arrives whole, one larger than a frame included, and nothing is left waiting."""
    publisher = Publisher(services.connection, services.topo, timeout=10.0)
    nobody = f"nobody.bound.{uuid.uuid4().hex}"
    big = b'{"pad":"' + b"x" * 300_000 + b'"}'  # frame_max is 128 KiB: three body frames

    async def one(n: int) -> tuple[str, str]:
        returned = n % 3 == 0
        body = big if n == 1 else b'{"n":%d}' % n
        try:
            await publisher.publish(
                nobody if returned else "webhook.test.interleaved", body, message_id=f"m{n}"
            )
        except Unroutable:
            return f"m{n}", "returned"
        return f"m{n}", "confirmed"

    tasks = []
    for wave in range(60):  # new publishes keep coming while earlier ones wait for room
        tasks += [asyncio.create_task(one(n)) for n in range(wave * 5, wave * 5 + 5)]
        await asyncio.sleep(0)
    outcomes = dict(await asyncio.gather(*tasks))
    assert outcomes == {f"m{n}": "returned" if n % 3 == 0 else "confirmed" for n in range(300)}
    confirmed = [n for n in range(300) if n % 3]
    bodies = await _taken(services)
    assert bodies == {f"m{n}": big if n == 1 else b'{"n":%d}' % n for n in confirmed}
    channel = await (await publisher._ready()).get_underlay_channel()
    assert not channel.confirmations and not channel.message_id_delivery_tag  # nothing left behind


HEARTBEAT = pamqp.frame.marshal(pamqp.heartbeat.Heartbeat(), 0)


async def test_publishes_cancelled_while_waiting_to_be_queued_take_no_delivery_tag(
    services: Services,
) -> None:
    """Publishes cancelled before their frames were queued (waiting for room in the writer's queue,
    the first of them holding the next delivery tag) give their tag back: the publishes after them
    are answered, each its own."""
    publisher = Publisher(services.connection, services.topo, timeout=10.0)
    await publisher.publish("webhook.test.cancelled", b"{}", message_id="warm-up")  # written: no open batch
    channel = await (await publisher._ready()).get_underlay_channel()
    assert isinstance(channel, aiormq.Channel)
    tasks = [
        asyncio.create_task(publisher.publish("webhook.test.cancelled", b"{}", message_id=f"c{n}"))
        for n in range(200)
    ]
    # The writer's queue filled with heartbeats (harmless to the broker) before the publishes run:
    # the first waits for room holding the next tag, the others wait their turn.
    while not channel.write_queue.full():
        channel.write_queue.put_nowait(ChannelFrame(payload=HEARTBEAT, should_close=False))
    before = channel.delivery_tag
    await asyncio.sleep(0)
    assert channel.delivery_tag == before + 1
    for task in tasks[::2]:  # the one holding a tag among them
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    cancelled = {n for n, r in enumerate(results) if isinstance(r, asyncio.CancelledError)}
    assert cancelled and all(results[n] is None for n in range(200) if n not in cancelled)
    after = await asyncio.gather(
        *(publisher.publish("webhook.test.cancelled", b"{}", message_id=f"after{n}") for n in range(20))
    )
    assert after == [None] * 20
    queued = await _taken(services)
    assert set(queued) == {"warm-up"} | {f"c{n}" for n in range(200) if n not in cancelled} | {
        f"after{n}" for n in range(20)
    }
    assert not channel.confirmations and not channel.message_id_delivery_tag


async def test_while_the_broker_reads_nothing_publishes_wait_for_room_not_in_memory(
    services: Services,
) -> None:
    """A memory alarm: the broker stops reading publishing connections. The writer then waits for
    the socket to take what it wrote before it takes more (a drain per batch, as aiormq's own
    publishes do), its queue fills, and the publishes after give up without their frames ever
    being queued (no delivery tag taken), instead of piling up in the connection's write buffer."""
    publisher = Publisher(services.connection, services.topo, timeout=5.0)
    nobody = f"nobody.bound.{uuid.uuid4().hex}"
    assert await _publish(publisher, nobody, "warm-up") == "returned"
    channel = await (await publisher._ready()).get_underlay_channel()
    assert isinstance(channel, aiormq.Channel)
    body = b'{"pad":"' + b"x" * 300_000 + b'"}'
    count = 100  # 30 MB: more than the socket's buffers on either side hold
    async with memory_alarm():

        async def blocked() -> bool:
            return await _publish(publisher, nobody, f"probe-{uuid.uuid4()}") == "given up"

        publisher.timeout = 0.5
        await eventually(blocked, timeout=30)
        before = channel.delivery_tag
        publisher.timeout = 2.0

        async def big(n: int) -> str:
            try:
                await publisher.publish(nobody, body, message_id=f"big-{n}")
            except PublishFailed:
                return "given up"
            return "answered"

        outcomes = await asyncio.gather(*(big(n) for n in range(count)))
        assert outcomes == ["given up"] * count
        sent = channel.delivery_tag - before
        assert sent < count // 2  # the rest never queued: nothing of theirs in memory
    publisher.timeout = 5.0

    async def all_answered() -> bool:
        return not channel.confirmations

    await eventually(all_answered, timeout=60)
    assert await _publish(publisher, nobody, "after") == "returned"
