"""What a tail sends for the lines an engine just sent: the same messages whether the lines
are served as they arrived or read back from the database."""

from __future__ import annotations

from dataclasses import replace

from control_plane.api.control_plane import TAIL_MESSAGE_BYTES, _tail_responses
from control_plane.api.engine import _new_lines
from control_plane.models import LogRecord
from flowyard.v1 import engine_pb2, types_pb2

RUN_ID = "0123456789abcdef0123456789abcdef"
STATE = types_pb2.RunState(type=types_pb2.STATE_TYPE_RUNNING)


class _Run:
    id = RUN_ID
    attempt = 2


def _batch(
    *texts: str, nanos: int = 123_456_000, first: int = 1, **fields: object
) -> engine_pb2.LogBatch:
    batch = engine_pb2.LogBatch()
    for seq, text in enumerate(texts, start=first):
        line = batch.lines.add(seq=seq, text=text, **{"level": 20, **fields})  # type: ignore[arg-type]
        line.timestamp.seconds = 1_790_000_000
        line.timestamp.nanos = nanos
    # As the server gets it: parsed from the wire.
    return engine_pb2.LogBatch.FromString(batch.SerializeToString())


def _as_read_back(records: list[LogRecord]) -> list[LogRecord]:
    """The same records as the database gives them: without the message they came in."""
    return [replace(record, wire=None, batch=None) for record in records]


def _tailed(records: list[LogRecord]) -> list[bytes]:
    return [message.SerializeToString() for message in _tail_responses(records, STATE)]


def test_lines_as_an_engine_sends_them_are_tailed_as_they_arrived() -> None:
    records = _new_lines(
        _Run(), _batch("one", "twő", "three", stream=types_pb2.LOG_STREAM_STDERR), stored=0
    )
    assert all(record.wire is not None for record in records)
    assert _tailed(records) == _tailed(_as_read_back(records))
    [message] = _tail_responses(records, STATE)
    assert [(line.run_id, line.attempt, line.text) for line in message.lines] == [
        (RUN_ID, 2, "one"),
        (RUN_ID, 2, "twő"),
        (RUN_ID, 2, "three"),
    ]


def test_lines_that_storing_changes_are_tailed_as_stored() -> None:
    changed = [
        _batch("a\x00b"),  # NUL, which PostgreSQL refuses, becomes U+FFFD
        _batch("x" * 300_000),  # cut to the longest line stored
        _batch("late", nanos=123_456_789),  # nanoseconds: stored to the microsecond
        _batch("odd", level=1_000),  # a level beyond logging's range
        _batch("where", stream=99),  # type: ignore[arg-type]  # a stream nobody knows
        _batch("who", logger="a\x00logger"),
    ]
    for batch in changed:
        records = _new_lines(_Run(), batch, stored=0)
        assert [record.wire for record in records] == [None]
        assert _tailed(records) == _tailed(_as_read_back(records))


def test_tail_messages_stay_within_their_size_whatever_the_characters() -> None:
    wide = "字" * 20_000  # 60,000 bytes in UTF-8 for 20,000 characters
    records = _new_lines(_Run(), _batch(*[wide] * 40, logger="ǉ" * 200), stored=0)
    responses = _tail_responses(records, STATE)
    assert len(responses) > 1
    assert all(message.ByteSize() <= TAIL_MESSAGE_BYTES for message in responses)
    assert [line.seq for message in responses for line in message.lines] == list(range(1, 41))


def test_whole_batches_are_tailed_from_their_bytes_and_parts_of_them_line_by_line() -> None:
    """A batch whose every line is new and kept its message is tailed from the batch's own
    bytes; wherever a tail's lines start or end, its messages are those of the same lines
    read back from the database."""
    first = _new_lines(_Run(), _batch("a", "b", "c"), stored=0)
    second = _new_lines(_Run(), _batch("d", "e", first=4), stored=3)
    # A resend: lines 4 and 5 are dropped, so this batch is not sent whole.
    third = _new_lines(_Run(), _batch("d", "e", "f", "g", first=4), stored=5)
    assert {id(record.batch) for record in first} == {id(first[0].batch)} != {None}
    assert first[0].batch is not None and (first[0].batch.first, first[0].batch.count) == (1, 3)
    assert [record.batch for record in third] == [None, None]
    lines = first + second + third
    for start in range(len(lines)):
        for end in range(start + 1, len(lines) + 1):
            part = lines[start:end]
            assert _tailed(part) == _tailed(_as_read_back(part)), (start, end)
    [message] = _tail_responses(lines, STATE)
    assert [line.text for line in message.lines] == list("abcdefg")
    assert {(line.run_id, line.attempt) for line in message.lines} == {(RUN_ID, 2)}


def test_fields_unknown_here_are_neither_stored_nor_sent_on() -> None:
    """A field 2 added to a batch would read as the state in a tail's message, were the
    batch's bytes sent as they came, and a line's unknown field would be stored with it and
    handed to every reader: both are dropped as the batch arrives."""
    forged = types_pb2.RunState(type=types_pb2.STATE_TYPE_CANCELLED, message="forged")
    extra = b"\xfa\x06" + _length(b"from a later version")  # field 111 of a line
    first, second = (line.SerializeToString() for line in _batch("a", "b").lines)
    data = (
        b"\x0a"
        + _length(first + extra)
        + b"\x0a"
        + _length(second)
        + b"\x12"
        + _length(forged.SerializeToString())
    )
    records = _new_lines(_Run(), engine_pb2.LogBatch.FromString(data), stored=0)
    assert records[0].batch is not None and records[1].batch is records[0].batch
    assert records[0].batch.data == _batch("a", "b", run_id=RUN_ID, attempt=2).SerializeToString()
    [message] = _tail_responses(records, STATE)
    assert message.state == STATE
    assert [line.text for line in message.lines] == ["a", "b"]
    assert _tailed(records) == _tailed(_as_read_back(records))


def _length(field: bytes) -> bytes:
    assert len(field) < 128  # a one-byte varint
    return bytes([len(field)]) + field
