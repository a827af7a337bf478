"""What the CLI shows people: times as times."""

from __future__ import annotations

from datetime import UTC, datetime

from worker.cli.render import epoch_fields, utc


def test_a_dead_letters_unix_times_are_shown_as_times() -> None:
    assert epoch_fields({"sent_at": 1764860699, "webhook": {}}) == [("sent_at", 1764860699)]
    assert epoch_fields({"sent_at": "soon"}) == [] and epoch_fields("not json") == []
    assert utc(datetime.fromtimestamp(1764860699, UTC)) == "2025-12-04 15:04:59.000Z"
