"""Reconnect delays: exponential backoff with full jitter.

Full jitter (sleep ``uniform(0, min(cap, base * 2**n))``) spreads the agents of a fleet
across the whole window after a control-plane restart, instead of having them all come
back at the same instants.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from agent.settings import BackoffSettings

__all__ = ["Backoff", "ceiling"]


def ceiling(settings: BackoffSettings, failures: int) -> float:
    """The largest delay after ``failures`` consecutive failures (0 for the first retry)."""
    # Cap the exponent as well as the result: 2**failures overflows a float long before
    # an agent has been down for that many attempts matters.
    exponent = min(max(failures, 0), 64)
    return min(settings.cap, settings.base * 2.0**exponent)


class Backoff:
    """Counts consecutive failures and draws the next delay.

    ``uniform`` is injectable so tests can pin the jitter.
    """

    def __init__(
        self,
        settings: BackoffSettings,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self._settings = settings
        self._uniform = uniform
        self._failures = 0

    @property
    def failures(self) -> int:
        """Consecutive failures since the last :meth:`reset`."""
        return self._failures

    def next_delay(self) -> float:
        """Record one more failure and return how long to wait before the next attempt."""
        high = ceiling(self._settings, self._failures)
        self._failures += 1
        return self._uniform(0.0, high)

    def reset(self) -> None:
        """Forget past failures; called once a session is established."""
        self._failures = 0
