"""Retrying Kubernetes API calls: 429 (honouring Retry-After), 5xx and connection errors.

Delays use full jitter, like the agent's reconnects, so that many agents throttled by one
API server do not come back at the same instant. A Retry-After from the server is a floor
(capped by ``max_retry_after``): waiting less would only earn another 429.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from agent.backoff import ceiling
from agent.errors import KubernetesError
from agent.settings import ApiRetrySettings

__all__ = ["retry_delay", "with_retries"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def retry_delay(
    settings: ApiRetrySettings,
    failures: int,
    error: KubernetesError,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float:
    """How long to wait after the ``failures``-th consecutive failure (counting from 1)."""
    delay = uniform(0.0, ceiling(settings.backoff, failures - 1))
    if error.retry_after is not None:
        delay = max(delay, min(error.retry_after, settings.max_retry_after))
    return delay


async def with_retries(
    call: Callable[[], Awaitable[T]],
    settings: ApiRetrySettings,
    *,
    what: str,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    uniform: Callable[[float, float], float] = random.uniform,
) -> T:
    """Await ``call()`` until it succeeds, fails for good, or ``settings.attempts`` are spent.

    Only :attr:`KubernetesError.retryable` errors are retried; the last error is raised.
    """
    failures = 0
    while True:
        try:
            return await call()
        except KubernetesError as error:
            failures += 1
            if not error.retryable or failures >= settings.attempts:
                raise
            delay = retry_delay(settings, failures, error, uniform)
            logger.warning(
                "%s failed (%s); retry %d of %d in %.2f s",
                what,
                error,
                failures,
                settings.attempts - 1,
                delay,
            )
            await sleep(delay)
