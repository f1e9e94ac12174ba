"""In-process change notifications: how a stored change wakes whoever waits for it.

A waiter takes ``signals.waiter(key)`` *before* it reads the database, then reads, then awaits
the event if it found nothing new. ``notify(key)`` after a commit sets every event taken so far
for that key, so no change between the read and the wait is missed. Keys name what changed:
``run_key(run_id)`` for a run's state or logs.

This is the single-process bus; several control-plane replicas on PostgreSQL feed the same
``notify`` from LISTEN/NOTIFY.
"""

from __future__ import annotations

import asyncio


def run_key(run_id: str) -> str:
    """The key notified when a run's state changes or lines are added to its logs."""
    return f"run:{run_id}"


class Signals:
    """Keyed one-shot events."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def waiter(self, key: str) -> asyncio.Event:
        """An event set by the next ``notify(key)``."""
        event = self._events.get(key)
        if event is None:
            event = self._events[key] = asyncio.Event()
        return event

    def notify(self, key: str) -> None:
        """Wake everyone waiting on ``key``."""
        event = self._events.pop(key, None)
        if event is not None:
            event.set()
