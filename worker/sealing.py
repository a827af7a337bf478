"""Tokens at rest: AES-GCM with a key id stored beside each ciphertext.

The associated data binds a ciphertext to its row and column, so a sealed access token cannot be
copied into another Item's row (or into the processor-token column) and still open.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from worker.errors import TokenSealError

NONCE_BYTES = 12


@dataclass(frozen=True)
class Sealed:
    key_id: str
    blob: bytes  # nonce || ciphertext+tag


class Sealer:
    def __init__(self, keys: tuple[tuple[str, bytes], ...]) -> None:
        if not keys:
            raise TokenSealError("no token keys configured")
        self._active = keys[0][0]
        self._keys = {kid: AESGCM(key) for kid, key in keys}

    @property
    def active_key_id(self) -> str:
        return self._active

    def seal(self, plaintext: str, *, aad: str) -> Sealed:
        nonce = os.urandom(NONCE_BYTES)
        blob = nonce + self._keys[self._active].encrypt(nonce, plaintext.encode(), aad.encode())
        return Sealed(self._active, blob)

    def open(self, sealed: Sealed, *, aad: str) -> str:
        aead = self._keys.get(sealed.key_id)
        if aead is None:
            raise TokenSealError(f"token sealed with key {sealed.key_id!r}, which is not configured")
        nonce, ciphertext = sealed.blob[:NONCE_BYTES], sealed.blob[NONCE_BYTES:]
        try:
            return aead.decrypt(nonce, ciphertext, aad.encode()).decode()
        except InvalidTag:
            raise TokenSealError(f"token does not open with key {sealed.key_id!r}") from None
