"""The wake-or-sleep loop of the control plane's background workers.

The dispatcher and the scheduler work in passes. A pass returns the next time it has
something to do by the clock (or ``None``); between passes the worker sleeps until then, or
until something wakes it first (an event, never a poll), and at most ``max_sleep_seconds``
so that a clock jump cannot stall it for long.

A pass that fails for a reason that passes (``transient``: the database busy, unreachable or
its connection broken, a race lost to another writer) is logged and tried again after a short
pause. Any other failure (a bug, stored data that cannot be read) would fail every pass the
same way: it ends the loop, and the server, which supervises its loops, stops rather than run
on without it (see ``control_plane.server``). Cancellation ends the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from control_plane.orchestration import clock
from control_plane.orchestration.changes import Conflict
from control_plane.store import db

log = logging.getLogger(__name__)

#: Pause after a transient error before the next pass.
ERROR_PAUSE_SECONDS = 1.0


def transient(error: Exception) -> bool:
    """Whether a pass that raised ``error`` may succeed when it is tried again."""
    return isinstance(error, Conflict) or db.transient(error)


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
        """Run passes until cancelled, or until a pass fails for good (its error is raised)."""
        while True:
            # Cleared before the pass, so a wake-up during the pass triggers another one.
            self._wake.clear()
            try:
                next_time = await self._one_pass()
            except Exception as error:
                if not transient(error):
                    raise
                log.exception("%s failed; trying again", self._what)
                next_time = clock.now() + timedelta(seconds=ERROR_PAUSE_SECONDS)
            timeout = self._max_sleep_seconds
            if next_time is not None:
                timeout = min(timeout, max(0.0, (next_time - clock.now()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
