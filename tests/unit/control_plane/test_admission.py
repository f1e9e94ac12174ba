"""The retry hint of admission control: about the time the backlog takes to drain."""

import pytest

from control_plane.admission import (
    DEFAULT_RETRY_SECONDS,
    MAX_RETRY_SECONDS,
    MIN_RETRY_SECONDS,
    Pace,
    retry_after,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pace_is_unknown_until_enough_calls_finished_over_a_second() -> None:
    clock = Clock()
    pace = Pace(clock)
    assert pace.per_second() is None
    for _ in range(50):  # a burst's first calls, all within a tenth of a second
        pace.finished()
        clock.now += 0.002
    assert pace.per_second() is None
    for _ in range(200):
        pace.finished()
        clock.now += 0.005
    assert pace.per_second() == pytest.approx(1 / 0.0045, rel=0.2)


def test_pace_forgets_calls_that_finished_long_ago() -> None:
    clock = Clock()
    pace = Pace(clock)
    for _ in range(100):
        pace.finished()
        clock.now += 0.01
    clock.now += 60
    assert pace.per_second() is None


def test_retry_after_is_the_backlog_over_the_pace_within_bounds() -> None:
    assert retry_after(400, 200.0, 1.0) == pytest.approx(2.0)
    assert retry_after(400, 200.0, 1.5) == pytest.approx(3.0)
    assert retry_after(400, None, 1.0) == DEFAULT_RETRY_SECONDS
    assert retry_after(1, 1000.0, 1.0) == MIN_RETRY_SECONDS
    assert retry_after(10**6, 1.0, 1.5) == MAX_RETRY_SECONDS
