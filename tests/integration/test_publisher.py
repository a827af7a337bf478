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

from tests.helpers import eventually
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
