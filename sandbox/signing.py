"""Webhook signatures: Plaid's ES256 ``Plaid-Verification`` JWT and Atomic's HMAC header."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec


@dataclasses.dataclass
class SigningKey:
    """One P-256 key pair, as Plaid publishes it through ``/webhook_verification_key/get``."""

    kid: str
    private_key: ec.EllipticCurvePrivateKey
    created_at: int
    expired_at: int | None = None

    def jwk(self) -> dict[str, Any]:
        numbers = self.private_key.public_key().public_numbers()
        return {
            "alg": "ES256",
            "crv": "P-256",
            "kid": self.kid,
            "kty": "EC",
            "use": "sig",
            "x": _b64url(numbers.x.to_bytes(32, "big")),
            "y": _b64url(numbers.y.to_bytes(32, "big")),
            "created_at": self.created_at,
            "expired_at": self.expired_at,
        }


def new_signing_key(now: int) -> SigningKey:
    return SigningKey(
        kid=str(uuid.uuid4()), private_key=ec.generate_private_key(ec.SECP256R1()), created_at=now
    )


def body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def plaid_verification_jwt(body: bytes, key: SigningKey, iat: int) -> str:
    """The ``Plaid-Verification`` header for ``body``: ES256 over {iat, request_body_sha256}."""
    claims = {"iat": iat, "request_body_sha256": body_sha256(body)}
    return jwt.encode(claims, key.private_key, algorithm="ES256", headers={"kid": key.kid, "typ": "JWT"})


def atomic_signature(body: bytes, secret: str) -> str:
    """The ``X-Atomic-Signature`` header for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
