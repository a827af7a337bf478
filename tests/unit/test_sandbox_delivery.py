"""The emulator's webhook delivery: Plaid's retry schedule (pure), then real POSTs to small servers."""

from __future__ import annotations

import email.utils

import pytest

from sandbox.retry_schedule import (
    RETRY_AFTER_CAP_S,
    WINDOW_S,
    delivered,
    next_delay,
    parse_retry_after,
    scheduled_delay_s,
)

# -- the schedule (pure) -------------------------------------------------------------------------


def plaid_attempt_times(status: int | None = 503, scale: float = 1.0) -> list[float]:
    """When each attempt starts, for an endpoint that answers ``status`` at once, every time."""
    times = [0.0]
    while (delay := next_delay(len(times), status, None, 0.0, times[-1], scale)) is not None:
        times.append(times[-1] + delay)
    return times


def test_plaid_schedule_first_after_30_s_then_4x_within_24_hours() -> None:
    # 30 s, 2 min, 8 min, 32 min, 2 h 8 min, 8 h 32 min; the next (34 h 8 min) is past the window
    assert plaid_attempt_times() == [0, 30, 150, 630, 2550, 10230, 40950]
    assert [scheduled_delay_s(n) for n in range(1, 7)] == [30, 120, 480, 1920, 7680, 30720]


@pytest.mark.parametrize("status", [None, 301, 400, 401, 404, 429, 500, 503])
def test_every_failure_is_retried_on_the_same_schedule(status: int | None) -> None:
    assert plaid_attempt_times(status) == [0, 30, 150, 630, 2550, 10230, 40950]


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_a_2xx_ends_it(status: int) -> None:
    assert delivered(status)
    assert next_delay(1, status, None, 0.0, 0.0, 1.0) is None


def test_the_time_scale_scales_delays_and_the_window_alike() -> None:
    scale = 1 / 600
    assert next_delay(1, 503, None, 0.0, 0.0, scale) == pytest.approx(0.05)
    assert plaid_attempt_times(scale=scale) == pytest.approx([t * scale for t in plaid_attempt_times()])
    # 144 s is the scaled 24 h: a retry due after it is not made
    assert next_delay(1, 503, None, 0.0, WINDOW_S * scale - 0.04, scale) is None
    assert next_delay(1, 503, None, 0.0, WINDOW_S * scale - 0.06, scale) == pytest.approx(0.05)


def test_a_429_retry_after_replaces_one_step_of_the_schedule() -> None:
    assert next_delay(1, 429, 120.0, 0.0, 0.0, 1.0) == 120.0
    assert next_delay(3, 429, 5.0, 0.0, 0.0, 1.0) == 5.0  # shorter than the scheduled 480 s too
    assert next_delay(1, 429, 120.0, 0.0, 0.0, 0.01) == pytest.approx(1.2)
    assert next_delay(1, 429, None, 0.0, 0.0, 1.0) == 30.0  # no Retry-After: the schedule
    assert next_delay(1, 503, 120.0, 0.0, 0.0, 1.0) == 30.0  # Retry-After counts on a 429 only
    assert next_delay(2, 503, None, 0.0, 0.0, 1.0) == 120.0  # after it, the schedule goes on


def test_retry_after_is_capped_at_4_hours_and_floored_at_1_s() -> None:
    assert next_delay(1, 429, 10 * 86400.0, 0.0, 0.0, 1.0) == RETRY_AFTER_CAP_S == 4 * 3600
    assert next_delay(1, 429, 0.0, 0.0, 0.0, 1.0) == 1.0
    # nor does a Retry-After reach beyond the 24 hours
    assert next_delay(1, 429, 4 * 3600.0, 0.0, 21 * 3600.0, 1.0) is None


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 7 ", now) == 7.0
    assert parse_retry_after(email.utils.formatdate(now + 90, usegmt=True), now) == pytest.approx(90)
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now) == 0.0
    for unusable in (None, "", "soon", "-5", "1.5", "Wed, 99 Foo 2015 07:28:00 GMT"):
        assert parse_retry_after(unusable, now) is None, unusable
