"""Capture of prints and log records, line truncation, and the log buffer's numbering."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from engine.capture import LineWriter, capture_output
from engine.logbuffer import BATCH_DELAY, BATCH_MAX_LINES, LogBuffer
from engine.model import LogLine, LogStream
from flowyard_common.loglines import MAX_LINE_BYTES, truncate_line


class FakeClock:
    """A monotonic clock that only moves when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def drain(buffer: LogBuffer) -> list[LogLine]:
    lines: list[LogLine] = []
    while batch := buffer.next_batch():
        lines += batch
    return lines


# -- line splitting ----------------------------------------------------------------------


def test_writer_splits_lines_and_tees_to_the_original() -> None:
    buffer = LogBuffer()
    original = io.StringIO()
    writer = LineWriter(buffer, LogStream.STDOUT, logging.INFO, original)

    writer.write("one\ntw")
    writer.write("o\r\nthree")
    assert [line.text for line in drain(buffer)] == ["one", "two"]

    writer.flush_partial()
    assert [line.text for line in drain(buffer)] == ["three"]
    assert original.getvalue() == "one\ntwo\r\nthree"


def test_empty_lines_are_kept_and_nothing_pending_emits_nothing() -> None:
    buffer = LogBuffer()
    writer = LineWriter(buffer, LogStream.STDERR, logging.ERROR, io.StringIO())

    writer.write("\n\nend\n")
    writer.flush_partial()

    lines = drain(buffer)
    assert [line.text for line in lines] == ["", "", "end"]
    assert {(line.stream, line.level) for line in lines} == {(LogStream.STDERR, logging.ERROR)}


def test_capture_output_captures_print_logging_and_system_lines() -> None:
    buffer = LogBuffer()
    root = logging.getLogger()
    level_before = root.level
    with capture_output(buffer, logging.INFO) as capture:
        print("printed")
        print("to stderr", file=sys.stderr)
        logging.getLogger("my.flow").info("hello %s", "there")
        logging.getLogger("my.flow").debug("not captured: below the level")
        logging.getLogger("engine.internal").warning("engine diagnostics stay out")
        try:
            raise ValueError("bad")
        except ValueError:
            logging.getLogger("my.flow").exception("it failed")
        capture.system("Fetched code from /x")
        print("partial", end="")
    assert sys.stdout is not capture.stdout
    assert root.level == level_before
    assert capture.handler not in root.handlers

    lines = drain(buffer)
    simple = [(line.stream, line.logger, line.text.splitlines()[0]) for line in lines]
    assert simple == [
        (LogStream.STDOUT, "", "printed"),
        (LogStream.STDERR, "", "to stderr"),
        (LogStream.LOGGER, "my.flow", "hello there"),
        (LogStream.LOGGER, "my.flow", "it failed"),
        (LogStream.SYSTEM, "flowyard.engine", "Fetched code from /x"),
        (LogStream.STDOUT, "", "partial"),
    ]
    assert "ValueError: bad" in lines[3].text and lines[3].level == logging.ERROR


def test_a_stream_handler_on_the_captured_stderr_is_not_captured_twice() -> None:
    buffer = LogBuffer()
    with capture_output(buffer, logging.INFO):
        handler = logging.StreamHandler(sys.stderr)
        logging.getLogger().addHandler(handler)
        try:
            logging.getLogger("dup").warning("once")
        finally:
            logging.getLogger().removeHandler(handler)
    assert [(line.stream, line.text) for line in drain(buffer)] == [(LogStream.LOGGER, "once")]


# -- truncation --------------------------------------------------------------------------


def test_short_lines_are_untouched() -> None:
    assert truncate_line("x" * 1000) == "x" * 1000


def test_long_lines_are_truncated_with_a_visible_marker() -> None:
    text = "é" * MAX_LINE_BYTES  # 2 bytes each
    result = truncate_line(text)
    assert len(result.encode()) <= MAX_LINE_BYTES
    head, marker = result.split("… [truncated ")
    assert set(head) == {"é"}
    cut = int(marker.removesuffix(" bytes]"))
    assert cut == len(text.encode()) - len(head.encode())


def test_the_buffer_truncates_what_it_is_given() -> None:
    buffer = LogBuffer()
    buffer.write(20, LogStream.STDOUT, "", "y" * (MAX_LINE_BYTES + 10))
    [line] = drain(buffer)
    assert line.text.endswith(" bytes]") and len(line.text.encode()) <= MAX_LINE_BYTES


# -- numbering, acknowledgement, resend --------------------------------------------------


def write_n(buffer: LogBuffer, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        buffer.write(20, LogStream.STDOUT, "", f"line {i}")


def test_seqs_start_after_the_stored_seq_and_are_contiguous() -> None:
    buffer = LogBuffer()
    write_n(buffer, 3)  # written before the stream opened: not numbered yet
    buffer.opened(stored_seq=41)
    write_n(buffer, 2, start=3)
    assert [(line.seq, line.text) for line in drain(buffer)] == [
        (42, "line 0"),
        (43, "line 1"),
        (44, "line 2"),
        (45, "line 3"),
        (46, "line 4"),
    ]


def test_unacknowledged_lines_are_resent_on_a_new_stream() -> None:
    buffer = LogBuffer()
    buffer.opened(0)
    write_n(buffer, 5)
    assert [line.seq for line in drain(buffer)] == [1, 2, 3, 4, 5]
    buffer.ack(2)
    assert buffer.pending == 3

    buffer.opened(stored_seq=3)  # the server had stored one more than it acknowledged
    assert [line.seq for line in drain(buffer)] == [4, 5]
    write_n(buffer, 1, start=5)
    assert [line.seq for line in drain(buffer)] == [6]


def test_more_unacknowledged_lines_than_a_batch_are_all_resent_in_order() -> None:
    # A fast writer fills the in-flight window, then the stream breaks before any ack: the
    # next stream gets every line again, batch after batch, with no seq skipped.
    buffer = LogBuffer()
    buffer.opened(0)
    unacknowledged = 3 * BATCH_MAX_LINES + 7
    write_n(buffer, unacknowledged)
    assert [line.seq for line in drain(buffer)] == list(range(1, unacknowledged + 1))

    buffer.opened(stored_seq=5)
    write_n(buffer, 3, start=unacknowledged)
    resent = drain(buffer)
    assert [line.seq for line in resent] == list(range(6, unacknowledged + 4))
    assert [line.text for line in resent] == [f"line {i}" for i in range(5, unacknowledged + 3)]


def test_batches_are_due_after_the_delay_or_when_full() -> None:
    clock = FakeClock()
    notified: list[int] = []
    buffer = LogBuffer(monotonic=clock)
    buffer.set_listener(lambda: notified.append(1))
    buffer.opened(0)
    assert buffer.batch_delay() is None

    write_n(buffer, 1)
    assert notified == [1]
    assert buffer.batch_delay() == pytest.approx(BATCH_DELAY)
    clock.now += BATCH_DELAY * 0.75
    assert buffer.batch_delay() == pytest.approx(BATCH_DELAY * 0.25)
    write_n(buffer, BATCH_MAX_LINES - 1, start=1)
    assert buffer.batch_delay() == 0
    assert len(notified) == 2  # first line, then the full batch
    write_n(buffer, 10, start=BATCH_MAX_LINES)
    assert len(notified) == 2  # lines written while it is full wake nobody again
    assert len(buffer.next_batch()) == BATCH_MAX_LINES
    assert len(buffer.next_batch()) == 10
    assert buffer.batch_delay() is None


def test_wait_acknowledged_makes_batches_urgent_and_waits_for_the_ack() -> None:
    buffer = LogBuffer()
    buffer.opened(0)
    write_n(buffer, 2)
    assert not buffer.wait_acknowledged(timeout=0.01)
    assert buffer.batch_delay() == 0  # urgent now, no waiting for the batch delay
    drain(buffer)
    buffer.ack(2)
    assert buffer.wait_acknowledged(timeout=0.01)


def test_overflow_drops_the_oldest_unsent_lines_behind_one_marker() -> None:
    buffer = LogBuffer(capacity=10, max_in_flight=4)
    buffer.opened(0)
    write_n(buffer, 4)
    assert [line.seq for line in drain(buffer)] == [1, 2, 3, 4]  # in flight, unacknowledged
    write_n(buffer, 10, start=4)  # control plane unreachable: 4 of these must go

    assert drain(buffer) == []  # the in-flight window is full until an ack
    buffer.ack(4)
    lines = drain(buffer)  # a window's worth: the marker and three lines
    buffer.ack(lines[-1].seq)
    lines += drain(buffer)
    assert [line.seq for line in lines] == list(range(5, 12))
    marker = lines[0]
    assert marker.text == "4 log lines dropped: the control plane was unreachable"
    assert (marker.stream, marker.logger, marker.level) == (
        LogStream.SYSTEM,
        "flowyard.engine",
        logging.WARNING,
    )
    assert [line.text for line in lines[1:]] == [f"line {i}" for i in range(8, 14)]


def test_numbered_lines_are_never_dropped() -> None:
    buffer = LogBuffer(capacity=4, max_in_flight=2)
    buffer.opened(0)
    write_n(buffer, 2)
    sent = drain(buffer)
    write_n(buffer, 20, start=2)
    buffer.opened(0)  # reconnect: the numbered lines come back first, unchanged
    assert drain(buffer) == sent


def test_batches_stay_under_the_byte_limit() -> None:
    buffer = LogBuffer()
    buffer.opened(0)
    for _ in range(5):
        buffer.write(20, LogStream.STDOUT, "", "é" * 1000)  # 2000 bytes each
    sizes = [len(buffer.next_batch(max_bytes=4500)) for _ in range(3)]
    assert sizes == [2, 2, 1]


def test_records_are_echoed_to_the_original_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    original = io.StringIO()
    monkeypatch.setattr(sys, "stderr", original)
    buffer = LogBuffer()
    with capture_output(buffer, logging.INFO):
        logging.basicConfig(level=logging.DEBUG)  # a no-op: the root logger has a handler
        logging.getLogger("shown").warning("in the container output too")
    assert "WARNING shown: in the container output too\n" in original.getvalue()
    assert [line.text for line in drain(buffer)] == ["in the container output too"]


def test_lines_held_back_by_a_full_window_are_due_as_soon_as_it_opens() -> None:
    clock = FakeClock()
    buffer = LogBuffer(capacity=100, max_in_flight=2, monotonic=clock)
    buffer.opened(0)
    write_n(buffer, 3)
    clock.now += 1
    assert [line.seq for line in buffer.next_batch()] == [1, 2]
    assert buffer.batch_delay() is None  # window full
    buffer.ack(2)
    assert buffer.batch_delay() == 0
    assert [line.seq for line in buffer.next_batch()] == [3]
    assert buffer.batch_delay() is None
