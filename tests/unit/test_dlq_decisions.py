"""Dead letters, the pure half (worker/bus/dlq.py): ids, references, filters, replay headers and plans, pacing, redaction. No broker or database."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import (
    dead_headers,
    drive_letter,
)
from worker.bus import dlq, dlq_jobs
from worker.bus.dlq import DeadLetter
from worker.bus.topology import dead_queue_arguments
from worker.cli.render import human_age
from worker.items.model import token_hash
from worker.messages import (
    H_LAST_FAILURE,
    H_REPLAYS,
    H_ROUTING_KEY,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def test_id_depends_on_what_the_message_is_not_on_broker_bookkeeping() -> None:
    letter = drive_letter()
    first = DeadLetter.parse(letter.body, letter.headers, letter.message_id)
    requeued = DeadLetter.parse(
        letter.body,
        {
            **letter.headers,
            "x-delivery-count": 3,
            H_LAST_FAILURE: datetime.now(UTC).isoformat(),
            "x-death": [{"queue": "q", "count": 1}],
        },
        letter.message_id,
    )
    assert requeued.key == first.key and len(first.key) == 64 and first.short_id == first.key[:12]
    # replayed once and dead again: a new dead letter
    assert DeadLetter.parse(letter.body, {**letter.headers, H_REPLAYS: 1}, letter.message_id).key != first.key
    assert DeadLetter.parse(letter.body + b" ", letter.headers, letter.message_id).key != first.key
    assert DeadLetter.parse(letter.body, letter.headers, "other").key != first.key
    assert (
        DeadLetter.parse(letter.body, {**letter.headers, H_ROUTING_KEY: "item.link"}, None).key != first.key
    )
    # no length-extension style collisions between the parts
    assert dlq.message_key("a", "bc", 0, b"") != dlq.message_key("ab", "c", 0, b"")


def test_item_refs_from_body_or_envelope() -> None:
    item = str(uuid.uuid4())
    assert dlq.item_refs("item.drive", {"item_id": item, "reason": "x"}).item_id == item
    atomic = {"event_id": "e", "webhook": {"account_ref": item, "status": "VERIFIED"}}
    assert dlq.item_refs("webhook.atomic.verified", atomic).item_id == item
    plaid = {"event_id": "e", "webhook": {"item_id": "plaid-item-1", "webhook_type": "ITEM"}}
    assert dlq.item_refs("webhook.plaid.ITEM.ERROR", plaid) == dlq.ItemRefs(plaid_item_id="plaid-item-1")
    link = dlq.item_refs("item.link", {"public_token": "public-sandbox-x", "client_user_id": "u"})
    assert link.public_token_sha256 == token_hash("public-sandbox-x") and link.item_id is None
    assert dlq.item_refs("item.link", "not a dict") == dlq.ItemRefs()
    poison = DeadLetter.parse(b"\xff not json", dead_headers("item.link", error_class="Poison"), None)
    assert poison.refs == dlq.ItemRefs() and poison.reason == "Poison"


def test_topic_patterns_follow_amqp() -> None:
    assert dlq.topic_matches("#", "a.b.c") and dlq.topic_matches("a.#", "a")
    assert dlq.topic_matches("a.*.c", "a.b.c") and not dlq.topic_matches("a.*.c", "a.b.b.c")
    assert dlq.topic_matches("a.#.c", "a.b.b.c") and not dlq.topic_matches("a.b", "a.b.c")


WORDS = ["a", "b", "item", "web-hook", "x_y", "$", "+1", ""]


@pytest.mark.parametrize("seed", range(5))
def test_the_index_matches_routing_keys_as_amqp_does(seed: int) -> None:
    """The regular expression the index matches with (Postgres ``~`` over '.' || routing key)
    decides as AMQP's topic matching does, for patterns with #, * and odd characters."""
    rng = random.Random(seed)
    for _ in range(400):
        pattern = ".".join(rng.choice([*WORDS, "*", "#"]) for _ in range(rng.randint(1, 4)))
        key = ".".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
        expected = dlq.topic_matches(pattern, key)
        assert bool(re.match(dlq.topic_regex(pattern), "." + key)) is expected, (pattern, key)


def test_since_accepts_durations_and_times() -> None:
    assert dlq.parse_since("90s", NOW) == NOW - timedelta(seconds=90)
    assert dlq.parse_since("2h", NOW) == NOW - timedelta(hours=2)
    assert dlq.parse_since("1d", NOW) == NOW - timedelta(days=1)
    assert dlq.parse_since("2026-11-23T10:00:00", NOW) == datetime(2026, 11, 23, 10, tzinfo=UTC)
    assert dlq.parse_since("2026-11-23T10:00:00+02:00", NOW) == datetime(2026, 11, 23, 8, tzinfo=UTC)
    with pytest.raises(ValueError, match="30m"):
        dlq.parse_since("yesterday", NOW)


def test_replay_headers_reset_the_failure_and_count_the_replay() -> None:
    headers = {
        **dead_headers("item.link", replays=1),
        "x-death": [{"queue": "paw.items.retry.50"}],
        "x-first-death-queue": "paw.items.retry.50",
        "x-delivery-count": 2,
        "traceparent": "00-abc-def-01",
    }
    out = dlq.replay_headers(headers, actor="alice", now=NOW)
    assert out == {
        H_ROUTING_KEY: "item.link",
        H_REPLAYS: 2,
        dlq.H_REPLAYED_AT: NOW.isoformat(),
        dlq.H_REPLAYED_BY: "alice",
        "traceparent": "00-abc-def-01",
    }
    assert dlq.replay_headers({}, actor="a", now=NOW)[H_REPLAYS] == 1


def test_replay_plan_publishes_each_message_once() -> None:
    a, b = drive_letter(1), drive_letter(2)
    letters = [DeadLetter.parse(x.body, x.headers, x.message_id) for x in (a, b, a)]
    assert dlq.replay_plan(letters, set()) == ["publish", "publish", "copy"]
    assert dlq.replay_plan(letters, {a.key}) == ["replayed", "publish", "replayed"]


def test_pace_and_age() -> None:
    assert dlq.pace_delay(0, 10, 0.0) == 0.0
    assert dlq.pace_delay(5, 10, 0.2) == pytest.approx(0.3)
    assert dlq.pace_delay(5, 10, 0.9) == 0.0
    assert dlq.pace_delay(500, None, 0.0) == 0.0
    assert [human_age(timedelta(seconds=s)) for s in (5, 125, 7300, 90000)] == [
        "5s",
        "2m05s",
        "2h01m",
        "1d01h",
    ]
    assert human_age(None) == "?"


def test_summary_and_detail_are_redacted() -> None:
    body = json.dumps({"public_token": "public-sandbox-0123abcd", "client_user_id": "u"}).encode()
    headers = dead_headers("item.link", message="exchange of public-sandbox-0123abcd failed")
    d = DeadLetter.parse(body, headers, "m")
    text = json.dumps(d.detail(NOW)) + json.dumps(d.summary(NOW))
    assert "0123abcd" not in text and "[redacted]" in text
    assert d.detail(NOW)["body"] == {"public_token": "[redacted]", "client_user_id": "u"}
    assert dlq.by_reason([d, d, DeadLetter.parse(b"x", dead_headers("a", error_class="Poison"), None)]) == [
        ("INSTITUTION_DOWN", 2),
        ("Poison", 1),
    ]


def test_the_dead_queue_has_no_delivery_limit_where_the_broker_would_set_one() -> None:
    assert dead_queue_arguments("4.0.5") == {"x-queue-type": "quorum", "x-delivery-limit": -1}
    assert dead_queue_arguments("4.2.0-rc.1") == {"x-queue-type": "quorum", "x-delivery-limit": -1}
    for unlimited_by_default in ("3.10.8", "3.13.7", ""):
        assert dead_queue_arguments(unlimited_by_default) == {"x-queue-type": "quorum"}


# -- Replay jobs: what is stored, what runs, how it ends -------------------------------------------


def test_filters_round_trip_through_their_public_form() -> None:
    full = dlq.Filters(
        ids=("abcdef12", "0123456789"),
        item=str(uuid.uuid4()),
        code="INSTITUTION_DOWN",
        error="timeout",
        since=NOW - timedelta(hours=2),
        routing_key="webhook.plaid.#",
        until=NOW,
        min_attempts=3,
        state="exchanged",
    )
    for f in (full, dlq.Filters(), dlq.Filters(code="X"), dlq.Filters(since=NOW)):
        stored = json.loads(json.dumps(f.public()))  # as jsonb keeps it
        assert dlq.Filters.from_public(stored) == f
    # what is not a filter is left alone; a time written without a zone is UTC
    assert dlq.Filters.from_public({"code": "X", "limit": 5, "all": True, "rate": 2.0}) == dlq.Filters(
        code="X"
    )
    assert dlq.Filters.from_public({"since": "2026-11-23T12:00:00"}).since == NOW
    with pytest.raises(ValueError):
        dlq.Filters.from_public({"ids": "abcdef"})
    with pytest.raises(ValueError):
        dlq.Filters.from_public({"until": "yesterday"})


def test_a_job_stores_its_filters_and_runs_on_what_matched_when_it_was_created() -> None:
    f = dlq.Filters(code="INSTITUTION_DOWN", since=NOW - timedelta(hours=1))
    stored = dlq_jobs.stored_filters(f, 10)
    assert stored == {
        "code": "INSTITUTION_DOWN",
        "since": (NOW - timedelta(hours=1)).isoformat(),
        "limit": 10,
    }
    assert dlq_jobs.stored_filters(dlq.Filters(), None) == {"all": True}
    created = NOW + timedelta(minutes=5)
    assert dlq_jobs.run_filters(stored, created) == dataclasses.replace(f, until=created)
    earlier = dlq.Filters(code="X", until=NOW)  # an --until before the job keeps it
    assert dlq_jobs.run_filters(earlier.public(), created).until == NOW
    assert dlq_jobs.run_filters({"all": True}, created) == dlq.Filters(until=created)


def test_a_resumed_job_takes_what_its_limit_leaves() -> None:
    assert dlq_jobs.remaining(None, 40) is None
    assert dlq_jobs.remaining(100, 0) == 100
    assert dlq_jobs.remaining(100, 40) == 60
    assert dlq_jobs.remaining(100, 130) == 0


def test_where_a_run_leaves_its_job() -> None:
    assert dlq_jobs.outcome(stopped=False, cancel=False, error=None) == "done"
    assert dlq_jobs.outcome(stopped=False, cancel=True, error=None) == "done"  # it had finished anyway
    assert dlq_jobs.outcome(stopped=True, cancel=True, error=None) == "cancelled"
    assert dlq_jobs.outcome(stopped=True, cancel=False, error=None) == "queued"  # the worker is stopping
    assert dlq_jobs.outcome(stopped=True, cancel=True, error="DlqError: x") == "failed"
    assert dlq_jobs.outcome(stopped=False, cancel=False, error="OSError: x") == "failed"


def test_progress_is_written_at_first_then_every_half_second_or_twenty_messages() -> None:
    t = dlq_jobs.Throttle(every_s=0.5, every_n=20)
    assert t.due(100.0, 0)  # the selection is known
    assert not t.due(100.1, 1) and not t.due(100.4, 19)
    assert t.due(100.45, 20)  # twenty messages
    assert not t.due(100.9, 21)
    assert t.due(100.96, 22)  # half a second
    assert not t.due(101.0, 23)
