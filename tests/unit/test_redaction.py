"""Log redaction covers fields, messages and Plaid's exceptions, in both formats. No services."""

from __future__ import annotations

import json

import plaid
import pytest
import structlog
from hypothesis import example, given, settings
from hypothesis import strategies as st

from worker import logs
from worker.redact import HEADER_IN_TEXT, MASK, TOKEN, URL_PASSWORD, redact_text


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_log_redaction_covers_fields_messages_and_plaid_exceptions(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure(fmt, "debug")
    try:
        log = structlog.get_logger("test")
        token = "access-sandbox-12345678-1234-1234-1234-123456789abc"
        log.info("plain", access_token=token, note=f"exchanged {token}", nested={"x": [token]})
        error = plaid.ApiException(status=400, reason="Bad Request")
        error.body = json.dumps({"error_code": "INVALID_ACCESS_TOKEN", "error_message": f"bad token {token}"})
        try:
            raise error
        except plaid.ApiException:
            log.exception("boom")
        log.info("auth", headers={"Authorization": "Bearer sekret-value", "PLAID-SECRET": "s3cr3t"})
    finally:
        logs.reset()
    text = capsys.readouterr().err
    assert "12345678-1234" not in text and "sekret-value" not in text and "s3cr3t" not in text
    assert text.count("[redacted]") >= 6


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (
            "Got more than 8190 bytes when reading: b'Authorization: Bearer sk-live-abc123'...",
            "sk-live-abc123",
        ),
        ("headers={'authorization': 'Basic dXNlcjpwYXNz', 'accept': '*/*'}", "dXNlcjpwYXNz"),
        ('{"PLAID-SECRET": "s3cr3t-value", "x": 1}', "s3cr3t-value"),
        ("proxy-authorization=tok3n-value;", "tok3n-value"),
        ("connect to postgresql://paw:pg-pass-word@db:5432/paw failed", "pg-pass-word"),
        ("amqp://guest:guest-secret@rabbitmq:5672/ refused", "guest-secret"),
    ],
)
def test_credentials_quoted_inside_text_are_masked(text: str, secret: str) -> None:
    out = redact_text(text)
    assert secret not in out and "[redacted]" in out


def test_text_without_credentials_is_left_alone() -> None:
    for text in (
        "authorization failed",
        "http://127.0.0.1:8080/webhooks/plaid",
        "missing_authorization: 401",
    ):
        assert redact_text(text) == text


def _three_passes(text: str) -> str:
    """redact_text without its pre-check: the three substitutions on every text."""
    text = TOKEN.sub(lambda m: f"{m[1]}-{m[2]}-{MASK}", text)
    text = HEADER_IN_TEXT.sub(lambda m: f"{m[1]}{m[2]}{m[3] or ''}{MASK}", text)
    return URL_PASSWORD.sub(lambda m: f"{m[1]}{MASK}@", text)


PIECES = [
    "access",
    "public",
    "processor",
    "link",
    "-",
    "sandbox",
    "Production",
    "development",
    "abc123",
    "Authorization",
    "PROXY-authorization",
    "Plaid-Secret",
    "plaid-verification",
    "X-Atomic-Signature",
    ": ",
    "=",
    "'",
    '"',
    "Bearer ",
    "basic ",
    "token ",
    "amqp://",
    "guest:guest@",
    "host/",
    " ",
    "@",
    ":",
]


@given(st.lists(st.sampled_from(PIECES) | st.text(max_size=6), max_size=14).map("".join))
@settings(max_examples=600, deadline=None)
@example("amqp://guest:guest@localhost/")
@example("exchanged access-sandbox-1234-abcd")
@example("the link-production-x1 token")
@example("{'PLAID-SECRET': 's3cr3t'}")
@example("proxy-authorization=basic abc")
def test_the_pre_check_never_lets_a_text_through_that_the_patterns_would_change(text: str) -> None:
    assert redact_text(text) == _three_passes(text)
