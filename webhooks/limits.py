"""Limits on what comes from outside: request rate per API key, requests in flight per process.

Pure bookkeeping (a token bucket per key, a counter), so the middleware stays thin and the numbers
are testable without a server.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable


class TokenBuckets:
    """One token bucket per key: ``rate`` requests per second, bursts up to ``burst``. Keys are
    stored hashed, and only the ``max_keys`` most recent are remembered."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """0 if a request may pass now, else the seconds until one may."""
        now = self._clock()
        name = hashlib.sha256(key.encode()).hexdigest()
        tokens, at = self._buckets.pop(name, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[name] = (tokens, now)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait


class InFlight:
    """Requests being handled right now, up to a bound."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.now = 0

    def enter(self) -> bool:
        if self.now >= self.limit:
            return False
        self.now += 1
        return True

    def leave(self) -> None:
        self.now -= 1
