"""When Plaid tries a webhook again (pure functions: no I/O, no clock of their own).

Plaid's docs (plaid.com/docs/api/webhooks, "Webhook retries"): a webhook not answered 200 within
10 s is sent again for up to 24 hours, the first retry after 30 s and each delay 4 times the one
before. A 429 carrying ``Retry-After`` is honoured instead of the schedule, capped at 4 hours (this
from the project's reference notes; the copies of Plaid's page searched so far don't show it).
Not emulated: Plaid's rule that retries stop for an endpoint that rejected more than 90 % of its
webhooks over 24 hours (no volume threshold is documented, and one webhook refused during an outage
is already 100 %: emulating it would mean guessing, and would stop the very retries under test).

Every duration here is in Plaid's seconds; ``scale`` turns them into the emulator's (a test sets it
so that the 30 s become a few milliseconds, and the 24 h window shrinks with them).
"""

from __future__ import annotations

import datetime as dt
import email.utils
from typing import Final

FIRST_DELAY_S: Final = 30.0
FACTOR: Final = 4.0
WINDOW_S: Final = 24 * 3600.0  # measured from the first attempt
RETRY_AFTER_CAP_S: Final = 4 * 3600.0
RETRY_AFTER_FLOOR_S: Final = 1.0  # ours, not Plaid's: "Retry-After: 0" must not become a busy loop
TOO_MANY_REQUESTS: Final = 429


def delivered(status: int | None) -> bool:
    """A 2xx answer ends the delivery; anything else (or no answer: ``None``) is a failed attempt."""
    return status is not None and 200 <= status < 300


def scheduled_delay_s(attempt: int) -> float:
    """Plaid's delay (unscaled) after failed attempt number ``attempt`` (1 is the first send)."""
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    return FIRST_DELAY_S * FACTOR ** (attempt - 1)


def next_delay(
    attempt: int,
    status: int | None,
    retry_after: float | None,
    first_attempt_at: float,
    now: float,
    scale: float,
) -> float | None:
    """Seconds (scaled) to wait before the next attempt, or ``None``: no further attempt.

    ``attempt`` is the number of the attempt that just ended (1-based) with ``status`` (``None``: no
    HTTP answer, i.e. a timeout or a refused connection); ``retry_after`` is its ``Retry-After`` in
    seconds, if it had a usable one; ``first_attempt_at`` and ``now`` are on the same (emulator) clock.

    ``None`` when the attempt delivered, or when the next attempt would fall beyond the (scaled)
    24 hours after the first one: that is when Plaid gives up. A 429's ``Retry-After`` replaces the
    scheduled delay for that step only; the step after it is scheduled from its attempt number as usual.
    """
    if delivered(status):
        return None
    if status == TOO_MANY_REQUESTS and retry_after is not None:
        delay = min(max(retry_after, RETRY_AFTER_FLOOR_S), RETRY_AFTER_CAP_S)
    else:
        delay = scheduled_delay_s(attempt)
    if now + delay * scale > first_attempt_at + WINDOW_S * scale:
        return None
    return delay * scale


def parse_retry_after(value: str | None, now_epoch_s: float) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP-date; ``None`` if absent or unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # "-0000": UTC without a claim of locality
        moment = moment.replace(tzinfo=dt.UTC)
    return max(0.0, moment.timestamp() - now_epoch_s)
