"""The name and URL of ``paw demo``'s own database, from DATABASE_URL; no service needed."""

from __future__ import annotations

import pytest

from worker.cli.demo import database_name, demo_database_url, refuse, shown_url
from worker.errors import PawError


@pytest.mark.parametrize(
    ("configured", "demo"),
    [
        ("postgresql://postgres@127.0.0.1:5432/paw", "postgresql://postgres@127.0.0.1:5432/paw_demo"),
        (
            "postgres://u:pw@db.internal/funding?sslmode=require",
            "postgres://u:pw@db.internal/funding_demo?sslmode=require",
        ),
        ("postgresql://alice@localhost", "postgresql://alice@localhost/alice_demo"),  # libpq: the user's
    ],
)
def test_the_demo_database_sits_beside_the_configured_one(configured: str, demo: str) -> None:
    assert demo_database_url(configured) == demo
    assert database_name(demo) == database_name(configured) + "_demo"


def test_a_name_postgres_would_truncate_is_refused() -> None:
    with pytest.raises(PawError, match="63 bytes"):
        demo_database_url("postgresql://h/" + "x" * 59)
    assert demo_database_url("postgresql://h/" + "x" * 58).endswith("x" * 58 + "_demo")


def test_the_printed_url_masks_the_password() -> None:
    assert shown_url("postgresql://u:s3cret@h:5432/paw_demo") == "postgresql://u:****@h:5432/paw_demo"
    assert shown_url("postgresql://u@h/paw_demo") == "postgresql://u@h/paw_demo"


@pytest.mark.parametrize("env", ["production", "Production", " production "])
def test_production_is_refused_however_it_is_written(env: str) -> None:
    assert refuse({"PLAID_ENV": env})
    assert refuse({"PLAID_ENV": "sandbox"}) is None and refuse({}) is None
