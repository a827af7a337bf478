"""Redaction of Plaid tokens and secrets: one function used by the log processor, error messages,
the HTTP error bodies and everything the CLI prints."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# access-sandbox-<uuid>, public-production-..., processor-sandbox-..., link-..., and the like.
TOKEN = re.compile(r"\b(access|public|processor|link)-(sandbox|development|production)-[A-Za-z0-9-]+")
SECRET_KEYS = frozenset(
    {
        "access_token",
        "public_token",
        "processor_token",
        "secret",
        "plaid_secret",
        "client_secret",
        "authorization",
        "plaid-secret",
        "api_key",
        "password",
        "token_keys",
        "x-atomic-signature",
        "plaid-verification",
    }
)
MASK = "[redacted]"
# A credential header quoted inside text (an exception message, a library's log line, a repr):
# "Authorization: Bearer x", b'authorization: Basic x', {'PLAID-SECRET': 'x'}.
HEADER_IN_TEXT = re.compile(
    r"(?i)\b(authorization|proxy-authorization|plaid-secret|plaid-verification|x-atomic-signature)"
    r"(['\"]?\s*[:=]\s*['\"]?)((?:bearer|basic|token)\s+)?[^\s'\",;}]+"
)
# The password of a URL: postgresql://user:password@host/db, amqp://guest:guest@host/
URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@")


# Something each of the three patterns above needs: a text without any of it is returned as it is,
# after one search instead of three substitutions (most logged values are ids, states and codes).
MAY_HOLD_SECRET = re.compile(
    r"(?i)-(?:sandbox|development|production)-|authorization|plaid-secret|plaid-verification"
    r"|x-atomic-signature|://"
)


def redact_text(text: str) -> str:
    if MAY_HOLD_SECRET.search(text) is None:
        return text
    text = TOKEN.sub(lambda m: f"{m[1]}-{m[2]}-{MASK}", text)
    text = HEADER_IN_TEXT.sub(lambda m: f"{m[1]}{m[2]}{m[3] or ''}{MASK}", text)
    return URL_PASSWORD.sub(lambda m: f"{m[1]}{MASK}@", text)


def redact(value: Any, _depth: int = 0) -> Any:
    """A copy of ``value`` with token-shaped strings and secret-named fields masked."""
    if _depth > 32:
        return MASK
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            k: (
                MASK
                if isinstance(k, str) and k.lower() in SECRET_KEYS and v is not None
                else redact(v, _depth + 1)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v, _depth + 1) for v in value]
    if isinstance(value, bytes):
        return redact_text(value.decode("utf-8", "replace"))
    return value
