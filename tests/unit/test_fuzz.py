"""Property-based fuzzing of everything that parses outside input: the submission parser (HTTP and
AMQP) and the envelope parser on the consumer side. Each run is bounded (hypothesis deadline and
example count), so it runs in CI on every push. The webhook verifier's own property tests are in
tests/test_verification.py."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from worker.errors import Poison
from worker.messages import parse_json, schema_for, validated

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=5)
    ),
    max_leaves=30,
)

SUBMISSION_KEYS = ["public_token", "client_user_id", "account_id", "request_id", "extra"]
near_submissions = st.fixed_dictionaries(
    {},
    optional={
        k: st.one_of(
            st.text(max_size=300), st.integers(), st.none(), st.just("public-sandbox-0123456789abcdef")
        )
        for k in SUBMISSION_KEYS
    },
)

ENVELOPE_KEYS = ["event_id", "source", "received_at", "body_sha256", "sent_at", "kid", "webhook"]
near_envelopes = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.one_of(st.uuids().map(str), st.text(max_size=40)),
        "source": st.sampled_from(["plaid", "atomic", "other"]),
        "received_at": st.one_of(st.datetimes().map(lambda d: d.isoformat() + "Z"), st.text(max_size=30)),
        "body_sha256": st.one_of(
            st.text(alphabet="0123456789abcdef", min_size=64, max_size=64), st.text(max_size=70)
        ),
        "sent_at": st.one_of(st.integers(), st.text(max_size=10)),
        "kid": st.text(max_size=140),
        "webhook": st.one_of(
            json_values,
            st.fixed_dictionaries(
                {
                    "webhook_type": st.sampled_from(["ITEM", "AUTH", "item", ""]),
                    "webhook_code": st.sampled_from(["ERROR", "LOGIN_REPAIRED", "x y"]),
                    "item_id": st.text(max_size=140),
                    "status": st.sampled_from(["VERIFIED", "REJECTED", "NOPE"]),
                    "funding_source_id": st.text(max_size=20),
                    "account_ref": st.text(max_size=20),
                    "event_id": st.text(max_size=20),
                    "type": st.just("funding_source.updated"),
                }
            ),
        ),
    },
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def only_poison(schema: str, body: bytes) -> dict[str, Any] | None:
    try:
        return validated(schema, body)
    except Poison:
        return None


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes_are_poison_or_json(body: bytes) -> None:
    try:
        parse_json(body)
    except Poison:
        pass


@FUZZ
@given(near_submissions)
def test_submission_parser_accepts_only_valid_submissions(data: dict[str, Any]) -> None:
    result = only_poison("item.link", json.dumps(data).encode())
    if result is not None:
        assert isinstance(result["public_token"], str) and result["public_token"].startswith("public-")
        assert isinstance(result["client_user_id"], str) and 1 <= len(result["client_user_id"]) <= 128
        assert set(result) <= {"public_token", "client_user_id", "account_id", "request_id"}


@FUZZ
@given(json_values)
def test_submission_parser_never_crashes_on_any_json(data: Any) -> None:
    only_poison("item.link", json.dumps(data).encode())


@FUZZ
@given(near_envelopes, st.sampled_from(["webhook.plaid", "webhook.atomic"]))
def test_envelope_parser_accepts_only_well_formed_envelopes(data: dict[str, Any], schema: str) -> None:
    result = only_poison(schema, json.dumps(data).encode())
    if result is not None:
        assert result["source"] == schema.split(".")[1]
        assert isinstance(result["webhook"], dict)
        assert len(result["body_sha256"]) == 64


@FUZZ
@given(st.text(max_size=100))
@example("item.link")
@example("item.drive")
@example("item.repaired")  # once found only by chance: every key the worker handles is an example
@example("webhook.plaid.ITEM.ERROR")
@example("webhook.atomic.verified")
@example("item.state.atomic_verified")
def test_routing_keys_map_to_a_schema_or_none(routing_key: str) -> None:
    name = schema_for(routing_key)
    assert name in (None, "item.link", "item.drive", "item.repaired", "webhook.plaid", "webhook.atomic")


@FUZZ
@given(
    st.one_of(near_envelopes, near_submissions),
    st.sampled_from(["webhook.plaid", "webhook.atomic", "item.link"]),
)
def test_the_compiled_check_is_at_least_as_strict_as_jsonschema(data: dict[str, Any], schema: str) -> None:
    import schemas

    if not schemas.validator(schema).is_valid(data):
        assert schemas.first_violation(schema, data) is not None
