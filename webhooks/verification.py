"""Plaid webhook verification: pure checks over the header token, the raw body and Plaid's JWK.

Nothing here does I/O or reads the clock; the caller passes ``now`` (Unix seconds). Every failure,
whatever the input, is a :class:`VerificationError` carrying a short machine-friendly ``reason``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, NoReturn, TypeGuard

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from worker.errors import PawError

ALGORITHM: Final = "ES256"
MAX_TOKEN_LEN: Final = 8 * 1024
MAX_KID_LEN: Final = 128
_ES256_SIG_LEN: Final = 64
_P256_COORD_LEN: Final = 32
_B64URL_SEGMENT: Final = re.compile(r"[A-Za-z0-9_-]+")
# PyJWT's ES256: it turns the JWS's raw r || s into DER and checks it with cryptography's ECDSA.
_ES256: Final = ECAlgorithm(ECAlgorithm.SHA256)


class VerificationError(PawError):
    """The webhook failed verification."""

    def __init__(
        self, reason: str, status: int = 401, *, kid: str | None = None, message: str | None = None
    ) -> None:
        super().__init__(message or f"The webhook failed verification: {reason}.")
        self.reason = reason
        self.status = status
        self.kid = kid


@dataclass(frozen=True)
class VerifiedWebhook:
    kid: str
    iat: int
    body_sha256: str


def _fail(reason: str, kid: str | None = None, status: int = 401) -> NoReturn:
    raise VerificationError(reason, status, kid=kid)


def _b64url_decode(segment: str) -> bytes | None:
    """Strict, canonical, unpadded base64url; None when the segment is anything else."""
    if not _B64URL_SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None
    # Refuse non-canonical spellings (unused low bits set) so one signature has one token.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != segment:
        return None
    return raw


def _is_number(value: object) -> TypeGuard[int | float]:
    """A JSON number we can compare: int (not bool, any size) or a finite float."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        names = [name for name, _ in pairs]
        raise ValueError(f"duplicate member {next(n for n in names if names.count(n) > 1)!r}")
    return result


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"non-standard JSON constant {name}")


def _segments(token: object) -> list[str]:
    """Shape checks on the compact JWS; its three segments."""
    if token is None or token == "":
        _fail("missing_header")
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LEN or not token.isascii():
        _fail("malformed_jwt")
    segments = token.split(".")
    if len(segments) != 3:
        _fail("malformed_jwt")
    return segments


def _json_object(raw: bytes, kid: str | None) -> dict[str, Any]:
    """A JWS segment's JSON object, read strictly (UTF-8, no duplicate member, no NaN/Infinity);
    anything else is ``malformed_jwt``. The header and the payload are read alike."""
    try:
        value = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants
        )
    except (ValueError, RecursionError):
        _fail("malformed_jwt", kid)
    if not isinstance(value, dict):
        _fail("malformed_jwt", kid)
    return value


@dataclass(frozen=True)
class _Jws:
    """A compact ES256 JWS whose shape passed: what :func:`verify` checks the signature over."""

    kid: str
    signing_input: bytes  # "<header>.<payload>", the bytes the signature covers (RFC 7515 §5.2)
    payload: bytes
    signature: bytes  # raw r || s, 64 bytes


@functools.lru_cache(maxsize=2048)
def _parse(token: str | None) -> _Jws:
    """The JWS's parts, decoded once per token: the receiver reads the kid before fetching the key,
    and :func:`verify` needs the rest a moment later (only results are cached, never a refusal)."""
    segments = _segments(token)
    kid = _header_kid(segments[0])
    payload, signature = _b64url_decode(segments[1]), _b64url_decode(segments[2])
    if payload is None or signature is None or len(signature) != _ES256_SIG_LEN:
        _fail("malformed_jwt", kid)
    signing_input = f"{segments[0]}.{segments[1]}".encode("ascii")
    return _Jws(kid=kid, signing_input=signing_input, payload=payload, signature=signature)


@functools.lru_cache(maxsize=256)
def _header_kid(segment: str) -> str:
    """The kid of an acceptable JWS header segment. Cached: every webhook Plaid signs with one key
    carries the same header (only results are cached, never a refusal)."""
    header_raw = _b64url_decode(segment)
    if header_raw is None:
        _fail("malformed_jwt")
    header = _json_object(header_raw, None)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg != ALGORITHM:
        _fail("bad_alg")
    kid = header.get("kid")
    if (
        not isinstance(kid, str)
        or not 0 < len(kid) <= MAX_KID_LEN
        or not kid.isascii()
        or not kid.isprintable()
    ):
        _fail("missing_kid")
    # We understand no JWS extensions; RFC 7515 says refuse what is marked critical. "b64" changes
    # what is signed, so it is refused even unmarked.
    if "crit" in header or "b64" in header:
        _fail("malformed_jwt", kid)
    return kid


def unverified_kid(token: str | None) -> str:
    """The ``kid`` of a Plaid-Verification token, read WITHOUT verifying anything but its shape.

    Refuses a missing token, an ``alg`` other than exactly ``ES256``, a missing or odd ``kid``, and
    anything that is not a compact ES256 JWS of sane size. Safe to call before fetching a key.
    """
    return _parse(token).kid


def _public_key(key: Mapping[str, Any], kid: str, now: float) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, Mapping):
        _fail("bad_key", kid)
    if key.get("kid") != kid:
        _fail("unknown_kid", kid)
    expired_at = key.get("expired_at")
    if expired_at is not None:
        if not _is_number(expired_at):
            _fail("bad_key", kid)
        if expired_at <= now:
            _fail("expired_key", kid)
    if (
        key.get("kty") != "EC"
        or key.get("crv") != "P-256"
        or key.get("alg", ALGORITHM) != ALGORITHM
        or key.get("use", "sig") != "sig"
    ):
        _fail("bad_key", kid)
    x, y = key.get("x"), key.get("y")
    if not isinstance(x, str) or not isinstance(y, str):
        _fail("bad_key", kid)
    public = _ec_point(x, y)
    if public is None:
        _fail("bad_key", kid)
    return public


@functools.lru_cache(maxsize=256)
def _ec_point(x: str, y: str) -> ec.EllipticCurvePublicKey | None:
    """The P-256 public key with these coordinates, or ``None`` if they are not one. Cached: Plaid
    has a handful of keys, and parsing one cost more than the signature check."""
    for coord in (x, y):
        raw = _b64url_decode(coord)
        if raw is None or len(raw) != _P256_COORD_LEN:
            return None
    try:
        # Only the public-key members: a stray "d" must never turn this into a private key.
        public = ECAlgorithm.from_jwk({"kty": "EC", "crv": "P-256", "x": x, "y": y})
    except (jwt.InvalidKeyError, ValueError, TypeError):
        return None
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(public.curve, ec.SECP256R1):
        return None
    return public


def verify(
    token: str,
    body: bytes,
    key: Mapping[str, Any],
    *,
    now: float,
    max_age_s: int = 300,
    future_skew_s: int = 30,
) -> VerifiedWebhook:
    """Verify a Plaid-Verification token against the raw request body and Plaid's JWK for its kid.

    ``now`` is Unix seconds. Accepts only a genuine ES256 signature by ``key`` whose ``iat`` is at
    most ``max_age_s`` old and at most ``future_skew_s`` ahead, and whose ``request_body_sha256``
    is the SHA-256 of exactly ``body``. Raises :class:`VerificationError` and nothing else.
    """
    jws = _parse(token)
    kid = jws.kid
    if not isinstance(body, bytes):
        _fail("bad_body", kid, status=400)
    public = _public_key(key, kid, now)
    # The signature, by PyJWT's ES256 (raw r || s to DER, then cryptography's ECDSA over SHA-256)
    # on the segments _parse already split and decoded; the header's alg was checked there.
    if not _ES256.verify(jws.signing_input, public, jws.signature):
        _fail("bad_signature", kid)
    claims = _json_object(jws.payload, kid)
    # Signature is good from here on; now bind it to time and to these exact bytes.
    iat = claims.get("iat")
    if not _is_number(iat):
        _fail("missing_iat", kid)
    # Comparisons (not subtractions) so a huge integer iat cannot overflow a float.
    if iat < now - max_age_s:
        _fail("stale_iat", kid)
    if iat > now + future_skew_s:
        _fail("future_iat", kid)

    claimed = claims.get("request_body_sha256")
    if not isinstance(claimed, str):
        _fail("missing_body_hash", kid)
    actual = hashlib.sha256(body).hexdigest()
    if not claimed.isascii() or not hmac.compare_digest(actual, claimed):
        _fail("body_hash_mismatch", kid)
    return VerifiedWebhook(kid=kid, iat=int(iat), body_sha256=actual)
