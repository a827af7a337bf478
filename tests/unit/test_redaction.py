"""Log redaction covers fields, messages and Plaid's exceptions, in both formats. No services."""

from __future__ import annotations

import json

import plaid
import pytest
import structlog

from worker import logs


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
