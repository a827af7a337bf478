"""Tokens at rest: AES-GCM with a key id stored beside each ciphertext; the check that every key in
use opens its rows, and online rotation to a new key.

The associated data binds a ciphertext to its row and column, so a sealed access token cannot be
copied into another Item's row (or into the processor-token column) and still open.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable

import asyncpg
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from worker.errors import TokenSealError
from worker.items.model import Sealed
from worker.sql import query

NONCE_BYTES = 12


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


# -- The keys in use: a start-up check that every sealed row opens, and online rotation ----------
#
# Rotation: deploy ``PAW_TOKEN_KEYS`` with the new key first and the old ones after (every process
# then seals with the new key and still opens the old), then run ``paw keys rotate``. It re-seals rows
# in batches, each batch one transaction over rows it locked with ``SKIP LOCKED`` (a worker mid-Item
# is never blocked; its row is taken in a later batch), so it can run while the worker works, be
# killed at any point, and be run again to finish. When it reports zero rows left, drop the old key.

log = structlog.get_logger(__name__)


async def check_keys(pool: asyncpg.Pool, sealer: Sealer) -> dict[str, bool]:
    """Fails loudly (:class:`TokenSealError`) unless every key id in use is configured and opens a
    row sealed with it. Returns key id -> opened."""
    checked: dict[str, bool] = {}
    for row in await pool.fetch(query("sealed_key_ids")):
        key_id = row["key_id"]
        sealer.open(Sealed(key_id, bytes(row["sealed"])), aad=aad(row["id"], row["col"]))  # raises if wrong
        checked[key_id] = True
    return checked


async def remaining(pool: asyncpg.Pool, sealer: Sealer) -> int:
    count: int = await pool.fetchval(query("count_not_on_key"), sealer.active_key_id)
    return count


def _reseal(
    sealer: Sealer, item_id: uuid.UUID, column: str, key_id: str | None, blob: bytes | None
) -> Sealed | None:
    if key_id is None or blob is None:
        return None
    sealed = Sealed(key_id, bytes(blob))
    if key_id == sealer.active_key_id:
        return sealed
    plaintext = sealer.open(sealed, aad=aad(item_id, column))
    return sealer.seal(plaintext, aad=aad(item_id, column))


async def rotate(
    pool: asyncpg.Pool,
    sealer: Sealer,
    *,
    batch: int = 500,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Re-seals every row to the active key; returns how many rows it re-sealed."""
    done = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(query("lock_batch_not_on_key"), sealer.active_key_id, batch)
            for r in rows:
                access = _reseal(
                    sealer, r["id"], "access_token", r["access_token_key_id"], r["access_token_sealed"]
                )
                processor = _reseal(
                    sealer,
                    r["id"],
                    "processor_token",
                    r["processor_token_key_id"],
                    r["processor_token_sealed"],
                )
                await conn.execute(
                    query("reseal"),
                    r["id"],
                    access.key_id if access else None,
                    access.blob if access else None,
                    processor.key_id if processor else None,
                    processor.blob if processor else None,
                )
        done += len(rows)
        if on_batch is not None:
            on_batch(len(rows))
        if not rows:
            if await remaining(pool, sealer) == 0:
                log.info("keys.rotated", rows=done, key_id=sealer.active_key_id)
                return done
            await asyncio.sleep(0.05)  # only rows a worker holds right now are left: they free up soon


def aad(item_id: uuid.UUID, column: str) -> str:
    return f"items/{item_id}/{column}"
