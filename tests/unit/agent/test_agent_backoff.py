"""Reconnect backoff: exponential ceiling, capped, fully jittered, reset after a Welcome."""

from __future__ import annotations

import random

import pytest

from agent.backoff import Backoff, ceiling
from agent.settings import BackoffSettings

SETTINGS = BackoffSettings(base=0.5, cap=30.0)


def test_ceiling_doubles_from_base_up_to_cap() -> None:
    assert [ceiling(SETTINGS, n) for n in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_ceiling_survives_very_many_failures() -> None:
    assert ceiling(SETTINGS, 10_000) == 30.0


def test_next_delay_draws_from_zero_to_the_ceiling() -> None:
    calls: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        calls.append((low, high))
        return high

    backoff = Backoff(SETTINGS, uniform=uniform)
    delays = [backoff.next_delay() for _ in range(8)]
    assert calls == [(0.0, c) for c in (0.5, 1, 2, 4, 8, 16, 30, 30)]
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff.failures == 8


def test_reset_starts_again_from_base() -> None:
    calls: list[float] = []
    backoff = Backoff(SETTINGS, uniform=lambda low, high: calls.append(high) or high)
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.failures == 0
    backoff.next_delay()
    assert calls[-1] == 0.5


@pytest.mark.parametrize("failures", [0, 3, 12])
def test_jittered_delays_stay_in_bounds_and_spread_out(failures: int) -> None:
    rng = random.Random(1234)
    high = ceiling(SETTINGS, failures)
    delays = []
    for _ in range(500):
        backoff = Backoff(SETTINGS, uniform=rng.uniform)
        for _ in range(failures):
            backoff.next_delay()
        delays.append(backoff.next_delay())
    assert all(0.0 <= d <= high for d in delays)
    # Full jitter: the whole window is used, not a narrow band around the ceiling.
    assert min(delays) < 0.1 * high
    assert max(delays) > 0.9 * high
    assert len(set(delays)) > 450


def test_default_randomness_is_bounded() -> None:
    backoff = Backoff(SETTINGS)
    for n in range(20):
        assert 0.0 <= backoff.next_delay() <= ceiling(SETTINGS, n)
