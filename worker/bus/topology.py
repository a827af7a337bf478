"""RabbitMQ's topology: every name, declared (and for tests and the demo, deleted) in one place.

Topology (names derive from ``PAW_EXCHANGE`` and ``PAW_QUEUE_PREFIX``):

- topic exchange ``paw.events`` (durable);
- quorum queues ``<prefix>.items`` (``item.link``, ``item.drive``, ``item.repaired``: exactly what the
  worker handles there, so the outcome events ``item.state.*`` never reach it) and
  ``<prefix>.webhooks`` (``webhook.#``);
- quorum queue ``<prefix>.callbacks`` (``item.state.#``, bound by a process with callbacks configured,
  never unbound by paw): outcome events for the upstream apps' signed HTTP callbacks
  (:mod:`worker.callbacks`), with delay queues like a work queue's;
- per work queue, delay queues ``<queue>.retry.<ms>`` (message TTL, dead-lettered back to the work
  queue through the default exchange) for retries with backoff;
- quorum queue ``<prefix>.parked`` (no binding): results of upstream calls the database could not
  take, applied when it answers (:mod:`worker.items.parking`), with delay queues like a work queue's;
- quorum queue ``<prefix>.dead`` for dead letters, with the reason in headers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import aio_pika
import aiormq
import aiormq.abc
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
)

from worker.settings import Settings

log = structlog.get_logger(__name__)

# What the worker handles on the items queue (worker/handlers.py), each bound by name.
ITEM_COMMANDS = ("item.link", "item.drive", "item.repaired")
# Bindings earlier versions made, removed at every declare: ``item.#`` also matched the outcome
# events, which the items queue would have taken (and dead-lettered) from then on.
RETIRED_BINDINGS = {"items": ("item.#",)}


@dataclasses.dataclass(frozen=True)
class Topology:
    """Every broker name, derived from the settings (their defaults are the only ones)."""

    exchange: str
    prefix: str
    retry_delays_ms: tuple[int, ...]
    # Bind the callbacks queue to the outcome events: only where callbacks are configured. Without,
    # the worker would take five messages per Item through a quorum queue only to ack them unread
    # (issue 16); the relay then finds no queue for an event nobody subscribed to and counts it.
    callbacks_bound: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        return cls(
            exchange=settings.exchange,
            prefix=settings.queue_prefix,
            retry_delays_ms=settings.retry_delays_ms,
            callbacks_bound=bool(settings.callbacks),
        )

    @property
    def items_queue(self) -> str:
        return f"{self.prefix}.items"

    @property
    def webhooks_queue(self) -> str:
        return f"{self.prefix}.webhooks"

    @property
    def callbacks_queue(self) -> str:
        return f"{self.prefix}.callbacks"

    @property
    def event_queues(self) -> dict[str, tuple[str, ...]]:
        """Queues of paw's own that consume the outcome events (``item.state.*``) -> their bindings.
        Consumed, retried and dead-lettered like the work queues, by their own handler. A binding
        left from a configuration with callbacks stays (declare never unbinds it)."""
        return {self.callbacks_queue: ("item.state.#",) if self.callbacks_bound else ()}

    @property
    def parked_queue(self) -> str:
        """Results the database could not take, published straight to it (no binding) and applied
        when Postgres answers (worker/items/parking.py)."""
        return f"{self.prefix}.parked"

    @property
    def consumed_queues(self) -> dict[str, tuple[str, ...]]:
        """Every queue the worker consumes (each with its delay queues) -> its bindings."""
        return {**self.work_queues, **self.event_queues, self.parked_queue: ()}

    @property
    def replayed_to_own_queue(self) -> tuple[str, ...]:
        """Queues whose dead letters ``paw dlq replay`` puts back on the queue itself, not on the
        exchange: they consume events others subscribe to as well, who had theirs already; or, the
        parked queue, nothing is bound to reach them."""
        return (*self.event_queues, self.parked_queue)

    @property
    def dead_queue(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def work_queues(self) -> dict[str, tuple[str, ...]]:
        """Work queue -> the binding keys that feed it."""
        return {self.items_queue: ITEM_COMMANDS, self.webhooks_queue: ("webhook.#",)}

    def retry_queue(self, work_queue: str, delay_ms: int) -> str:
        return f"{work_queue}.retry.{delay_ms}"

    def all_queues(self) -> list[str]:
        names = [*self.work_queues, self.dead_queue]
        names += [self.retry_queue(q, d) for q in self.work_queues for d in self.retry_delays_ms]
        own = [*self.event_queues, self.parked_queue]
        names += own
        names += [self.retry_queue(q, d) for q in own for d in self.retry_delays_ms]
        return names


async def declare(channel: AbstractChannel, topo: Topology) -> AbstractExchange:
    """Declares everything (idempotent); returns the events exchange. The dead queue is declared on
    a channel of its own (:func:`declare_dead_queue`)."""
    exchange = await channel.declare_exchange(topo.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    quorum: dict[str, Any] = {"x-queue-type": "quorum"}
    for name, bindings in topo.consumed_queues.items():
        queue = await channel.declare_queue(name, durable=True, arguments=quorum)
        for binding in bindings:
            await queue.bind(exchange, binding)
        for retired in RETIRED_BINDINGS.get(name.removeprefix(f"{topo.prefix}."), ()):
            await queue.unbind(exchange, retired)  # a no-op when it is not there
        for delay in topo.retry_delays_ms:
            await channel.declare_queue(
                topo.retry_queue(name, delay),
                durable=True,
                arguments={
                    "x-message-ttl": delay,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": name,
                },
            )
    await declare_dead_queue(channel, topo)
    return exchange


def version_of(underlay: aiormq.abc.AbstractChannel) -> str:
    """The broker's version as it announced it (``3.10.8``), ``""`` where it did not."""
    version = (underlay.connection.server_properties or {}).get("version", "")
    return version.decode() if isinstance(version, bytes) else str(version)


def dead_queue_arguments(version: str) -> dict[str, Any]:
    """The dead queue's arguments: a quorum queue that never drops a message by delivery count.
    RabbitMQ 4.0+ gives quorum queues a delivery limit of 20 unless told otherwise (``-1``: none);
    3.x has no limit unless one is set, and its -1 is not "none", so nothing is set there."""
    args: dict[str, Any] = {"x-queue-type": "quorum"}
    major = version.split(".", 1)[0]
    if major.isdigit() and int(major) >= 4:
        args["x-delivery-limit"] = -1
    return args


DEAD_QUEUE_POLICY = (
    "rabbitmqctl set_policy paw-dead '^{queue}$' '{{\"delivery-limit\": 1000000000}}' "
    "--apply-to quorum_queues --priority 10"
)


async def declare_dead_queue(channel: AbstractChannel, topo: Topology, version: str | None = None) -> bool:
    """Declares the dead queue without a delivery limit where the broker has one by default. A dead
    queue declared before (by an older paw, or on 3.x before an upgrade to 4) keeps the arguments it
    was made with: paw carries on with it, says so, and names the policy that lifts the limit.
    Returns whether the queue has the arguments paw wants."""
    underlay = await channel.get_underlay_channel()
    args = dead_queue_arguments(version_of(underlay) if version is None else version)
    if "x-delivery-limit" not in args:
        await channel.declare_queue(topo.dead_queue, durable=True, arguments=args)
        return True
    trial = await underlay.connection.channel()  # a 406 closes the channel: try on one of our own
    try:
        await trial.queue_declare(topo.dead_queue, durable=True, arguments=args)
        return True
    except aiormq.exceptions.ChannelPreconditionFailed as e:
        log.warning(
            "broker.dead_queue_has_a_delivery_limit",
            queue=topo.dead_queue,
            error=str(e),
            detail="RabbitMQ 4+ drops a quorum-queue message past 20 deliveries unless the queue was "
            "declared without a limit; this one was declared before. Replays and purges count as "
            "deliveries. Lift the limit with a policy: "
            + DEAD_QUEUE_POLICY.format(queue=topo.dead_queue.replace(".", "\\.")),
        )
        return False
    finally:
        if not trial.is_closed:
            await trial.close()


async def undeclare(channel: AbstractChannel, topo: Topology) -> None:
    """Deletes every queue and the exchange of ``topo`` (the demo's, a test's or a benchmark's own)."""
    for name in topo.all_queues():
        await channel.queue_delete(name)
    await channel.exchange_delete(topo.exchange)


async def queue_depth(channel: AbstractChannel, name: str) -> int:
    """Messages ready on ``name`` now (a passive declare: changes nothing; a missing queue raises
    ``aiormq.exceptions.ChannelNotFoundEntity`` and closes the channel).

    Sent on the underlying AMQP channel: aio-pika's robust channel answers a passive declare of a
    queue it declared before from its cache, with the count of that first declare."""
    underlay = await channel.get_underlay_channel()
    declared = await underlay.queue_declare(name, passive=True)
    return int(declared.message_count or 0)
