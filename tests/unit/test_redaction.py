"""Log redaction covers fields, messages and Plaid's exceptions, in both formats. No services."""

from __future__ import annotations

import json
import re
import sys

import plaid
import pytest
import structlog
from hypothesis import example, given, settings
from hypothesis import strategies as st

from worker import logs
from worker.redact import (
    _FOLD,
    HEADER_IN_TEXT,
    MASK,
    SECRET_KEYS,
    SECRET_MARKS,
    TOKEN,
    URL_PASSWORD,
    redact,
    redact_text,
)


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
    "Pla\u0131d-\u017fecret",
    "author\u0130zation",
    "X-ATOM\u0130C-S\u0130GNATURE",
]


@given(st.lists(st.sampled_from(PIECES) | st.text(max_size=6), max_size=14).map("".join))
@settings(max_examples=600, deadline=None)
@example("amqp://guest:guest@localhost/")
@example("exchanged access-sandbox-1234-abcd")
@example("the link-production-x1 token")
@example("{'PLAID-SECRET': 's3cr3t'}")
@example("proxy-authorization=basic abc")
@example("Pla\u0131d-\u017fecret: s3cr3t")
@example("author\u0130zation=bearer abc")
def test_the_pre_check_never_lets_a_text_through_that_the_patterns_would_change(text: str) -> None:
    assert redact_text(text) == _three_passes(text)


def test_the_pre_check_folds_every_letter_that_case_insensitive_matching_takes_for_a_marks_own() -> None:
    """HEADER_IN_TEXT ignores case as Python's re does, which takes a few non-ASCII letters for
    ASCII ones (U+0130 and U+0131 for i); the pre-check must fold each of them, or it would let one through."""
    everything = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    for letter in sorted({c for mark in SECRET_MARKS for c in mark if c.isalpha()}):
        for same in re.findall(f"(?i){letter}", everything):
            assert same.translate(_FOLD).lower() == letter, (letter, hex(ord(same)))


VALUES = st.one_of(
    st.lists(st.sampled_from(PIECES) | st.text(max_size=6), max_size=8).map("".join),
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
)
KEYS = st.sampled_from(["event", "item_id", "error", "Access_Token", "password", "url", "x"]) | st.text(
    max_size=5
)


@given(st.dictionaries(KEYS, VALUES, max_size=8))
@settings(max_examples=400, deadline=None)
@example({"event": "webhook.accepted", "url": "amqp://guest:guest@host/"})
@example({"event": "a", "note": "Pla\u0131d-\u017fecret"})
@example({"access_token": None, "event": "x"})
def test_a_flat_mapping_is_masked_as_field_by_field_masking_would(fields: dict[str, object]) -> None:
    expected = {
        k: MASK if k.lower() in SECRET_KEYS and v is not None else redact_text(v) if isinstance(v, str) else v
        for k, v in fields.items()
    }
    assert redact(fields) == expected
