"""worker/bus/wire.py's content header against pamqp's, byte for byte (the broker tests in
tests/integration/test_publisher.py send them; a header the broker misreads closes the connection)."""

from __future__ import annotations

import datetime
from typing import Any

import pamqp.frame
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands
from pamqp.header import ContentHeader

from worker.bus.wire import content_header

short = st.one_of(st.none(), st.just(""), st.text(max_size=40))
table_values = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.booleans(),
    st.none(),
)
tables: st.SearchStrategy[dict[str, Any] | None] = st.one_of(
    st.none(), st.just({}), st.dictionaries(st.text(min_size=1, max_size=20), table_values, max_size=6)
)


def pamqp_header(channel: int, size: int, properties: commands.Basic.Properties) -> bytes:
    return pamqp.frame.marshal(ContentHeader(0, size, properties), channel)


@given(
    channel=st.integers(min_value=1, max_value=2047),
    size=st.integers(min_value=0, max_value=2**40),
    content_type=short,
    headers=tables,
    delivery_mode=st.one_of(st.none(), st.sampled_from([1, 2])),
    expiration=short,
    message_id=short,
)
def test_the_publishers_properties_encode_as_pamqp_encodes_them(
    channel: int,
    size: int,
    content_type: str | None,
    headers: dict[str, Any] | None,
    delivery_mode: int | None,
    expiration: str | None,
    message_id: str | None,
) -> None:
    properties = commands.Basic.Properties(
        content_type=content_type,
        headers=headers,
        delivery_mode=delivery_mode,
        expiration=expiration,
        message_id=message_id,
    )
    assert content_header(channel, size, properties) == pamqp_header(channel, size, properties)


def test_the_frame_pamqp_reads_back() -> None:
    properties = commands.Basic.Properties(
        content_type="application/json",
        headers={"x-paw-attempts": 3, "x-paw-queue": "paw.items"},
        delivery_mode=2,
        expiration="1000",
        message_id="e3b0c442",
    )
    _, channel, frame = pamqp.frame.unmarshal(content_header(7, 652, properties))
    assert channel == 7
    assert isinstance(frame, ContentHeader)
    assert frame.body_size == 652
    assert frame.properties.headers == {"x-paw-attempts": 3, "x-paw-queue": "paw.items"}
    assert (frame.properties.message_id, frame.properties.expiration) == ("e3b0c442", "1000")


@pytest.mark.parametrize(
    "other",
    [
        {"content_encoding": "gzip"},
        {"priority": 0},
        {"correlation_id": "c"},
        {"reply_to": "r"},
        {"timestamp": datetime.datetime(2026, 12, 7, tzinfo=datetime.UTC)},
        {"message_type": "t"},
        {"user_id": "guest"},
        {"app_id": "paw"},
    ],
)
def test_any_other_property_is_encoded_too(other: dict[str, Any]) -> None:
    properties = commands.Basic.Properties(content_type="application/json", message_id="m", **other)
    assert content_header(1, 10, properties) == pamqp_header(1, 10, properties)


def test_a_message_id_longer_than_a_short_string_is_refused_as_pamqp_refuses_it() -> None:
    properties = commands.Basic.Properties(message_id="é" * 128)  # 256 bytes
    with pytest.raises(TypeError, match="255 bytes"):
        pamqp_header(1, 1, properties)
    with pytest.raises(TypeError, match="255 bytes"):
        content_header(1, 1, properties)
