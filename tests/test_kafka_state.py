"""The Kafka source's pure core: a partition's committed state and the messages that move it."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.core.position import Position
from service.sources.kafka.commit_state import (
    StateUnreadable,
    apply_clean_messages,
    apply_message,
    decode,
    encode,
)
from service.sources.kafka.publish import _messages
from tests.oracle import expected_of


@pytest.mark.parametrize(
    "position", [Position(), Position(7, 10, 8, 2, -5), Position(3, 1, 1, 0, 10**5000)]
)
def test_a_state_survives_its_commit_metadata(position: Position) -> None:
    """encode then decode gives the same state back, exactly, a 5,000-digit sum included."""
    assert decode(position.offset, encode(position)) == position


@pytest.mark.parametrize(
    "metadata",
    [
        "",
        "not json",
        "[]",
        '{"v":2,"lines":0,"records":0,"bad_records":0,"sum":"0"}',
        '{"v":1,"lines":0,"records":0,"bad_records":0,"sum":0}',
        '{"v":1,"lines":0,"records":0,"bad_records":0,"sum":"1.5"}',
        '{"v":1,"lines":"1","records":0,"bad_records":0,"sum":"0"}',
        '{"v":1,"lines":0,"records":-1,"bad_records":0,"sum":"0"}',
        '{"v":1,"lines":1,"records":1,"bad_records":1,"sum":"0"}',
        '{"v":1,"lines":1,"records":1,"bad_records":0,"sum":"\u0663"}',  # an Arabic-Indic 3
        '{"v":1,"lines":1,"records":1,"bad_records":0,"sum":" 5"}',
        '{"v":1,"lines":1,"records":1,"bad_records":0,"sum":"5","extra":1}',
        '{"v":1,"lines":1,"records":1,"bad_records":0,"sum":"5","sum":"7"}',
        '{"v":true,"lines":1,"records":1,"bad_records":0,"sum":"5"}',
    ],
)
def test_metadata_that_is_not_our_state_is_refused(metadata: str) -> None:
    """Anything but exactly a version 1 state with sane counts is refused, never read as zeros
    or as some other number."""
    with pytest.raises(StateUnreadable):
        decode(5, metadata)


@pytest.mark.parametrize(
    "value", [b"1\n2\n", b"1\n2", b" +3\t\r\n\n-4", b"", b"x\n5\n1.5", b"\xff\n7"]
)
def test_a_message_adds_what_the_oracle_says(value: bytes) -> None:
    """A message's lines count by the input rules, its last line a record without '\\n'."""
    applied = apply_message(
        Position(4), 4, value, 4096, stop_at_bad=False, bad_details=100
    ).position
    expected = expected_of(value)
    assert (applied.offset, applied.lines, applied.records, applied.bad_records, applied.sum) == (
        5,
        expected.lines,
        expected.records,
        expected.bad_records,
        expected.sum,
    )


@given(
    st.lists(
        st.one_of(
            st.none(),
            st.lists(st.sampled_from(["1", "-22", " +3\t", "", "\r", "x", "9" * 25, "4.5"]))
            .map("\n".join)
            .map(str.encode),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_a_batch_in_one_parse_equals_its_messages_one_by_one(values: list[bytes | None]) -> None:
    """Messages parsed at once give the state they give one by one; with a bad record among
    them, the batch is left to the one-by-one path (which says where each bad one is)."""
    start = Position(7, 10, 9, 1, 100)
    one_by_one = start
    for offset, value in enumerate(values, start=7):
        one_by_one = apply_message(
            one_by_one, offset, value, 20, stop_at_bad=False, bad_details=0
        ).position
    at_once = apply_clean_messages(start, 7 + len(values) - 1, values, 20)
    if one_by_one.bad_records > start.bad_records:
        assert at_once is None
    else:
        assert at_once == one_by_one


def test_a_bad_record_under_fail_leaves_the_state_before_the_message() -> None:
    """Under `fail` a message with a bad line is not applied at all; the line is named."""
    before = Position(2, 3, 3, 0, 6)
    applied = apply_message(before, 2, b"1\noops\n", 4096, stop_at_bad=True, bad_details=100)
    assert applied.position == before
    assert applied.failed is not None
    assert applied.failed.line == 2


@pytest.mark.parametrize("lines_per_message", [1, 3, 1000])
def test_publish_cuts_whole_lines_and_says_where_each_message_ends(lines_per_message: int) -> None:
    """Messages hold whole lines, at most `lines_per_message`, and their end offsets chain up
    to the file's size; together they read as the file does."""
    data = b"1\n22\n\n-3\r\n" + b"9" * 50 + b"\n4"
    messages = list(_messages(io.BytesIO(data), lines_per_message, 20))
    offsets = [end for _value, end in messages]
    assert offsets == sorted(offsets)
    assert offsets[-1] == len(data)
    assert all(value.count(b"\n") <= lines_per_message for value, _end in messages)
    total = Position()
    for index, (value, _end) in enumerate(messages):
        total = apply_message(total, index, value, 20, stop_at_bad=False, bad_details=0).position
    expected = expected_of(data, max_line_bytes=20)
    assert (total.records, total.bad_records, total.sum) == (
        expected.records,
        expected.bad_records,
        expected.sum,
    )
