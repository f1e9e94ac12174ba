"""What a follower may be served from the lines just stored, and when it must read the database."""

from __future__ import annotations

from datetime import UTC, datetime

from control_plane.models import LogRecord, LogStream
from control_plane.orchestration.recent_lines import RecentLines

RUN = "a" * 32
WHEN = datetime(2026, 1, 1, tzinfo=UTC)


def lines(first: int, last: int, attempt: int = 1) -> list[LogRecord]:
    return [
        LogRecord(RUN, attempt, seq, WHEN, 20, LogStream.STDOUT, "", f"line {seq}")
        for seq in range(first, last + 1)
    ]


def seqs(records: list[LogRecord] | None) -> list[int] | None:
    return None if records is None else [record.seq for record in records]


def test_lines_of_a_run_nobody_follows_are_not_kept() -> None:
    recent = RecentLines(keep=100, most=1_000)
    recent.stored(RUN, lines(1, 10))
    with recent.following(RUN):
        assert recent.after(RUN, 1, 0, 100) is None


def test_a_follower_inside_the_kept_range_is_served_what_follows_it() -> None:
    recent = RecentLines(keep=100, most=1_000)
    with recent.following(RUN):
        recent.stored(RUN, lines(5, 10))
        recent.stored(RUN, lines(11, 12))
        assert seqs(recent.after(RUN, 1, 4, 100)) == list(range(5, 13))
        assert seqs(recent.after(RUN, 1, 7, 3)) == [8, 9, 10]


def test_the_database_is_read_at_the_end_of_the_range_and_outside_it() -> None:
    """At the end, another replica may have stored more; before it, lines are not kept."""
    recent = RecentLines(keep=100, most=1_000)
    with recent.following(RUN):
        recent.stored(RUN, lines(5, 10))
        assert recent.after(RUN, 1, 10, 100) is None
        assert recent.after(RUN, 1, 3, 100) is None
        assert recent.after(RUN, 2, 4, 100) is None
        assert recent.after(RUN, 0, 0, 100) is None


def test_a_gap_or_another_attempt_starts_the_range_anew() -> None:
    recent = RecentLines(keep=100, most=1_000)
    with recent.following(RUN):
        recent.stored(RUN, lines(1, 10))
        recent.stored(RUN, lines(20, 25))  # 11 to 19 were stored elsewhere
        assert recent.after(RUN, 1, 5, 100) is None
        assert seqs(recent.after(RUN, 1, 19, 100)) == list(range(20, 26))
        recent.stored(RUN, lines(1, 3, attempt=2))
        assert recent.after(RUN, 1, 19, 100) is None
        assert seqs(recent.after(RUN, 2, 0, 100)) == [1, 2, 3]


def test_resent_lines_are_kept_once() -> None:
    recent = RecentLines(keep=100, most=1_000)
    with recent.following(RUN):
        recent.stored(RUN, lines(1, 10))
        recent.stored(RUN, lines(6, 14))
        recent.stored(RUN, lines(3, 8))
        assert seqs(recent.after(RUN, 1, 0, 100)) == list(range(1, 15))


def test_only_the_latest_lines_are_kept_and_none_once_the_last_follower_leaves() -> None:
    recent = RecentLines(keep=10, most=1_000)
    with recent.following(RUN):
        with recent.following(RUN):
            for first in range(1, 100, 5):
                recent.stored(RUN, lines(first, first + 4))
            assert recent.after(RUN, 1, 50, 100) is None
            assert seqs(recent.after(RUN, 1, 90, 100)) == list(range(91, 101))
        assert seqs(recent.after(RUN, 1, 95, 100)) == list(range(96, 101))
    with recent.following(RUN):
        assert recent.after(RUN, 1, 95, 100) is None


def test_past_the_limit_the_run_that_stored_least_recently_is_forgotten() -> None:
    recent = RecentLines(keep=100, most=25)
    other = "c" * 32
    with recent.following(RUN), recent.following(other):
        recent.stored(RUN, lines(1, 10))
        recent.stored(
            other,
            [LogRecord(other, 1, seq, WHEN, 20, LogStream.STDOUT, "", "x") for seq in range(1, 11)],
        )
        recent.stored(RUN, lines(11, 20))
        assert seqs(recent.after(RUN, 1, 0, 100)) == list(range(1, 21))
        assert recent.after(other, 1, 0, 100) is None


def test_a_follower_at_the_last_line_kept_has_everything_this_replica_stored() -> None:
    recent = RecentLines(keep=100, most=1_000)
    with recent.following(RUN):
        assert not recent.at_end(RUN, 1, 0)
        recent.stored(RUN, lines(1, 10))
        assert recent.at_end(RUN, 1, 10)
        assert recent.after(RUN, 1, 10, 100) is None  # what follows is the database's to say
        assert not recent.at_end(RUN, 1, 9)
        assert not recent.at_end(RUN, 2, 10)
        # Lines stored elsewhere in between: what is kept starts anew past the gap.
        recent.stored(RUN, lines(13, 14))
        assert not recent.at_end(RUN, 1, 10)
        assert recent.at_end(RUN, 1, 14)
    assert not recent.at_end(RUN, 1, 14)
