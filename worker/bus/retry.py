"""When to try a message again: a pure decision (procrastinate's ``get_retry_decision`` shape).

Retries go through delay queues with fixed TTLs (``Topology.retry_delays_ms``): attempt ``n`` waits
in tier ``n`` (or the first tier long enough for a ``Retry-After``). Jitter shortens the wait by up
to a quarter through the per-message expiration; since a queue only expires its head, a message can
wait at most that quarter longer behind an older one.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryDecision:
    tier_ms: int  # which delay queue
    expiration_ms: int  # the message's own TTL, at most tier_ms


def retry_decision(
    *,
    attempt: int,
    budget: int,
    tiers_ms: tuple[int, ...],
    retry_after_s: float | None = None,
    jitter: float = 0.0,
) -> RetryDecision | None:
    """``attempt`` is how many times the message has failed, this time included. ``None``: the
    budget is spent; dead-letter it. ``jitter`` in [0, 1)."""
    if attempt > budget or not tiers_ms:
        return None
    index = min(attempt - 1, len(tiers_ms) - 1)
    if retry_after_s is not None and retry_after_s > 0:
        wanted = int(retry_after_s * 1000)
        index = max(index, min(bisect.bisect_left(tiers_ms, wanted), len(tiers_ms) - 1))
        tier = tiers_ms[index]
        return RetryDecision(tier, tier)  # no jitter below what the server asked for
    tier = tiers_ms[index]
    return RetryDecision(tier, max(1, int(tier * (1 - 0.25 * min(max(jitter, 0.0), 0.999)))))
