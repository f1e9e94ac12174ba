"""Log lines as ``LogLine`` messages: the form they are sent in, and stored in.

A stored row holds a run of consecutive lines of one attempt (``tables.log_batches``) as the
bytes of ``repeated LogLine lines = 1``: a ``LogBatch`` serialized, each line whole (run,
attempt, seq) as a tail sends it. An engine's batch whose lines all kept their message is
stored as the bytes it came in, and a tail that sends a whole row sends those bytes again:
a line costs no row of its own to store, and no record built from columns to read back.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from google.protobuf.timestamp_pb2 import Timestamp

from control_plane.models import LogRecord, LogStream, WireBatch
from flowyard.v1 import engine_pb2, types_pb2

#: The range of google.protobuf.Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
MIN_SECONDS = -62_135_596_800
MAX_SECONDS = 253_402_300_799
LOG_STREAMS: dict[LogStream, types_pb2.LogStream.ValueType] = {
    s: types_pb2.LogStream.Value(f"LOG_STREAM_{s.name}") for s in LogStream
}
#: The other way round, for a line's stream: read on every log line received (a stream that
#: is not here is unknown, kept as UNSPECIFIED).
LOG_STREAMS_BY_WIRE = {wire: domain for domain, wire in LOG_STREAMS.items()}
#: Times are converted by arithmetic on the epoch rather than with Timestamp.FromDatetime and
#: ToDatetime, which cost three times as much: every log line goes through them.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp_or_none(value: Timestamp) -> datetime | None:
    """A UTC datetime from a protobuf Timestamp; None for a time a Timestamp may not hold.

    The calendar fields of each whole second are kept (a few thousand at most): the lines of
    a log batch were mostly written within the same few seconds, and each needs its time
    (built from its fields, the cheapest way to make a datetime: less than half the cost of
    adding a timedelta).
    """
    seconds, nanos = value.seconds, value.nanos
    if not 0 <= nanos < 1_000_000_000:
        return None
    fields = _SECONDS.get(seconds)
    if fields is None:
        if not MIN_SECONDS <= seconds <= MAX_SECONDS:
            return None
        if len(_SECONDS) >= _SECONDS_KEPT:
            _SECONDS.clear()
        second = EPOCH + timedelta(seconds=seconds)
        fields = _SECONDS[seconds] = (
            second.year,
            second.month,
            second.day,
            second.hour,
            second.minute,
            second.second,
        )
    year, month, day, hour, minute, whole = fields
    return datetime(year, month, day, hour, minute, whole, nanos // 1_000, UTC)


_SECONDS: dict[int, tuple[int, int, int, int, int, int]] = {}
_SECONDS_KEPT = 4_096


def add_log_line(
    into: RepeatedCompositeFieldContainer[types_pb2.LogLine], line: LogRecord
) -> types_pb2.LogLine:
    """Append the LogLine message of ``line`` to a repeated field, built in place (a tail
    sends every line it reads: no message is built twice or copied)."""
    message = into.add()
    fill_log_line(message, line)
    return message


def fill_log_line(message: types_pb2.LogLine, line: LogRecord) -> None:
    """Set the fields of an empty LogLine message to ``line``'s."""
    # Field by field, the time by arithmetic, empty fields left unset: half the cost of
    # keyword construction.
    message.run_id = line.run_id
    message.attempt = line.attempt
    message.seq = line.seq
    since = line.timestamp - EPOCH
    timestamp = message.timestamp
    timestamp.seconds = since.days * 86_400 + since.seconds
    timestamp.nanos = since.microseconds * 1_000
    message.level = line.level
    message.stream = LOG_STREAMS[line.stream]
    if line.logger:
        message.logger = line.logger
    message.text = line.text
    if line.task_run:
        message.task_run = line.task_run
    if line.subflow_run:
        message.subflow_run = line.subflow_run


def encode(lines: Sequence[LogRecord]) -> bytes:
    """The stored form of consecutive lines of one attempt.

    The bytes an engine's batch came in when ``lines`` are exactly that batch and every line
    kept its message (``LogRecord.batch``); otherwise each line's message, as it came or
    built from the record, serialized together.
    """
    whole = lines[0].batch
    if (
        whole is not None
        and whole.first == lines[0].seq
        and whole.count == len(lines)
        and lines[-1].batch is whole
    ):
        return whole.data
    message = engine_pb2.LogBatch()
    into = message.lines
    kept: list[types_pb2.LogLine] = []  # messages to copy together, in order
    for line in lines:
        if line.wire is not None:
            kept.append(line.wire)
            continue
        if kept:
            into.extend(kept)
            kept = []
        add_log_line(into, line)
    if kept:
        into.extend(kept)
    return message.SerializeToString()


def decode(run_id: str, data: bytes, after: int, room: int) -> list[LogRecord]:
    """Up to ``room`` lines of a stored row, those with a seq above ``after``.

    Each record keeps its message (``LogRecord.wire``); when every line of the row is
    returned, they also point to the row as a whole (``LogRecord.batch``), so a tail sends
    the stored bytes as they are.
    """
    message = engine_pb2.LogBatch.FromString(data)
    lines = message.lines
    count = len(lines)
    start = 0
    if count and lines[0].seq <= after:
        start = after + 1 - lines[0].seq
    end = min(count, start + room)
    whole = (
        WireBatch(message, lines[0].seq, count, data)
        if count and start == 0 and end == count
        else None
    )
    streams = LOG_STREAMS_BY_WIRE
    unknown = LogStream.UNSPECIFIED
    records: list[LogRecord] = []
    append = records.append
    for index in range(start, end):
        line = lines[index]
        record = LogRecord(
            run_id,
            line.attempt,
            line.seq,
            timestamp_or_none(line.timestamp) or EPOCH,
            line.level,
            streams.get(line.stream, unknown),
            line.logger,
            line.text,
            line.task_run,
            line.subflow_run,
        )
        record.wire = line
        record.batch = whole
        append(record)
    return records
