"""Log redaction covers fields, messages and Plaid's exceptions, in both formats. No services."""

from __future__ import annotations

import json

import plaid
import pytest
import structlog

from worker import logs
from worker.redact import redact_text


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
