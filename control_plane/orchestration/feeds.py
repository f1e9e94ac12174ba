"""One reader for every follower of a run that has caught up with its lines.

A follower reads on its own until it has every stored line, then joins its run's feed: a
task that waits for the run's signal, reads what was stored, and hands the same batch to each
follower. Without it, each follower woke for every batch, joined a shared read, woke again
when the read was done, read again to learn that nothing more had come, and went back to
waiting: three wake-ups and two reads per batch and follower, where the feed costs one wake-up
per follower and one read per batch in all. With hundreds of browsers following one run,
those wake-ups were most of what the control plane spent on them.

A feed hands on every line after the position it started from, in order and without gaps (it
reads its run's lines in order, the way a follower does). A follower joins only a feed that is
not ahead of it, skips what it has already, and if it falls behind by more than
``MAX_QUEUED`` batches, or the feed ends without the run's end, it leaves and reads on its own
again: a feed never decides what a follower sees, only how soon.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from control_plane.models import LogRecord, Run
from control_plane.orchestration.signals import RECHECK_SECONDS, Signals, lines_key, wait_or_recheck

__all__ = ["MAX_QUEUED", "STOPPED", "Feed", "Item", "Stopped", "Subscription"]

#: Batches a follower may have waiting before it is told to read on its own.
MAX_QUEUED = 64

#: (the run as read before the lines, the lines): lines None after ``idle`` quiet seconds;
#: empty once the run has ended and every line was handed on.
Item = tuple[Run, list[LogRecord] | None]


class Stopped:
    """The server stops (``Following.stop``)."""


STOPPED = Stopped()

Read = Callable[[str, str, int, int], Awaitable[tuple[Run, list[LogRecord]]]]


class Subscription:
    """A follower's place in a feed: the batches handed to it and not yet taken."""

    def __init__(self, feed: Feed) -> None:
        self._feed = feed
        self._items: deque[Item | Stopped] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._left = False

    async def next(self) -> Item | Stopped | None:
        """The next batch, STOPPED, or None when the follower must read on its own again (it
        fell behind, or the feed ended without the run's end)."""
        while not self._items:
            if self._left:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def leave(self) -> None:
        """The follower is gone (or must read on its own): take nothing more."""
        self._left = True
        self._feed.left(self)

    def _hand(self, item: Item | Stopped) -> None:
        if len(self._items) >= MAX_QUEUED:
            self._items.clear()
            self.leave()
        else:
            self._items.append(item)
        self._wake()

    def _end(self) -> None:
        self._left = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Feed:
    """The live lines of one followed run (``run_id``, whose lines are stored under
    ``source``), read from ``position`` on for every subscriber."""

    def __init__(
        self,
        read: Read,
        signals: Signals,
        run_id: str,
        source: str,
        position: tuple[int, int],
        idle: float | None,
        stopping: Callable[[], bool],
    ) -> None:
        self._read = read
        self._signals = signals
        self._run_id = run_id
        self._source = source
        #: The last line handed on (or the position the feed started from).
        self.position = position
        self._idle = idle
        self._stopping = stopping
        self._subscriptions: set[Subscription] = set()
        self.task: asyncio.Task[None] | None = None

    def subscribe(self) -> Subscription:
        """A new follower, at or after ``position``."""
        subscription = Subscription(self)
        self._subscriptions.add(subscription)
        return subscription

    def left(self, subscription: Subscription) -> None:
        """``subscription`` takes nothing more; the feed ends with its last follower."""
        self._subscriptions.discard(subscription)
        if not self._subscriptions and self.task is not None:
            self.task.cancel()

    @property
    def ended(self) -> bool:
        """Whether the feed hands on nothing more."""
        return self.task is not None and self.task.done()

    async def run(self) -> None:
        """Read and hand on until the run has ended, the server stops, or no one follows."""
        try:
            while self._subscriptions:
                with self._signals.waiting(lines_key(self._source)) as changed:
                    run, lines = await self._read(self._run_id, self._source, *self.position)
                    if lines:
                        self.position = (lines[-1].attempt, lines[-1].seq)
                        self._hand((run, lines))
                        continue
                    if run.is_terminal:
                        self._hand((run, []))
                        return
                    if self._stopping():
                        self._hand(STOPPED)
                        return
                    woken = await wait_or_recheck(changed, within=self._idle or RECHECK_SECONDS)
                if self._stopping():
                    self._hand(STOPPED)
                    return
                if not woken and self._idle is not None:
                    self._hand((run, None))
        finally:
            for subscription in list(self._subscriptions):
                subscription._end()

    def _hand(self, item: Item | Stopped) -> None:
        for subscription in list(self._subscriptions):
            subscription._hand(item)
