"""Configuration that explains itself: one table of settings behind load(), paw --help, paw config and
the README; every error at once; choices in any case; secrets from files; paw --version; connection
errors that name the service. No broker or database needed (nothing listens where these point)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, free_port
from worker import version
from worker.errors import SettingsError, UpstreamError
from worker.reach import explain, location
from worker.settings import (
    ENV,
    FIELD_DEFAULTS,
    MASKED,
    REQUIRED_IN_PRODUCTION,
    effective,
    load,
    markdown,
    mask_url,
    names,
    readme_table,
    show,
)

DEFAULT_PREFETCH = FIELD_DEFAULTS["prefetch"]

KEY = "k1:" + "A" * 43 + "="


def paw(*args: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess[str]:
    """``paw <args>`` as a subprocess, with ``env`` on top of the (settings-free) test environment."""
    return subprocess.run(  # noqa: S603 - this interpreter, our own module
        [sys.executable, "-m", "worker.cli", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        load(env)
    return caught.value.problems


def test_every_error_is_reported_at_once() -> None:
    found = problems(
        {"AMQP_URL": "bad", "DATABASE_URL": "bad", "PAW_PREFETCH": "many", "PAW_LOG_LEVEL": "INFO"}
    )
    assert [p.split()[0] for p in found] == ["DATABASE_URL", "AMQP_URL", "PAW_PREFETCH"]
    assert "'bad'" in found[0] and "postgresql://" in found[0]


def test_production_names_every_missing_secret_at_once() -> None:
    found = problems({"PLAID_ENV": "Production", "PLAID_SECRET": "x" * 20})
    assert found == [
        f"{v} is required when PLAID_ENV=production" for v in REQUIRED_IN_PRODUCTION if v != "PLAID_SECRET"
    ]


def test_paw_worker_reports_both_url_errors_and_exits_2() -> None:
    done = paw("worker", PAW_LOG_LEVEL="INFO", AMQP_URL="bad", DATABASE_URL="bad")
    assert done.returncode == 2, done.stderr
    assert "2 configuration errors" in done.stderr
    assert "DATABASE_URL must be" in done.stderr and "AMQP_URL must be" in done.stderr
    assert "Traceback" not in done.stderr and "PAW_LOG_LEVEL" not in done.stderr


@pytest.mark.parametrize(
    ("var", "raw", "field", "value"),
    [
        ("PAW_LOG_LEVEL", "INFO", "log_level", "info"),
        ("PAW_LOG_LEVEL", "Warn", "log_level", "warning"),
        ("PAW_LOG_FORMAT", " JSON ", "log_format", "json"),
        ("PLAID_ENV", "Sandbox", "plaid_env", "sandbox"),
    ],
)
def test_choices_take_any_case(var: str, raw: str, field: str, value: str) -> None:
    assert getattr(load({var: raw}), field) == value


@pytest.mark.parametrize("raw", ["nan", "inf", "-1", "0"])
def test_numbers_must_be_finite_and_positive(raw: str) -> None:
    assert problems({"PAW_HTTP_TIMEOUT": raw})[0].startswith("PAW_HTTP_TIMEOUT must be a positive number")


def test_a_malformed_url_is_quoted_without_its_password() -> None:
    for raw in (
        "postgresql//paw:hunter2@db/paw",
        "mysql://paw:hunter2@db/paw",
        "postgresql://paw:hunter2@db:99999/x",
    ):
        (found,) = problems({"DATABASE_URL": raw})
        assert found.startswith("DATABASE_URL must be") and "hunter2" not in found


def test_a_secret_comes_from_its_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cret-from-file\n")
    (tmp_path / "keys").write_text(f"{KEY}\r\n")
    s = load({"PLAID_SECRET_FILE": str(tmp_path / "secret"), "PAW_TOKEN_KEYS_FILE": str(tmp_path / "keys")})
    assert s.plaid_secret == "s3cret-from-file"
    assert s.active_key_id == "k1"


def test_secret_files_that_cannot_be_used_are_errors(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cret\n")
    (tmp_path / "empty").write_text("\n")
    found = problems(
        {
            "PLAID_SECRET": "also-set",
            "PLAID_SECRET_FILE": str(tmp_path / "secret"),
            "ATOMIC_API_KEY_FILE": str(tmp_path / "missing"),
            "ATOMIC_WEBHOOK_SECRET_FILE": str(tmp_path / "empty"),
            "PAW_API_KEYS_FILE": str(tmp_path),
        }
    )
    assert found == [
        "PLAID_SECRET and PLAID_SECRET_FILE are both set: keep one",
        f"ATOMIC_API_KEY_FILE: cannot read {tmp_path / 'missing'}: No such file or directory",
        "ATOMIC_WEBHOOK_SECRET (from ATOMIC_WEBHOOK_SECRET_FILE) is set but empty",
        f"PAW_API_KEYS_FILE: cannot read {tmp_path}: Is a directory",
    ]


def test_only_secrets_have_a_file_form() -> None:
    assert "PLAID_SECRET_FILE" in names() and "PAW_PREFETCH_FILE" not in names()
    assert load({"PAW_PREFETCH_FILE": "/nonexistent"}).prefetch == DEFAULT_PREFETCH  # not a setting: ignored


def test_the_table_covers_every_field_once() -> None:
    fields = [v.field for v in ENV.values()]
    assert sorted(fields) == sorted(FIELD_DEFAULTS), "every Settings field needs its line in ENV"
    for var in ENV.values():
        assert var.meaning and "\n" not in var.meaning, var.env


def test_each_default_as_shown_is_the_default() -> None:
    """Where the table shows the field's own default, it parses back to that default."""
    for var in ENV.values():
        if var.shown_default is None:
            assert var.parse(var.env, var.default) == FIELD_DEFAULTS[var.field], var.env


def test_only_what_production_requires_is_sandbox_only() -> None:
    sandbox_only = {v.env for v in ENV.values() if "sandbox only" in v.default}
    assert sandbox_only == set(REQUIRED_IN_PRODUCTION)


def test_secrets_are_masked_wherever_shown() -> None:
    s = load(
        {"PLAID_SECRET": "s3cret", "PAW_TOKEN_KEYS": KEY, "DATABASE_URL": "postgresql://paw:hunter2@db/paw"}
    )
    assert show(ENV["PLAID_SECRET"], s.plaid_secret) == MASKED
    assert show(ENV["PAW_TOKEN_KEYS"], s.token_keys) == f"k1:{MASKED}"
    assert show(ENV["DATABASE_URL"], s.database_url) == "postgresql://paw:***@db/paw"
    assert show(ENV["PAW_PREFETCH"], s.prefetch) == str(DEFAULT_PREFETCH)
    assert mask_url("amqp://guest:guest@[::1]:5672/") == "amqp://guest:***@[::1]:5672/"
    shown = effective(s)
    assert list(shown) == list(ENV) and shown["PAW_PREFETCH"] == str(DEFAULT_PREFETCH)
    assert "s3cret" not in str(shown) and "hunter2" not in str(shown)
    assert shown["PLAID_SECRET"] == shown["ATOMIC_API_KEY"] == MASKED  # a default secret is masked too


def test_readme_configuration_table_is_made_from_the_settings_table() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    assert readme_table(readme) == markdown(), (
        "README.md's Configuration table differs from worker/settings.py ENV; regenerate it with\n"
        "    python -m worker.settings --write README.md"
    )


def test_help_lists_every_setting_with_meaning_default_and_value() -> None:
    done = paw("--help", PAW_PREFETCH="128", PLAID_SECRET="s3cret-in-help")
    assert done.returncode == 0, done.stderr
    flat = " ".join(done.stdout.split())  # the help wraps long lines
    for var in ENV.values():
        assert var.env in done.stdout and " ".join(var.meaning.split()) in flat, var.env
    assert "default 256; now 128" in flat
    assert "s3cret-in-help" not in done.stdout and f"now {MASKED}" in flat


def test_paw_config_shows_what_the_processes_would_read(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cret-in-file\n")
    done = paw(
        "config",
        "--json",
        PLAID_SECRET_FILE=str(tmp_path / "secret"),
        PAW_LOG_LEVEL="DEBUG",
        DATABASE_URL="postgresql://paw:hunter2@db:5432/paw",
        PAW_LOG_LEVL="debug",
    )
    assert done.returncode == 0, done.stderr
    assert "s3cret-in-file" not in done.stdout and "hunter2" not in done.stdout
    out = json.loads(done.stdout)
    rows = {r["variable"]: r for r in out["settings"]}
    assert list(rows) == list(ENV)
    assert rows["PLAID_SECRET"] | {"meaning": ""} == {
        "variable": "PLAID_SECRET",
        "value": MASKED,
        "source": f"file {tmp_path / 'secret'}",
        "default": ENV["PLAID_SECRET"].default,
        "meaning": "",
        "secret": True,
        "problem": None,
    }
    assert rows["PAW_LOG_LEVEL"]["value"] == "debug"
    assert rows["DATABASE_URL"]["value"] == "postgresql://paw:***@db:5432/paw"
    assert rows["PAW_PREFETCH"]["source"] == "default" and rows["PAW_PREFETCH"]["value"] == str(
        DEFAULT_PREFETCH
    )
    assert out["not_settings"] == ["PAW_LOG_LEVL"] and out["problems"] == []
    assert out["version"] == version()


def test_paw_config_shows_every_problem_and_exits_2() -> None:
    done = paw("config", AMQP_URL="bad", PAW_PREFETCH="many")
    assert done.returncode == 2
    assert "INVALID: AMQP_URL must be" in done.stdout and "INVALID: PAW_PREFETCH must be" in done.stdout
    assert "2 configuration errors" in done.stdout


def test_paw_version_comes_from_the_package_metadata() -> None:
    from importlib import metadata

    done = paw("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"paw {metadata.version('plaid-atomic-worker')}"


@pytest.mark.parametrize("command", [["worker"], ["migrate"], ["status"]])
def test_a_postgres_that_refuses_is_named_with_its_variable(command: list[str]) -> None:
    port = free_port()  # nothing listens there: the same error as a stopped Postgres
    done = paw(
        *command,
        DATABASE_URL=f"postgresql://paw:hunter2@127.0.0.1:{port}/paw",
        PLAID_BASE_URL="http://127.0.0.1:9",  # the emulator's place: paw refuses Plaid itself with its keys
        PAW_LOG_FORMAT="json",
    )
    said = f"Postgres at 127.0.0.1:{port}/paw (DATABASE_URL) refused the connection"
    if command == ["status"]:  # a check: critical, in its one line on stdout
        assert done.returncode == 2 and done.stdout == f"CRITICAL: cannot read the status: {said}\n"
    else:
        assert done.returncode == 1, done.stderr
        assert f"paw: {said}" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout and "Traceback" not in done.stderr


def test_locations_name_no_user_or_password() -> None:
    assert location("amqp://paw:hunter2@mq.internal/vhost", 5672) == "mq.internal:5672/vhost"
    assert location("postgresql://paw:hunter2@[::1]:6432/paw", 5432) == "[::1]:6432/paw"


def test_an_unreachable_upstream_is_named_with_its_variable() -> None:
    s = load({"PLAID_BASE_URL": "http://127.0.0.1:9", "ATOMIC_BASE_URL": "https://atomic.example/api"})
    plaid = UpstreamError("Plaid unreachable: MaxRetryError", service="plaid", error_code="NETWORK_ERROR")
    atomic = UpstreamError("Atomic unreachable: ClientError", service="atomic", error_code="NETWORK_ERROR")
    assert explain(plaid, s).startswith("Plaid at http://127.0.0.1:9 (PLAID_BASE_URL) could not be reached")
    assert explain(atomic, s).startswith("Atomic at https://atomic.example/api (ATOMIC_BASE_URL) could not")
    assert explain(plaid, load({})).startswith("Plaid at https://sandbox.plaid.com (PLAID_ENV)")
    other = UpstreamError("Plaid INVALID_INPUT: no", service="plaid", error_code="INVALID_INPUT")
    assert explain(other, s) == "Plaid INVALID_INPUT: no"
