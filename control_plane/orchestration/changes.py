"""What every state change shares: retry on a lost compare-and-set, then tell whoever waits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from control_plane.models import Run
from control_plane.orchestration.bus import DISPATCH, LINES, RUN, Bus
from control_plane.orchestration.signals import Signals, run_key
from control_plane.states import StateType

T = TypeVar("T")
MAX_ATTEMPTS = 8


class Conflict(Exception):
    """The run changed between our read and our compare-and-set; read again and retry."""


def claimed(updated: Run | None) -> Run:
    """The result of a compare-and-set; Conflict if another writer changed the run first."""
    if updated is None:
        raise Conflict
    return updated


async def retrying(operation: Callable[[], Awaitable[T]]) -> T:
    """Run a unit of work again while it loses compare-and-set races (rare: writers queue)."""
    for _ in range(MAX_ATTEMPTS - 1):
        try:
            return await operation()
        except Conflict:
            continue
    return await operation()


class Notifier:
    """Publishes committed run changes to waiters and dispatchers, on every replica."""

    def __init__(self, bus: Bus, signals: Signals | None = None) -> None:
        self._bus = bus
        self._signals = signals

    def changed(self, run: Run) -> None:
        """A run's state changed (call after the commit) to ``run``, as committed."""
        if self._signals is not None:
            # The news of the notification the hint brings here (see ``signals.tell``).
            self._signals.tell(run_key(run.id), run)
        self._bus.publish(RUN, run.id)
        # A finished run frees a pool slot; a re-queued one is dispatchable again.
        if run.state_type.is_terminal or run.state_type is StateType.SCHEDULED:
            self._bus.publish(DISPATCH)

    def lines_added(self, run_id: str) -> None:
        """Log lines of a run were stored (call after the commit)."""
        self._bus.publish(LINES, run_id)

    async def apply(self, operation: Callable[[], Awaitable[Run | None]]) -> Run | None:
        """Run a unit of work that may change one run, retrying lost races; publish the change.

        ``operation`` returns the changed run, or None when there was nothing to change.
        """
        run = await retrying(operation)
        if run is not None:
            self.changed(run)
        return run

    def wake_dispatcher(self) -> None:
        """Something that affects dispatch changed (new run, new credit)."""
        self._bus.publish(DISPATCH)
