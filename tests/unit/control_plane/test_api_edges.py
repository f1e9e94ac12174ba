"""The API edge: timestamps, status messages and report text that clients cannot break."""

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from control_plane.api import convert, errors
from control_plane.errors import InvalidArgument


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(253_402_300_800, 0), (-62_135_596_801, 0), (2**62, 0), (0, -1), (0, 1_000_000_000)],
)
def test_timestamps_outside_the_protobuf_range_name_the_field(seconds: int, nanos: int) -> None:
    with pytest.raises(InvalidArgument, match=r"^scheduled_time: not a valid time"):
        convert.from_timestamp(Timestamp(seconds=seconds, nanos=nanos), "scheduled_time")


def test_timestamps_at_the_edges_of_the_range_convert() -> None:
    assert convert.from_timestamp(Timestamp(seconds=-62_135_596_800), "t").year == 1
    latest = convert.from_timestamp(Timestamp(seconds=253_402_300_799, nanos=999_999_999), "t")
    assert latest.year == 9999


def test_status_messages_fit_in_a_trailer_whatever_they_quote() -> None:
    # Beyond ASCII, a status message is percent-encoded: three bytes on the wire per byte.
    message = errors.message_of(InvalidArgument("name: " + "😀" * 10_000))
    assert len(message.encode()) <= errors.MAX_MESSAGE_BYTES
    assert message.startswith("name: 😀") and message.endswith("bytes in all)")


def test_status_messages_are_valid_utf8_even_with_unpaired_surrogates() -> None:
    message = errors.message_of(InvalidArgument("parameters: \ud800: bad"))
    assert message == "parameters: \\ud800: bad"
    message.encode()


def test_reported_text_loses_only_its_nul_characters() -> None:
    assert convert.storable("a\x00b") == "a\ufffdb"
