"""What the agent tells the control plane, and the outbox that carries it across sessions.

Every report goes through one :class:`Outbox`, whether a session is up or not. The session's
writer sends reports in order and removes each one only after it was written, so a report
caught by a broken stream is sent again by the next session (the server treats a repeated
report idempotently). Credit is the exception: it belongs to a session, and a new session
restates it in ``Hello.capacity``, so :meth:`Outbox.take_credits` drops pending grants then.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from datetime import datetime

from agent.models import InfraEvent, RunKey

__all__ = [
    "Accepted",
    "Cancelled",
    "CreditGranted",
    "InfraObserved",
    "Outbox",
    "Report",
    "SubmitFailed",
    "Submitted",
]


@dataclass(frozen=True)
class Accepted:
    """The agent took an assignment."""

    key: RunKey
    receive_time: datetime


@dataclass(frozen=True)
class Submitted:
    """The attempt's infrastructure exists."""

    key: RunKey
    infrastructure_id: str


@dataclass(frozen=True)
class SubmitFailed:
    """The attempt's infrastructure could not be created."""

    key: RunKey
    reason: str


@dataclass(frozen=True)
class InfraObserved:
    """Something happened to the attempt's infrastructure (``event.ends``: it is over)."""

    event: InfraEvent


@dataclass(frozen=True)
class Cancelled:
    """The infrastructure of a cancelled attempt is gone (or never existed here)."""

    key: RunKey


@dataclass(frozen=True)
class CreditGranted:
    """A slot became free: the server may push this many more assignments."""

    credits: int = 1


Report = Accepted | Submitted | SubmitFailed | InfraObserved | Cancelled | CreditGranted


class Outbox:
    """An ordered queue of reports that outlives sessions.

    Reports are removed only by :meth:`discard` after a successful write, never by reading,
    so nothing is lost when a write fails half-way.
    """

    def __init__(self) -> None:
        self._items: deque[Report] = deque()
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, report: Report) -> None:
        """Queue a report behind the others."""
        self._items.append(report)
        self._changed.set()

    def pending(self) -> tuple[Report, ...]:
        """A snapshot of the queued reports, oldest first."""
        return tuple(self._items)

    def first(self) -> Report | None:
        """The oldest queued report, left in place."""
        return self._items[0] if self._items else None

    def discard(self, report: Report) -> None:
        """Remove ``report`` once it has been written; a no-op if it is no longer first."""
        if self._items and self._items[0] is report:
            self._items.popleft()

    async def wait(self) -> Report:
        """Wait until a report is queued and return the oldest one, left in place."""
        while not self._items:
            self._changed.clear()
            await self._changed.wait()
        return self._items[0]

    def take_credits(self) -> int:
        """Drop the pending credit grants (a new Hello restates capacity); return their sum."""
        credits = sum(r.credits for r in self._items if isinstance(r, CreditGranted))
        if credits:
            self._items = deque(r for r in self._items if not isinstance(r, CreditGranted))
        return credits
