"""The receiver's counts become rows for `receiver_minutes`: only what was added since the last
report, by source, outcome and reason."""

from __future__ import annotations

import collections

from webhooks.tallies import rows


def test_only_what_was_counted_since_the_last_report_and_only_known_keys() -> None:
    counts = collections.Counter(
        {
            "plaid_received": 10,
            "plaid_accepted": 8,
            "plaid_rejected.stale_iat": 2,
            "atomic_received": 3,
            "atomic_rejected.bad_signature": 1,
            "plaid_key_unavailable": 1,
            "publish_failed": 4,
            "published": 8,  # the same as accepted: not reported
            "weird": 5,
        }
    )
    reported = collections.Counter({"plaid_received": 7, "plaid_accepted": 8, "publish_failed": 4})
    assert rows(counts, reported) == [
        ("atomic", "received", "", 3),
        ("atomic", "rejected", "bad_signature", 1),
        ("plaid", "key_unavailable", "", 1),
        ("plaid", "received", "", 3),
        ("plaid", "rejected", "stale_iat", 2),
    ]
    assert rows(counts, counts) == []
