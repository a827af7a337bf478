"""`paw status --check`'s verdict, from what was gathered: Nagios exit codes and one line."""

from __future__ import annotations

import dataclasses
from typing import Any

from worker.status import CRITICAL, OK, WARNING, QueueFacts, Status, verdict


def status(**changes: Any) -> Status:
    healthy = Status(
        prefix="paw",
        queues={
            "paw.items": QueueFacts(ready=3, consumers=2, retrying=1),
            "paw.webhooks": QueueFacts(ready=0, consumers=2, retrying=0),
        },
        dead_letters=0,
        items={"atomic_verified": 10},
        stuck=[],
        last_webhook=None,
    )
    return dataclasses.replace(healthy, **changes)


def test_healthy_is_ok() -> None:
    assert verdict(status()) == (OK, "OK: every queue consumed, no dead letters, nothing stuck")


def test_dead_letters_stuck_items_setup_problems_and_a_lagging_relay_warn() -> None:
    indexed = [("INSTITUTION_DOWN", 3), ("Poison", 1)]
    assert verdict(status(dead_letters=4, dead_by_reason=indexed)) == (
        WARNING,
        "WARNING: 4 dead letter(s) (INSTITUTION_DOWN 3, Poison 1): paw dlq list",
    )
    # the queue holds more than the index knows (a worker's database refused the rows)
    assert verdict(status(dead_letters=4, dead_by_reason=[("Poison", 1)])) == (
        WARNING,
        "WARNING: 4 dead letter(s) (Poison 1): paw dlq list; 3 dead letter(s) not indexed: paw dlq reindex",
    )
    code, line = verdict(
        status(stuck=[{"id": 1}], setup_problems=["x"], outbox_unsent=7, outbox_oldest_s=90.0)
    )
    assert code == WARNING
    assert line == (
        "WARNING: 1+ Item(s) stuck for over 0:15:00; 1 setup problem(s); "
        "7 outcome event(s) unsent for up to 90s"
    )
    assert verdict(status(outbox_unsent=7, outbox_oldest_s=5.0))[0] == OK  # the relay keeps up


def test_a_queue_nobody_consumes_or_a_missing_queue_is_critical_and_warnings_still_show() -> None:
    idle = {**status().queues, "paw.webhooks": QueueFacts(ready=9, consumers=0, retrying=0)}
    assert verdict(status(queues=idle, dead_letters=1, dead_by_reason=[("Poison", 1)])) == (
        CRITICAL,
        "CRITICAL: no consumer on paw.webhooks; 1 dead letter(s) (Poison 1): paw dlq list",
    )
    code, line = verdict(status(prefix="pwa", missing=["pwa.items", "pwa.webhooks"]))
    assert code == CRITICAL
    assert line.startswith("CRITICAL: 2 queue(s) missing, e.g. pwa.items: is PAW_QUEUE_PREFIX=pwa right?")


def test_publish_failures_in_the_last_hour_warn() -> None:
    seen = {
        ("plaid", "received", ""): 10,
        ("", "publish_failed", ""): 3,
        ("atomic", "rejected", "bad_signature"): 2,
    }
    assert verdict(status(last_hour=seen)) == (
        WARNING,
        "WARNING: 3 webhook(s) refused in the last hour: the broker did not confirm them",
    )
