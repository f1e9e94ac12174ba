"""Schedules: cron in a time zone (across DST changes), intervals, the horizon, validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from control_plane.errors import InvalidArgument
from control_plane.models import Schedule, Scheduling
from control_plane.orchestration import schedules

PARIS = "Europe/Paris"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def test_cron_in_a_zone_keeps_the_wall_clock_across_the_spring_change() -> None:
    daily = Schedule("daily", cron="0 9 * * *", timezone=PARIS)
    times = schedules.next_times(daily, utc(2026, 3, 27, 12), 3)
    # 09:00 in Paris is 08:00 UTC in winter (CET) and 07:00 UTC in summer (CEST).
    assert times == [utc(2026, 3, 28, 8), utc(2026, 3, 29, 7), utc(2026, 3, 30, 7)]


def test_a_time_skipped_in_spring_fires_once_shifted_by_the_gap() -> None:
    # 02:30 does not exist in Paris on 2026-03-29 (02:00 -> 03:00).
    nightly = Schedule("nightly", cron="30 2 * * *", timezone=PARIS)
    times = schedules.next_times(nightly, utc(2026, 3, 27, 12), 3)
    assert times == [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 30), utc(2026, 3, 30, 0, 30)]
    assert times[1].astimezone(schedules.zone(PARIS, "tz")).hour == 3  # 03:30 local


def test_a_time_repeated_in_autumn_fires_once() -> None:
    # 02:30 happens twice in Paris on 2026-10-25 (03:00 -> 02:00): one run, not two.
    nightly = Schedule("nightly", cron="30 2 * * *", timezone=PARIS)
    times = schedules.next_times(nightly, utc(2026, 10, 23, 12), 3)
    assert times == [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]
    assert len(set(times)) == 3


def test_cron_without_a_zone_is_utc() -> None:
    hourly = Schedule("hourly", cron="0 * * * *")
    assert schedules.next_times(hourly, utc(2026, 1, 1, 10, 30), 2) == [
        utc(2026, 1, 1, 11),
        utc(2026, 1, 1, 12),
    ]


def test_intervals_count_from_their_anchor_and_never_repeat_the_present() -> None:
    every = Schedule("every", interval_seconds=600, anchor=utc(2026, 1, 1, 0, 5))
    assert schedules.next_times(every, utc(2026, 1, 1, 1, 5), 2) == [
        utc(2026, 1, 1, 1, 15),
        utc(2026, 1, 1, 1, 25),
    ]
    # Before the anchor, the anchor is the first firing.
    assert schedules.next_times(every, utc(2025, 1, 1), 1) == [utc(2026, 1, 1, 0, 5)]


def test_the_horizon_is_three_runs_or_an_hour_whichever_is_more_capped_at_100() -> None:
    now = utc(2026, 1, 1)
    daily = Schedule("d", cron="0 0 * * *")
    assert len(schedules.upcoming(daily, now)) == 3
    ten_minutes = Schedule("t", interval_seconds=600)
    assert schedules.upcoming(ten_minutes, now)[-1] == now + timedelta(hours=1)
    every_second = Schedule("s", interval_seconds=1)
    assert len(schedules.upcoming(every_second, now)) == schedules.MAX_HORIZON_RUNS


def test_idempotency_keys_name_the_schedule_and_the_firing() -> None:
    key = schedules.idempotency_key("nightly", utc(2026, 1, 1, 2))
    assert key == "schedule:nightly:2026-01-01T02:00:00+00:00"


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (Schedule("bad-cron", cron="61 * * * *"), "bad-cron"),
        (Schedule("four", cron="* * * *"), "five-field"),
        (Schedule("zone", cron="0 * * * *", timezone="Mars/Olympus"), "not an IANA time zone"),
        (Schedule("fast", interval_seconds=-1), "fast"),
        (Schedule("empty"), "set cron"),
        (Schedule("never", cron="0 0 31 2 *"), "never fires"),
    ],
)
def test_bad_schedules_are_refused_naming_the_schedule(schedule: Schedule, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        schedules.check(Scheduling(schedules=(schedule,)))
    assert message in str(caught.value)
    assert repr(schedule.name) in str(caught.value)


def test_duplicate_schedule_names_are_refused() -> None:
    twice = (Schedule("a", cron="0 * * * *"), Schedule("a", interval_seconds=60))
    with pytest.raises(InvalidArgument, match="duplicate schedule name 'a'"):
        schedules.check(Scheduling(schedules=twice))


def test_retries_and_limits_are_bounded() -> None:
    with pytest.raises(InvalidArgument, match="retries"):
        schedules.check(Scheduling(retries=101))
    with pytest.raises(InvalidArgument, match="retry_delay_seconds"):
        schedules.check(Scheduling(retry_delay_seconds=-1))
    with pytest.raises(InvalidArgument, match="concurrency_limit"):
        schedules.check(Scheduling(concurrency_limit=-1))


def test_firings_stop_at_the_end_of_the_calendar() -> None:
    late = Schedule("late", interval_seconds=86_400 * 365, anchor=datetime(9999, 6, 1, tzinfo=UTC))
    assert schedules.next_times(late, utc(2026, 1, 1), 3) == [datetime(9999, 6, 1, tzinfo=UTC)]
    assert len(schedules.upcoming(late, utc(2026, 1, 1))) == 1
