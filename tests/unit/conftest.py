"""Unit tests run without Postgres or RabbitMQ (`pytest tests/unit` with both stopped passes): a unit
test that asks for a service fails here at once, instead of quietly becoming an integration test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from sandbox.receiver import WebhookReceiver
from tests.helpers import Sandbox, plaid_api_for


@pytest.fixture(scope="session")
def service_urls() -> tuple[str, str]:
    raise pytest.fail.Exception("a unit test asked for Postgres or RabbitMQ: it belongs in tests/integration")


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[Any]:
    """plaid-python, unmodified, talking to this test's emulator."""
    api = plaid_api_for(sandbox)
    yield api
    api.api_client.rest_client.pool_manager.clear()


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    """Where the emulator's webhooks land in a unit test (paw's receiver is not running here)."""
    rx = WebhookReceiver()
    await rx.start()
    try:
        yield rx
    finally:
        await rx.close()
