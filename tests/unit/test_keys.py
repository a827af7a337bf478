"""KeyCache: single-flight, negative cache, throttle, refresh; synchronised with Events, never sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from webhooks.keys import KeyCache, KeyFetchThrottled, UnknownKey


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def jwk(kid: str, expired_at: int | None = None) -> dict[str, Any]:
    return {"kid": kid, "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "x": "x", "y": "y",
            "created_at": 1, "expired_at": expired_at}  # fmt: skip


class FakePlaid:
    """A fetch function: known kids answer, others are UnknownKey; can be held on an Event or fail."""

    def __init__(self, known: dict[str, dict[str, Any]] | None = None) -> None:
        self.known = dict(known or {})
        self.calls: list[str] = []
        self.started = asyncio.Event()
        self.release: asyncio.Event | None = None
        self.failures: list[BaseException] = []

    async def __call__(self, kid: str) -> Mapping[str, Any]:
        self.calls.append(kid)
        self.started.set()
        if self.release is not None:
            await self.release.wait()
        if self.failures:
            raise self.failures.pop(0)
        if kid not in self.known:
            raise UnknownKey()
        return self.known[kid]


async def test_cached_key_is_returned_without_fetching() -> None:
    plaid = FakePlaid({"k1": jwk("k1")})
    cache = KeyCache(plaid)
    first = await cache.get("k1")
    second = await cache.get("k1")
    assert first == second == jwk("k1")
    assert plaid.calls == ["k1"]
    assert cache.stats()["fetches"] == 1
    assert cache.stats()["hits"] == 1


async def test_returned_key_is_read_only() -> None:
    cache = KeyCache(FakePlaid({"k1": jwk("k1")}))
    key = await cache.get("k1")
    with pytest.raises(TypeError):
        key["x"] = "tampered"  # type: ignore[index]
    assert (await cache.get("k1"))["x"] == "x"


async def test_200_concurrent_gets_cause_one_fetch() -> None:
    plaid = FakePlaid({"k1": jwk("k1")})
    plaid.release = asyncio.Event()
    cache = KeyCache(plaid)
    callers = [asyncio.create_task(cache.get("k1")) for _ in range(200)]
    await plaid.started.wait()
    # The fetch task was scheduled behind all 200 callers, so each is already waiting on it.
    assert cache.stats()["in_flight"] == 1
    assert cache.stats()["coalesced"] == 199
    plaid.release.set()
    results = await asyncio.gather(*callers)
    assert plaid.calls == ["k1"]
    assert all(result == jwk("k1") for result in results)
    assert cache.stats()["fetches"] == 1
    assert cache.stats()["in_flight"] == 0


async def test_different_kids_fetch_separately() -> None:
    plaid = FakePlaid({"k1": jwk("k1"), "k2": jwk("k2")})
    cache = KeyCache(plaid)
    a, b = await asyncio.gather(cache.get("k1"), cache.get("k2"))
    assert (a["kid"], b["kid"]) == ("k1", "k2")
    assert sorted(plaid.calls) == ["k1", "k2"]


async def test_unknown_kid_is_cached_negatively_until_ttl() -> None:
    clock = FakeClock()
    plaid = FakePlaid()
    cache = KeyCache(plaid, negative_ttl_s=300.0, clock=clock)
    with pytest.raises(UnknownKey):
        await cache.get("nope")
    with pytest.raises(UnknownKey):
        await cache.get("nope")
    assert plaid.calls == ["nope"]
    assert cache.stats()["negative_hits"] == 1

    clock.t += 299.0
    with pytest.raises(UnknownKey):
        await cache.get("nope")
    assert plaid.calls == ["nope"]

    clock.t += 1.0
    with pytest.raises(UnknownKey):
        await cache.get("nope")
    assert plaid.calls == ["nope", "nope"]


async def test_kid_that_becomes_known_after_ttl_is_fetched() -> None:
    clock = FakeClock()
    plaid = FakePlaid()
    cache = KeyCache(plaid, negative_ttl_s=60.0, clock=clock)
    with pytest.raises(UnknownKey):
        await cache.get("new")
    plaid.known["new"] = jwk("new")
    clock.t += 60.0
    assert (await cache.get("new"))["kid"] == "new"
    assert cache.stats()["negative"] == 0


async def test_concurrent_callers_all_get_unknown_key_from_one_fetch() -> None:
    plaid = FakePlaid()
    plaid.release = asyncio.Event()
    cache = KeyCache(plaid)
    callers = [asyncio.create_task(cache.get("nope")) for _ in range(20)]
    await plaid.started.wait()
    plaid.release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(result, UnknownKey) for result in results)
    assert plaid.calls == ["nope"]


async def test_negative_cache_is_bounded_oldest_first() -> None:
    plaid = FakePlaid()
    cache = KeyCache(plaid, max_negative=3, fetch_burst=100)
    for i in range(5):
        with pytest.raises(UnknownKey):
            await cache.get(f"kid-{i}")
    assert cache.stats()["negative"] == 3
    with pytest.raises(UnknownKey):
        await cache.get("kid-4")  # newest: still remembered
    assert len(plaid.calls) == 5
    with pytest.raises(UnknownKey):
        await cache.get("kid-0")  # oldest: evicted, so fetched again
    assert len(plaid.calls) == 6
    assert cache.stats()["negative"] == 3


async def test_positive_cache_is_bounded() -> None:
    plaid = FakePlaid({f"k{i}": jwk(f"k{i}") for i in range(4)})
    cache = KeyCache(plaid, max_keys=2)
    for i in range(4):
        await cache.get(f"k{i}")
    assert cache.stats()["keys"] == 2
    await cache.get("k3")
    assert len(plaid.calls) == 4
    await cache.get("k0")
    assert len(plaid.calls) == 5


async def test_throttle_engages_on_a_flood_of_new_kids() -> None:
    clock = FakeClock()
    plaid = FakePlaid({"good": jwk("good")})
    cache = KeyCache(plaid, clock=clock, fetch_rate_per_s=2.0, fetch_burst=3)
    await cache.get("good")
    for i in range(2):
        with pytest.raises(UnknownKey):
            await cache.get(f"random-{i}")
    assert len(plaid.calls) == 3

    for i in range(2, 50):
        with pytest.raises(KeyFetchThrottled):
            await cache.get(f"random-{i}")
    assert len(plaid.calls) == 3
    assert cache.stats()["throttled"] == 48

    # Cached and negatively cached kids are still answered while throttled.
    assert (await cache.get("good"))["kid"] == "good"
    with pytest.raises(UnknownKey):
        await cache.get("random-0")

    clock.t += 0.5  # refills one token at 2/s
    with pytest.raises(UnknownKey):
        await cache.get("random-50")
    with pytest.raises(KeyFetchThrottled):
        await cache.get("random-51")
    assert len(plaid.calls) == 4

    clock.t += 3600.0  # refills to the burst, no further
    for i in range(3):
        with pytest.raises(UnknownKey):
            await cache.get(f"later-{i}")
    with pytest.raises(KeyFetchThrottled):
        await cache.get("later-3")
    assert len(plaid.calls) == 7


async def test_joining_an_in_flight_fetch_is_not_throttled() -> None:
    plaid = FakePlaid({"k1": jwk("k1")})
    plaid.release = asyncio.Event()
    cache = KeyCache(plaid, fetch_burst=1)
    callers = [asyncio.create_task(cache.get("k1")) for _ in range(10)]
    await plaid.started.wait()
    plaid.release.set()
    assert all(result["kid"] == "k1" for result in await asyncio.gather(*callers))
    assert cache.stats()["throttled"] == 0


async def test_transient_failure_reaches_all_waiters_and_is_not_cached() -> None:
    plaid = FakePlaid({"k1": jwk("k1")})
    plaid.release = asyncio.Event()
    plaid.failures.append(ConnectionError("plaid is down"))
    cache = KeyCache(plaid)
    callers = [asyncio.create_task(cache.get("k1")) for _ in range(5)]
    await plaid.started.wait()
    plaid.release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(result, ConnectionError) for result in results)
    assert plaid.calls == ["k1"]
    assert cache.stats()["negative"] == 0

    assert (await cache.get("k1"))["kid"] == "k1"
    assert plaid.calls == ["k1", "k1"]


async def test_cancelling_one_waiter_does_not_break_the_others() -> None:
    plaid = FakePlaid({"k1": jwk("k1")})
    plaid.release = asyncio.Event()
    cache = KeyCache(plaid)
    callers = [asyncio.create_task(cache.get("k1")) for _ in range(3)]
    await plaid.started.wait()
    callers[0].cancel()
    with pytest.raises(asyncio.CancelledError):
        await callers[0]
    plaid.release.set()
    assert [result["kid"] for result in await asyncio.gather(*callers[1:])] == ["k1", "k1"]
    assert plaid.calls == ["k1"]


async def test_fetch_survives_when_every_waiter_is_cancelled() -> None:
    plaid = FakePlaid({"k1": jwk("k1")})
    plaid.release = asyncio.Event()
    cache = KeyCache(plaid)
    only = asyncio.create_task(cache.get("k1"))
    await plaid.started.wait()
    only.cancel()
    with pytest.raises(asyncio.CancelledError):
        await only
    plaid.release.set()
    assert (await cache.get("k1"))["kid"] == "k1"  # joins the surviving fetch
    assert plaid.calls == ["k1"]
    assert (await cache.get("k1"))["kid"] == "k1"
    assert plaid.calls == ["k1"]


async def test_failed_fetch_with_every_waiter_cancelled_is_not_cached() -> None:
    plaid = FakePlaid({"k1": jwk("k1")})
    plaid.release = asyncio.Event()
    plaid.failures.append(ConnectionError("down"))
    cache = KeyCache(plaid)
    only = asyncio.create_task(cache.get("k1"))
    await plaid.started.wait()
    only.cancel()
    with pytest.raises(asyncio.CancelledError):
        await only
    failing = asyncio.create_task(cache.get("k1"))  # joins the fetch, which fails
    plaid.release.set()
    with pytest.raises(ConnectionError):
        await failing
    assert (await cache.get("k1"))["kid"] == "k1"
    assert plaid.calls == ["k1", "k1"]


async def test_expired_key_is_returned_and_never_refetched() -> None:
    clock = FakeClock()
    plaid = FakePlaid({"old": jwk("old", expired_at=1_600_000_000)})
    cache = KeyCache(plaid, clock=clock, refresh_after_s=60.0)
    for _ in range(3):
        assert (await cache.get("old"))["expired_at"] == 1_600_000_000
        clock.t += 10_000.0
    assert plaid.calls == ["old"]


async def test_live_key_is_refreshed_and_learns_it_expired() -> None:
    clock = FakeClock()
    plaid = FakePlaid({"k1": jwk("k1")})
    cache = KeyCache(plaid, clock=clock, refresh_after_s=3600.0)
    assert (await cache.get("k1"))["expired_at"] is None
    clock.t += 3599.0
    await cache.get("k1")
    assert plaid.calls == ["k1"]

    plaid.known["k1"] = jwk("k1", expired_at=1_700_000_000)
    clock.t += 1.0
    assert (await cache.get("k1"))["expired_at"] == 1_700_000_000
    assert plaid.calls == ["k1", "k1"]
    clock.t += 100_000.0
    await cache.get("k1")
    assert plaid.calls == ["k1", "k1"]


async def test_failed_refresh_serves_the_cached_key_and_retries_later() -> None:
    clock = FakeClock()
    plaid = FakePlaid({"k1": jwk("k1")})
    cache = KeyCache(plaid, clock=clock, refresh_after_s=3600.0)
    await cache.get("k1")
    clock.t += 3600.0
    plaid.failures.append(ConnectionError("down"))
    assert (await cache.get("k1"))["kid"] == "k1"
    assert plaid.calls == ["k1", "k1"]
    assert (await cache.get("k1"))["kid"] == "k1"  # no retry straight away
    assert plaid.calls == ["k1", "k1"]
    clock.t += 60.0
    await cache.get("k1")
    assert plaid.calls == ["k1", "k1", "k1"]


async def test_throttled_refresh_serves_the_cached_key() -> None:
    clock = FakeClock()
    plaid = FakePlaid({"k1": jwk("k1")})
    cache = KeyCache(plaid, clock=clock, refresh_after_s=3600.0, fetch_burst=1, fetch_rate_per_s=1e-9)
    await cache.get("k1")
    clock.t += 3600.0
    assert (await cache.get("k1"))["kid"] == "k1"
    assert plaid.calls == ["k1"]
    assert cache.stats()["throttled"] == 1


async def test_refresh_answered_unknown_drops_the_key() -> None:
    clock = FakeClock()
    plaid = FakePlaid({"k1": jwk("k1")})
    cache = KeyCache(plaid, clock=clock, refresh_after_s=3600.0)
    await cache.get("k1")
    del plaid.known["k1"]
    clock.t += 3600.0
    with pytest.raises(UnknownKey):
        await cache.get("k1")
    with pytest.raises(UnknownKey):
        await cache.get("k1")
    assert plaid.calls == ["k1", "k1"]
    assert cache.stats()["keys"] == 0


async def test_refresh_can_be_disabled() -> None:
    clock = FakeClock()
    plaid = FakePlaid({"k1": jwk("k1")})
    cache = KeyCache(plaid, clock=clock, refresh_after_s=None)
    await cache.get("k1")
    clock.t += 10**9
    await cache.get("k1")
    assert plaid.calls == ["k1"]


async def test_aclose_cancels_fetches_in_flight() -> None:
    plaid = FakePlaid({"k1": jwk("k1")})
    plaid.release = asyncio.Event()
    cache = KeyCache(plaid)
    caller = asyncio.create_task(cache.get("k1"))
    await plaid.started.wait()
    await cache.aclose()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert cache.stats()["in_flight"] == 0
    assert cache.stats()["keys"] == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"negative_ttl_s": -1},
        {"max_negative": 0},
        {"max_keys": 0},
        {"fetch_rate_per_s": 0},
        {"fetch_burst": 0},
        {"refresh_after_s": 0},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        KeyCache(FakePlaid(), **kwargs)


async def test_a_new_kid_makes_the_other_live_keys_be_checked_again() -> None:
    """Plaid rotated: the old key may have been expired meanwhile, so its next use re-fetches it."""
    plaid = FakePlaid({"old": jwk("old"), "older": jwk("older", expired_at=1)})
    cache = KeyCache(plaid, refresh_after_s=3600.0)
    await cache.get("older")
    await cache.get("old")
    await cache.get("old")
    assert plaid.calls == ["older", "old"]  # cached; "older" is expired and never re-checked
    plaid.known["old"] = jwk("old", expired_at=1_700_000_000)
    plaid.known["new"] = jwk("new")
    await cache.get("new")
    assert (await cache.get("old"))["expired_at"] == 1_700_000_000
    await cache.get("older")
    await cache.get("new")
    assert plaid.calls == ["older", "old", "new", "old"]
