"""In-process change notifications: how a stored change wakes whoever waits for it.

A waiter enters ``signals.waiting(key)`` *before* it reads the database, then reads, then
awaits the event if it found nothing new. ``notify(key)`` after a commit sets every event taken
so far for that key, so no change between the read and the wait is missed. Keys name what
changed: ``run_key(run_id)`` for a run's state, ``lines_key(run_id)`` for its logs (notified
on a state change too: whoever follows the lines also stops at the run's end).

A waiter is registered only inside its ``with`` block, however the block ends (a finished or
unknown run, a client that hung up), so the registry holds exactly the keys someone is waiting
on right now. Nothing should be yielded to a client inside the block: a server-streaming
handler suspended at a ``yield`` may never be resumed or closed.

The bus (``orchestration.bus``) calls ``notify`` for changes committed by this replica and,
on PostgreSQL, for those other replicas committed (``LISTEN/NOTIFY``).

A waiter that must see every notification of a key, with none lost between a wake-up and its
next wait, taps the key instead (``signals.tapping(key)``): a tap counts the notifications
until it takes them. A change made by this replica can also leave its news on the key's taps
(``signals.tell``, just before its notification): what was committed, which a tap may use
instead of reading it again when it can prove nothing else changed in between (see
``EngineServicer._watch``). News is never the only word: a notification without news (another
replica's, or everyone's after missed hints) is read in full.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

#: A follower re-reads at least this often even without a notification.
RECHECK_SECONDS = 30.0


async def wait_or_recheck(*events: asyncio.Event, within: float = RECHECK_SECONDS) -> bool:
    """Wait until one of ``events`` is set, or ``within`` seconds have passed; whether one
    was set."""
    if len(events) == 1:
        # The common case (a tail waiting for its run's lines), without a task per wait.
        try:
            async with asyncio.timeout(within):
                await events[0].wait()
        except TimeoutError:
            return False
        return True
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        done, _ = await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    return bool(done)


def run_key(run_id: str) -> str:
    """The key notified when a run's state changes."""
    return f"run:{run_id}"


def lines_key(run_id: str) -> str:
    """The key notified when lines are added to a run's logs, or its state changes."""
    return f"lines:{run_id}"


class Tap:
    """The notifications of one key since they were last taken: how many, and the news the
    latest change of this replica left with its own."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self._count = 0
        self._news: object | None = None

    def taken(self) -> tuple[int, object | None]:
        """The notifications so far and the news they brought; counting starts again."""
        taken = (self._count, self._news)
        self._count, self._news = 0, None
        self.event.clear()
        return taken

    def _notified(self, news: object | None) -> None:
        self._count += 1
        self._news = news
        self.event.set()


@dataclass
class _Waiters:
    """The event of one key, and how many blocks hold it."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    count: int = 0


class Signals:
    """Keyed one-shot events, registered while someone waits on them."""

    def __init__(self) -> None:
        self._waiting: dict[str, _Waiters] = {}
        self._taps: dict[str, set[Tap]] = {}
        #: News told for a key and not yet notified (``tell``), for its taps.
        self._news: dict[str, object] = {}

    @contextlib.contextmanager
    def waiting(self, key: str) -> Iterator[asyncio.Event]:
        """Inside the block: an event set by the next ``notify(key)``."""
        waiters = self._waiting.get(key)
        if waiters is None:
            waiters = self._waiting[key] = _Waiters()
        waiters.count += 1
        try:
            yield waiters.event
        finally:
            waiters.count -= 1
            # A notified key's entry is gone already; a new one may have taken its place.
            if waiters.count == 0 and self._waiting.get(key) is waiters:
                del self._waiting[key]

    @contextlib.contextmanager
    def tapping(self, key: str) -> Iterator[Tap]:
        """Inside the block: a tap that counts every ``notify(key)``."""
        tap = Tap()
        taps = self._taps.setdefault(key, set())
        taps.add(tap)
        try:
            yield tap
        finally:
            taps.discard(tap)
            if not taps and self._taps.get(key) is taps:
                del self._taps[key]

    def tell(self, key: str, news: object) -> None:
        """What the next ``notify(key)`` is about, for the key's taps (only if tapped)."""
        if key in self._taps:
            self._news[key] = news

    def notify(self, key: str) -> None:
        """Wake everyone waiting on ``key``."""
        waiters = self._waiting.pop(key, None)
        if waiters is not None:
            waiters.event.set()
        news = self._news.pop(key, None)
        for tap in self._taps.get(key, ()):
            tap._notified(news)

    def notify_all(self) -> None:
        """Wake everyone waiting on anything (changes may have been missed: re-read)."""
        waiting, self._waiting = self._waiting, {}
        for waiters in waiting.values():
            waiters.event.set()
        self._news.clear()
        for taps in self._taps.values():
            for tap in taps:
                tap._notified(None)

    def __len__(self) -> int:
        """How many waiters and taps are registered (waiters of a key notified since are
        not)."""
        return sum(waiters.count for waiters in self._waiting.values()) + sum(
            len(taps) for taps in self._taps.values()
        )
