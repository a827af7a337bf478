"""Opens and closes what a process needs, from the settings: the database pool, the broker
connection and publisher, the Plaid and Atomic clients, the token sealer. Postgres and RabbitMQ are
opened through :mod:`worker.reach`: a failure names the service and its variable, and an unmigrated
database stops the process with "run `paw migrate`"."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
from aio_pika.abc import AbstractRobustConnection

from worker.atomic_api import AtomicClient
from worker.bus.publisher import Publisher
from worker.bus.topology import Topology, declare
from worker.errors import SettingsError
from worker.items.parking import ParkedResult
from worker.items.pipeline import Pipeline
from worker.items.sealing import Sealer, check_keys
from worker.items.store import Store
from worker.plaid_api import PlaidClient
from worker.reach import open_broker, open_pool
from worker.settings import Settings


@dataclasses.dataclass
class Services:
    settings: Settings
    topo: Topology
    pool: asyncpg.Pool
    store: Store
    sealer: Sealer
    plaid: PlaidClient
    atomic: AtomicClient
    connection: AbstractRobustConnection
    publisher: Publisher
    pipeline: Pipeline


def refuse_real_plaid_with_emulator_keys(settings: Settings) -> None:
    """Talking to Plaid itself (no PLAID_BASE_URL) with the emulator's client id or secret can only
    be a mistake: say so before any call is made."""
    defaults = Settings()
    if settings.plaid_base_url:
        return
    unset = [
        var
        for var, value, default in (
            ("PLAID_CLIENT_ID", settings.plaid_client_id, defaults.plaid_client_id),
            ("PLAID_SECRET", settings.plaid_secret, defaults.plaid_secret),
        )
        if value == default
    ]
    if unset:
        raise SettingsError(
            f"{' and '.join(unset)} must be set to talk to Plaid at {settings.plaid_host} "
            "(or set PLAID_BASE_URL to the emulator, e.g. `paw sandbox`)"
        )


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings, name: str, *, pool_size: int | None = None
) -> AsyncIterator[Services]:
    refuse_real_plaid_with_emulator_keys(settings)
    topo = Topology.from_settings(settings)
    sealer = Sealer(settings.token_keys)
    async with contextlib.AsyncExitStack() as stack:
        pool = await open_pool(settings, max_size=pool_size or settings.db_pool_size)
        stack.push_async_callback(pool.close)
        await check_keys(pool, sealer)  # a wrong or missing token key fails here, not at the first decrypt
        connection = await open_broker(settings, name)
        stack.push_async_callback(connection.close)
        channel = await connection.channel()
        await declare(channel, topo)
        await channel.close()
        plaid = PlaidClient(
            host=settings.plaid_host,
            client_id=settings.plaid_client_id,
            secret=settings.plaid_secret,
            connections=settings.plaid_connections,
            timeout=settings.http_timeout,
        )
        stack.push_async_callback(plaid.close)
        atomic = AtomicClient(
            base_url=settings.atomic_base_url, api_key=settings.atomic_api_key, timeout=settings.http_timeout
        )
        stack.push_async_callback(atomic.close)
        store = Store(pool)
        publisher = Publisher(connection, topo, timeout=settings.publish_timeout)

        async def park(result: ParkedResult) -> None:  # confirmed, or PublishFailed
            await publisher.publish(
                topo.parked_queue,
                result.encode(),
                message_id=f"parked-{result.item_id}-{result.trigger.value}",
                to_queue=True,
            )

        yield Services(
            settings=settings,
            topo=topo,
            pool=pool,
            store=store,
            sealer=sealer,
            plaid=plaid,
            atomic=atomic,
            connection=connection,
            publisher=publisher,
            pipeline=Pipeline(
                store=store,
                sealer=sealer,
                plaid=plaid,
                atomic=atomic,
                lease_s=settings.item_lease_s,
                accept_caution=settings.accept_insights_caution,
                automated_expiry=timedelta(seconds=settings.automated_microdeposits_expiry_s),
                park=park,
            ),
        )
