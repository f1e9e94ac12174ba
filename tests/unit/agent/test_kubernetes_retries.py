"""Retries of Kubernetes API calls: which errors, how long between tries, when to stop."""

from __future__ import annotations

import pytest

from agent.errors import KubernetesError
from agent.kubernetes.retries import retry_delay, with_retries
from agent.settings import ApiRetrySettings, BackoffSettings

SETTINGS = ApiRetrySettings(attempts=4, backoff=BackoffSettings(base=0.2, cap=1.0))


def highest(low: float, high: float) -> float:
    return high


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(0, True), (429, True), (500, True), (503, True), (400, False), (403, False), (404, False),
     (409, False), (410, False), (422, False)],
)  # fmt: skip
def test_which_errors_are_retried(status: int, retryable: bool) -> None:
    assert KubernetesError(status, "X").retryable is retryable


def test_delays_grow_to_the_cap_with_full_jitter() -> None:
    error = KubernetesError(500, "InternalError")
    assert [retry_delay(SETTINGS, n, error, highest) for n in range(1, 6)] == [
        0.2,
        0.4,
        0.8,
        1.0,
        1.0,
    ]
    assert retry_delay(SETTINGS, 3, error, lambda low, high: low) == 0.0


def test_retry_after_is_a_floor_with_a_cap() -> None:
    throttled = KubernetesError(429, "TooManyRequests", retry_after=3.0)
    assert retry_delay(SETTINGS, 1, throttled, highest) == 3.0
    huge = KubernetesError(429, "TooManyRequests", retry_after=3600.0)
    assert retry_delay(SETTINGS, 1, huge, highest) == SETTINGS.max_retry_after


async def test_transient_errors_are_retried_until_success() -> None:
    outcomes: list[KubernetesError | str] = [
        KubernetesError(0, "ConnectionError"),
        KubernetesError(429, "TooManyRequests", retry_after=2.0),
        KubernetesError(503, "ServiceUnavailable"),
        "done",
    ]
    slept: list[float] = []

    async def call() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, KubernetesError):
            raise outcome
        return outcome

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    assert await with_retries(call, SETTINGS, what="test", sleep=sleep, uniform=highest) == "done"
    assert slept == [0.2, 2.0, 0.8]


async def test_permanent_errors_are_raised_at_once() -> None:
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise KubernetesError(409, "AlreadyExists")

    async def sleep(seconds: float) -> None:
        raise AssertionError("must not sleep")

    with pytest.raises(KubernetesError, match="AlreadyExists"):
        await with_retries(call, SETTINGS, what="test", sleep=sleep)
    assert calls == 1


async def test_the_last_error_is_raised_when_attempts_run_out() -> None:
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise KubernetesError(500, f"InternalError{calls}")

    async def sleep(seconds: float) -> None:
        pass

    with pytest.raises(KubernetesError, match="InternalError4"):
        await with_retries(call, SETTINGS, what="test", sleep=sleep)
    assert calls == SETTINGS.attempts
