"""A run's feed: one reader hands every stored line, in order, to each caught-up follower."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

from control_plane.models import LogRecord, LogStream
from control_plane.orchestration.feeds import MAX_QUEUED, STOPPED, Feed
from control_plane.orchestration.signals import Signals, lines_key

RUN = "b" * 32
WHEN = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class FakeRun:
    is_terminal: bool = False


class Store:
    """Stored lines of one attempt, read as ``Following`` reads them (the run first)."""

    def __init__(self, signals: Signals) -> None:
        self.signals = signals
        self.lines: list[LogRecord] = []
        self.run = FakeRun()
        self.reads = 0

    def add(self, count: int, end: bool = False) -> None:
        first = len(self.lines) + 1
        self.lines += [
            LogRecord(RUN, 1, seq, WHEN, 20, LogStream.STDOUT, "", f"line {seq}")
            for seq in range(first, first + count)
        ]
        self.run = FakeRun(is_terminal=end)
        self.signals.notify(lines_key(RUN))

    async def read(self, run_id: str, source: str, attempt: int, seq: int):
        self.reads += 1
        await asyncio.sleep(0)
        return self.run, [line for line in self.lines if (line.attempt, line.seq) > (attempt, seq)]


def feed_of(store: Store, position: tuple[int, int] = (0, 0), idle: float | None = None) -> Feed:
    feed = Feed(store.read, store.signals, RUN, RUN, position, idle, lambda: False)
    return feed


async def taken(subscription, count: int) -> list[int]:
    seqs: list[int] = []
    while len(seqs) < count:
        item = await asyncio.wait_for(subscription.next(), 5)
        assert item is not None and item is not STOPPED
        _, lines = item
        seqs += [line.seq for line in lines]
    return seqs


async def test_every_follower_gets_every_line_once_in_order_and_then_the_end() -> None:
    store = Store(Signals())
    feed = feed_of(store)
    first, second = feed.subscribe(), feed.subscribe()
    feed.task = asyncio.ensure_future(feed.run())
    for _ in range(5):
        store.add(3)
        await asyncio.sleep(0.01)
    assert await taken(first, 15) == list(range(1, 16))
    assert await taken(second, 15) == list(range(1, 16))
    store.add(2, end=True)
    for subscription in (first, second):
        assert await taken(subscription, 2) == [16, 17]
        run, lines = await asyncio.wait_for(subscription.next(), 5)
        assert run.is_terminal and lines == []
        assert await subscription.next() is None
    await asyncio.wait_for(feed.task, 5)


async def test_one_read_serves_every_follower() -> None:
    store = Store(Signals())
    feed = feed_of(store)
    subscriptions = [feed.subscribe() for _ in range(50)]
    feed.task = asyncio.ensure_future(feed.run())
    await asyncio.sleep(0.01)
    before = store.reads
    store.add(10)
    for subscription in subscriptions:
        assert await taken(subscription, 10) == list(range(1, 11))
    # The read that found the lines, and the one that found nothing more.
    assert store.reads - before == 2
    for subscription in subscriptions:
        subscription.leave()
    await asyncio.wait({feed.task}, timeout=5)
    assert feed.ended


async def test_a_follower_that_falls_behind_is_told_to_read_on_its_own() -> None:
    store = Store(Signals())
    feed = feed_of(store)
    slow, quick = feed.subscribe(), feed.subscribe()
    feed.task = asyncio.ensure_future(feed.run())
    seqs: list[int] = []
    for _ in range(MAX_QUEUED + 1):
        store.add(1)
        await asyncio.sleep(0.005)
        seqs += await taken(quick, 1)
    assert seqs == list(range(1, MAX_QUEUED + 2))
    assert await asyncio.wait_for(slow.next(), 5) is None
    quick.leave()
    await asyncio.wait({feed.task}, timeout=5)


async def test_quiet_spells_and_the_servers_stop_are_handed_on() -> None:
    store, stopping = Store(Signals()), []
    feed = Feed(store.read, store.signals, RUN, RUN, (0, 0), 0.05, lambda: bool(stopping))
    subscription = feed.subscribe()
    feed.task = asyncio.ensure_future(feed.run())
    _, lines = await asyncio.wait_for(subscription.next(), 5)
    assert lines is None
    stopping.append(True)
    store.signals.notify_all()
    while (item := await asyncio.wait_for(subscription.next(), 5)) is not STOPPED:
        assert item is not None and item[1] is None
    await asyncio.wait_for(feed.task, 5)
