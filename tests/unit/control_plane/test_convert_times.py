"""Times to and from protobuf Timestamps, by arithmetic, agree with protobuf's own helpers
across the whole range a Timestamp may hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import cast

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from control_plane.api.convert import MAX_SECONDS, MIN_SECONDS, from_timestamp, timestamp
from control_plane.api.engine import _new_lines
from control_plane.models import LogStream
from control_plane.store import line_messages
from flowyard.v1 import engine_pb2, types_pb2


@pytest.mark.parametrize(
    "value",
    [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
        datetime(2026, 12, 4, 17, 30, 0, 123_456, tzinfo=timezone(timedelta(hours=5, minutes=45))),
        datetime(2026, 12, 4, 17, 30, 0, 5),  # naive: taken as UTC, as protobuf does
    ],
)
def test_a_datetime_becomes_the_timestamp_protobuf_would_make(value: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(value)
    assert timestamp(value) == expected


@pytest.mark.parametrize("seconds", [MIN_SECONDS, -86_401, -1, 0, 1_764_869_400, MAX_SECONDS])
@pytest.mark.parametrize("nanos", [0, 1, 999, 1_000, 123_456_789, 999_999_999])
def test_a_timestamp_becomes_the_utc_datetime_protobuf_would_make(seconds: int, nanos: int) -> None:
    value = Timestamp(seconds=seconds, nanos=nanos)
    assert from_timestamp(value, "t") == value.ToDatetime(tzinfo=UTC)
    assert from_timestamp(value, "t").tzinfo is not None


class _Run:
    id = "0123456789abcdef0123456789abcdef"
    attempt = 1


def test_every_log_stream_converts_back_and_unknown_ones_are_unspecified() -> None:
    for stream in LogStream:
        assert line_messages.LOG_STREAMS_BY_WIRE[line_messages.LOG_STREAMS[stream]] is stream
    # A line received with a stream nobody knows is stored as UNSPECIFIED.
    unknown = cast(types_pb2.LogStream.ValueType, 99)
    batch = engine_pb2.LogBatch(lines=[types_pb2.LogLine(seq=1, text="where", stream=unknown)])
    [record] = _new_lines(_Run(), batch, stored=0)  # type: ignore[arg-type]
    assert record.stream is LogStream.UNSPECIFIED
