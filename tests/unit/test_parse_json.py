"""What paw takes as JSON from the bus and from webhooks (worker.messages.parse_json). No services."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.errors import Poison
from worker.messages import MAX_JSON_DEPTH, parse_json


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"NaN", "not JSON"),
        (b'{"amount": Infinity}', "not JSON"),
        (b'{"amount": -Infinity}', "not JSON"),
        (b"[1e400]", "not JSON"),  # Python's json reads it as inf
        (b'"\\ud800"', "not JSON"),  # a lone surrogate
        (b'{"a": "\xff"}', "not JSON"),  # not UTF-8
        (b'{"id": 18446744073709551616}', "beyond 64 bits"),  # 2**64: orjson would make it a float
        (b"[-9223372036854775809]", "beyond 64 bits"),
        (b"99999999999999999999999", "beyond 64 bits"),
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), "nests deeper"),
        (b"[" * 2000 + b"]" * 2000, "nests deeper"),  # beyond what orjson itself reads
        (b"[" * 16000, "nests deeper"),
        (b"", "not JSON"),
    ],
)
def test_what_is_not_plain_json_is_poison_with_a_reason(body: bytes, why: str) -> None:
    with pytest.raises(Poison, match=why):
        parse_json(body)


def test_the_limits_themselves_are_taken() -> None:
    assert parse_json(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH) is not None
    assert parse_json(b'{"a": 18446744073709551615, "b": -9223372036854775808}') == {
        "a": 2**64 - 1,
        "b": -(2**63),
    }


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False, min_value=-1e18, max_value=1e18)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
@settings(max_examples=300, deadline=None)
def test_json_python_writes_comes_back_as_python_reads_it(value: Any) -> None:
    body = json.dumps(value).encode()
    assert parse_json(body) == json.loads(body)
