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


# Something each of the three patterns above needs, in lower case: a text holding none of it is
# returned as it is, after a few substring tests instead of three substitutions (most logged values
# are ids, states and codes). A regular expression for the same test took four times as long.
SECRET_MARKS = (
    "-sandbox-",
    "-development-",
    "-production-",
    "authorization",
    "plaid-secret",
    "plaid-verification",
    "x-atomic-signature",
    "://",
)
# HEADER_IN_TEXT matches without regard to case, where Python also takes three letters for ASCII
# ones that str.lower() does not turn into them: U+0130 and U+0131 for i, U+017F for s (tests/unit
# check the list).
_FOLD = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s"})


def may_hold_secret(text: str) -> bool:
    """Whether any of the three patterns could match ``text`` (never False where one could)."""
    folded = text.lower() if text.isascii() else text.translate(_FOLD).lower()
    for mark in SECRET_MARKS:
        if mark in folded:
            return True
    return False


def redact_text(text: str) -> str:
    if not may_hold_secret(text):
        return text
    text = TOKEN.sub(lambda m: f"{m[1]}-{m[2]}-{MASK}", text)
    text = HEADER_IN_TEXT.sub(lambda m: f"{m[1]}{m[2]}{m[3] or ''}{MASK}", text)
    return URL_PASSWORD.sub(lambda m: f"{m[1]}{MASK}@", text)


# Values a flat mapping may hold and still be checked in one search (bool is named: it is an int).
_PLAIN = frozenset({int, float, bool, type(None)})


def _plain_and_clean(mapping: Mapping[Any, Any]) -> bool:
    """Whether ``mapping`` needs no masking, decided with one search: every key a string naming no
    secret, every value a string or a plain scalar, and none of the strings holding anything
    :func:`may_hold_secret` finds. The strings are searched joined by NUL, which no mark holds:
    a mark inside any one of them is still found, and one across two only sends the mapping down
    the field-by-field path (a log line's fields are mostly ids, states and codes)."""
    texts: list[str] = []
    for k, v in mapping.items():
        if not isinstance(k, str) or k.lower() in SECRET_KEYS:
            return False
        if type(v) is str:
            texts.append(v)
        elif type(v) not in _PLAIN:
            return False
    return not may_hold_secret("\0".join(texts))


def redact(value: Any, _depth: int = 0) -> Any:
    """A copy of ``value`` with token-shaped strings and secret-named fields masked."""
    if _depth > 32:
        return MASK
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        if _plain_and_clean(value):
            return dict(value)
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
