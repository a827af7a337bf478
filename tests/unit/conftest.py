"""Unit tests run without Postgres or RabbitMQ (`pytest tests/unit` with both stopped passes): a unit
test that asks for a service fails here at once, instead of quietly becoming an integration test."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def service_urls() -> tuple[str, str]:
    raise pytest.fail.Exception("a unit test asked for Postgres or RabbitMQ: it belongs in tests/integration")
