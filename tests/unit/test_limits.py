"""The receiver's limits as pure pieces: the token bucket per API key and the in-flight gate."""

from __future__ import annotations

import pytest

from webhooks.limits import InFlight, TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket_allows_bursts_then_the_rate_per_key() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=2.0, burst=3.0, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.take("b") == 0.0  # keys are independent
    clock.t += 0.5
    assert buckets.take("a") == 0.0


def test_in_flight_gate() -> None:
    gate = InFlight(2)
    assert gate.enter() and gate.enter() and not gate.enter()
    gate.leave()
    assert gate.enter()
