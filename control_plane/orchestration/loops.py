"""The wake-or-sleep loop of the control plane's background workers.

The dispatcher and the scheduler work in passes. A pass returns the next time it has
something to do by the clock (or ``None``); between passes the worker sleeps until then, or
until something wakes it first (an event, never a poll), and at most ``max_sleep_seconds``
so that a clock jump cannot stall it for long. A pass that fails is logged and tried again
after a short pause; cancellation ends the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from control_plane.orchestration import clock

log = logging.getLogger(__name__)

#: Pause after an unexpected error before the next pass.
ERROR_PAUSE_SECONDS = 1.0


class WakeLoop:
    """Runs passes of one worker: the next pass starts when woken or when its time comes."""

    def __init__(
        self,
        one_pass: Callable[[], Awaitable[datetime | None]],
        *,
        what: str,
        max_sleep_seconds: float,
    ) -> None:
        self._one_pass = one_pass
        self._what = what
        self._max_sleep_seconds = max_sleep_seconds
        self._wake = asyncio.Event()
        # The first pass runs at once.
        self._wake.set()

    def wake(self) -> None:
        """Start the next pass now (or right after the current one)."""
        self._wake.set()

    async def run(self) -> None:
        """Run passes until cancelled."""
        while True:
            # Cleared before the pass, so a wake-up during the pass triggers another one.
            self._wake.clear()
            try:
                next_time = await self._one_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; trying again", self._what)
                next_time = clock.now() + timedelta(seconds=ERROR_PAUSE_SECONDS)
            timeout = self._max_sleep_seconds
            if next_time is not None:
                timeout = min(timeout, max(0.0, (next_time - clock.now()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
