"""How the CLI fits a table to a terminal: whole columns keep their width, the others share."""

from __future__ import annotations

import pytest

from control_plane.cli.output import Column, _fit
from control_plane.cli.runs import follow_logs
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2

COLUMNS = [Column("RUN", whole=True), Column("DEPLOYMENT"), Column("STATE"), Column("AGENT")]
NATURAL = [32, 40, 16, 5]  # widest cell (or header) of each column


def test_a_table_that_fits_keeps_its_natural_widths() -> None:
    assert _fit(COLUMNS, NATURAL, 200) == NATURAL


@pytest.mark.parametrize("terminal", [90, 80, 60])
def test_on_a_narrower_terminal_the_widest_columns_wrap_and_ids_stay_whole(terminal: int) -> None:
    widths = _fit(COLUMNS, NATURAL, terminal)
    assert widths[0] == 32
    assert sum(widths) + 2 * (len(widths) - 1) == terminal
    assert widths[3] == 5  # short columns stay whole; the widest gives way first
    assert widths[1] >= widths[2] >= len("STATE")


def test_a_terminal_too_narrow_for_the_ids_gets_a_wider_table_not_a_cut_id() -> None:
    widths = _fit(COLUMNS, NATURAL, 30)
    assert widths[0] == 32
    assert widths[1:] == [8, 8, 5]


def test_logs_are_printed_a_message_at_a_time_with_one_header_per_attempt(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def line(attempt: int, seq: int, text: str) -> types_pb2.LogLine:
        message = types_pb2.LogLine(attempt=attempt, seq=seq, level=20, text=text)
        message.timestamp.seconds, message.timestamp.nanos = 1_796_000_000 + seq, 5_000_000
        return message

    class Stub:
        def TailLogs(self, request: pb.TailLogsRequest) -> list[pb.TailLogsResponse]:
            done = types_pb2.RunState(type=types_pb2.STATE_TYPE_COMPLETED)
            return [
                pb.TailLogsResponse(lines=[line(1, 1, "one"), line(1, 2, "two")]),
                pb.TailLogsResponse(lines=[line(1, 3, "three"), line(2, 1, "again")], state=done),
            ]

    state = follow_logs(Stub(), "r", follow=False, headers=True)
    assert state.type == types_pb2.STATE_TYPE_COMPLETED
    assert capsys.readouterr().out.splitlines() == [
        "=== attempt 1 ===",
        "00:53:21.005 INFO     one",
        "00:53:22.005 INFO     two",
        "00:53:23.005 INFO     three",
        "=== attempt 2 ===",
        "00:53:21.005 INFO     again",
    ]
