"""Plaid webhook verification keys by kid, the whole story: the cache (single-flight fetch, negative
cache, fetch throttle), the fetcher over Plaid's ``/webhook_verification_key/get``, and whether that
endpoint is answering.

No I/O of its own: the caller supplies ``fetch(kid)``, which returns Plaid's JWK as a mapping or raises
:class:`UnknownKey` when Plaid answers ``INVALID_WEBHOOK_VERIFICATION_KEY_ID``. Any other exception is
transient: every caller waiting on that fetch gets it, and nothing is cached.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

import structlog

from worker.errors import PawError, UpstreamError

log = structlog.get_logger(__name__)

# After a failed refresh of a cached key, keep serving the cached copy and try again this much later.
_REFRESH_RETRY_S = 60.0


class UnknownKey(PawError):
    """Plaid does not know this key id."""


class KeyFetchThrottled(PawError):
    """Too many new webhook key ids at once; the key was not fetched."""


@dataclasses.dataclass
class _Entry:
    key: Mapping[str, Any]
    refresh_at: float


class KeyCache:
    """Plaid's JWKs by kid.

    * A cached key is returned at once. Keys whose ``expired_at`` is set are cached for good (the
      verifier refuses them; fetching them again would change nothing). Other keys are re-fetched
      after ``refresh_after_s`` so that a key Plaid later expires stops being trusted, as Plaid's own
      example does; if that refresh fails transiently or is throttled, the cached copy is served.
    * One fetch per kid at a time, shared by every concurrent caller; a cancelled caller stops waiting
      but does not cancel the fetch.
    * :class:`UnknownKey` is remembered for ``negative_ttl_s`` (at most ``max_negative`` kids, oldest
      dropped first).
    * Starting a fetch takes a token from a bucket refilled at ``fetch_rate_per_s`` up to
      ``fetch_burst``; with none left, :class:`KeyFetchThrottled` is raised without fetching, so a
      flood of made-up kids cannot turn the receiver into an amplifier against Plaid.
    """

    def __init__(
        self,
        fetch: Callable[[str], Awaitable[Mapping[str, Any]]],
        *,
        negative_ttl_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        max_negative: int = 10_000,
        max_keys: int = 1_000,
        fetch_rate_per_s: float = 1.0,
        fetch_burst: int = 10,
        refresh_after_s: float | None = 3600.0,
    ) -> None:
        if negative_ttl_s < 0 or max_negative < 1 or max_keys < 1:
            raise ValueError("negative_ttl_s must be >= 0 and max_negative, max_keys >= 1")
        if fetch_rate_per_s <= 0 or fetch_burst < 1:
            raise ValueError("fetch_rate_per_s must be > 0 and fetch_burst >= 1")
        if refresh_after_s is not None and refresh_after_s <= 0:
            raise ValueError("refresh_after_s must be > 0 or None")
        self._fetch = fetch
        self._clock = clock
        self._negative_ttl_s = negative_ttl_s
        self._max_negative = max_negative
        self._max_keys = max_keys
        self._rate = fetch_rate_per_s
        self._burst = float(fetch_burst)
        self._refresh_after_s = refresh_after_s
        self._keys: OrderedDict[str, _Entry] = OrderedDict()
        self._negative: OrderedDict[str, float] = OrderedDict()  # kid -> forget at (clock)
        self._in_flight: dict[str, asyncio.Task[Mapping[str, Any]]] = {}
        self._tokens = self._burst
        self._tokens_at = clock()
        self._counts = {"fetches": 0, "hits": 0, "negative_hits": 0, "throttled": 0, "coalesced": 0}

    async def get(self, kid: str) -> Mapping[str, Any]:
        """Plaid's JWK for ``kid`` (read-only). Raises UnknownKey, KeyFetchThrottled or the fetch's error."""
        now = self._clock()
        entry = self._keys.get(kid)
        if entry is not None:
            self._keys.move_to_end(kid)
            if now < entry.refresh_at:
                self._counts["hits"] += 1
                return entry.key
            try:
                return await self._shared_fetch(kid)
            except UnknownKey:
                raise
            except Exception:
                # Stale-if-error: the copy we hold was good; try again a little later.
                entry.refresh_at = now + min(_REFRESH_RETRY_S, self._refresh_after_s or _REFRESH_RETRY_S)
                self._counts["hits"] += 1
                return entry.key
        forget_at = self._negative.get(kid)
        if forget_at is not None:
            if now < forget_at:
                self._counts["negative_hits"] += 1
                raise UnknownKey()
            del self._negative[kid]
        return await self._shared_fetch(kid)

    def stats(self) -> dict[str, int]:
        """Counters (fetches, hits, negative_hits, throttled, coalesced) and current sizes."""
        return {
            **self._counts,
            "keys": len(self._keys),
            "negative": len(self._negative),
            "in_flight": len(self._in_flight),
        }

    async def aclose(self) -> None:
        """Cancel fetches still in flight (for shutdown) and wait for them to finish."""
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _shared_fetch(self, kid: str) -> Mapping[str, Any]:
        task = self._in_flight.get(kid)
        if task is None:
            if not self._take_token():
                self._counts["throttled"] += 1
                raise KeyFetchThrottled()
            task = asyncio.get_running_loop().create_task(self._fetch_and_store(kid))
            self._in_flight[kid] = task
            task.add_done_callback(functools.partial(self._fetch_done, kid))
        else:
            self._counts["coalesced"] += 1
        # shield: cancelling this caller must not cancel the fetch the other callers share.
        return await asyncio.shield(task)

    async def _fetch_and_store(self, kid: str) -> Mapping[str, Any]:
        self._counts["fetches"] += 1
        try:
            fetched = await self._fetch(kid)
        except UnknownKey:
            self._keys.pop(kid, None)
            self._remember_unknown(kid)
            raise
        key: Mapping[str, Any] = MappingProxyType(dict(fetched))
        new_kid = kid not in self._keys
        self._store(kid, key)
        if new_kid:
            self._refresh_others(kid)
        return key

    def _refresh_others(self, kid: str) -> None:
        """A new kid means Plaid rotated: as Plaid's own example does, check the other unexpired
        keys we trust again, on their next use (an old key may have been expired meanwhile)."""
        now = self._clock()
        for other, entry in self._keys.items():
            if other != kid and entry.key.get("expired_at") is None:
                entry.refresh_at = min(entry.refresh_at, now)

    def _fetch_done(self, kid: str, task: asyncio.Task[Mapping[str, Any]]) -> None:
        if self._in_flight.get(kid) is task:
            del self._in_flight[kid]
        if not task.cancelled():
            task.exception()  # retrieved, even when every waiter was cancelled

    def _store(self, kid: str, key: Mapping[str, Any]) -> None:
        if key.get("expired_at") is not None or self._refresh_after_s is None:
            refresh_at = math.inf
        else:
            refresh_at = self._clock() + self._refresh_after_s
        self._negative.pop(kid, None)
        self._keys[kid] = _Entry(key, refresh_at)
        self._keys.move_to_end(kid)
        while len(self._keys) > self._max_keys:
            self._keys.popitem(last=False)

    def _remember_unknown(self, kid: str) -> None:
        self._negative.pop(kid, None)
        self._negative[kid] = self._clock() + self._negative_ttl_s
        while len(self._negative) > self._max_negative:
            self._negative.popitem(last=False)

    def _take_token(self) -> bool:
        now = self._clock()
        elapsed = max(0.0, now - self._tokens_at)
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        self._tokens_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


# After a failed key fetch, /healthz and paw_upstream_up report the key endpoint down for this long (or
# until a fetch succeeds); then it is presumed back: keys are cached, so the next fetch may be hours
# away, and one old failure should not be reported for that long.
KEY_FETCH_DOWN_S = 30.0


@dataclasses.dataclass
class KeyFetchHealth:
    """Whether Plaid's key endpoint answered the last time a key was fetched.

    An answer counts as success even when it is "no such key": Plaid was reachable. Only transient
    failures (network, 5xx, 429) count as failure. Throttled fetches never reach Plaid and are not
    recorded, so a flood of made-up kids cannot make the endpoint look down.

    Reported, not acted on: readiness does not depend on it (a Plaid blip would take every receiver
    out of rotation at once, while each could still accept Atomic webhooks, submissions, and Plaid
    webhooks signed with a cached key); ``/healthz`` shows :meth:`detail`, ``paw_upstream_up`` the
    same ``ok``.
    """

    clock: Callable[[], float] = time.monotonic
    failed_at: float | None = None

    def succeeded(self) -> None:
        self.failed_at = None

    def failed(self) -> None:
        self.failed_at = self.clock()

    @property
    def ok(self) -> bool:
        return self.failed_at is None or self.clock() - self.failed_at >= KEY_FETCH_DOWN_S

    def detail(self) -> dict[str, Any]:
        """``{"ok", "last_failure_s_ago"}`` (seconds, or None when no fetch has failed)."""
        ago = None if self.failed_at is None else round(self.clock() - self.failed_at, 1)
        return {"ok": self.ok, "last_failure_s_ago": ago}


# The endpoint KeyFetchHealth watches, as paw_upstream_seconds and paw_upstream_up label it.
KEY_ENDPOINT = "/webhook_verification_key/get"


class KeyFetchUnavailable(PawError):
    """No way to fetch Plaid's webhook verification keys is configured."""


def plaid_key_fetcher(
    fetch_jwk: Callable[[str], Awaitable[Mapping[str, Any]]], health: KeyFetchHealth
) -> Callable[[str], Awaitable[Mapping[str, Any]]]:
    """``fetch(kid)`` for :class:`KeyCache` over ``fetch_jwk`` (``/webhook_verification_key/get``):
    Plaid's JWK, or UnknownKey when Plaid says no such key. Records in ``health`` whether Plaid
    answered."""

    async def fetch(kid: str) -> Mapping[str, Any]:
        try:
            key = await fetch_jwk(kid)
        except UpstreamError as e:
            if e.status == 400 and e.error_code in ("INVALID_WEBHOOK_VERIFICATION_KEY_ID", "INVALID_INPUT"):
                health.succeeded()
                raise UnknownKey(f"Plaid does not know key {kid!r}") from None
            health.failed()
            log.warning("plaid.key_fetch_failed", kid=kid, status=e.status, error_code=e.error_code)
            raise
        except Exception:
            health.failed()
            raise
        health.succeeded()
        return key

    return fetch
