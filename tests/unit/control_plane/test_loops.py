"""The pass loop of the dispatcher and the scheduler: woken by events, stopped only for good."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest
from sqlalchemy.exc import OperationalError

from control_plane.orchestration import clock
from control_plane.orchestration.changes import Conflict
from control_plane.orchestration.loops import WakeLoop
from tests.waiting import eventually

DEADLINE = 5.0


class Passes:
    """A pass that counts itself and says when it wants to run again."""

    def __init__(self, fail_first: Exception | None = None, next_in: float | None = None) -> None:
        self.count = 0
        self.changed = asyncio.Condition()
        self.fail_first = fail_first
        self.next_in = next_in

    async def __call__(self) -> datetime | None:
        async with self.changed:
            self.count += 1
            self.changed.notify_all()
        if self.fail_first is not None and self.count == 1:
            raise self.fail_first
        if self.next_in is None:
            return None
        return clock.now() + timedelta(seconds=self.next_in)

    async def reach(self, count: int) -> None:
        async with asyncio.timeout(DEADLINE), self.changed:
            await self.changed.wait_for(lambda: self.count >= count)


async def test_the_first_pass_runs_at_once_and_a_wake_runs_another() -> None:
    passes = Passes()
    loop = WakeLoop(passes, what="test", max_sleep_seconds=3600)
    task = asyncio.create_task(loop.run(), name="wake-loop")
    try:
        await passes.reach(1)
        loop.wake()
        await passes.reach(2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("SELECT 1", {}, Exception("database is locked")),
        OperationalError("SELECT 1", {}, Exception("server closed the connection")),
        Conflict(),
    ],
    ids=["locked", "disconnected", "lost-race"],
)
async def test_a_pass_that_fails_for_now_does_not_end_the_loop(error: Exception) -> None:
    passes = Passes(fail_first=error)
    loop = WakeLoop(passes, what="test", max_sleep_seconds=3600)
    task = asyncio.create_task(loop.run(), name="wake-loop")
    try:
        # Retried after the short error pause, without being woken.
        await passes.reach(2)
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_pass_that_fails_for_good_ends_the_loop_with_its_error() -> None:
    # A bug, or stored data no pass can read: trying again would fail the same way forever.
    passes = Passes(fail_first=KeyError("a bug"))
    loop = WakeLoop(passes, what="test", max_sleep_seconds=3600)
    task = asyncio.create_task(loop.run(), name="wake-loop")
    done, _ = await asyncio.wait({task}, timeout=DEADLINE)
    assert task in done
    assert isinstance(task.exception(), KeyError)
    assert passes.count == 1


async def test_a_pass_runs_again_when_its_next_time_comes() -> None:
    passes = Passes(next_in=0.05)
    loop = WakeLoop(passes, what="test", max_sleep_seconds=3600)
    task = asyncio.create_task(loop.run(), name="wake-loop")
    try:
        await passes.reach(3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_cancelling_ends_the_loop() -> None:
    passes = Passes()
    loop = WakeLoop(passes, what="test", max_sleep_seconds=3600)
    task = asyncio.create_task(loop.run(), name="wake-loop")
    await passes.reach(1)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=DEADLINE)
    assert task in done and task.cancelled()


async def test_a_wake_at_the_moment_of_cancelling_still_ends_the_loop() -> None:
    # The wake-up and the cancel arrive together: the sleep's wait is over, yet the loop was
    # told to stop, and must (a stop that awaits it would hang otherwise).
    passes = Passes()
    loop = WakeLoop(passes, what="test", max_sleep_seconds=3600)
    task = asyncio.create_task(loop.run(), name="wake-loop")
    await passes.reach(1)
    await _sleeping(task)
    loop.wake()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=DEADLINE)
    try:
        assert task in done and task.cancelled()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _sleeping(task: asyncio.Task[None]) -> None:
    """Wait until ``task`` sleeps between passes (it awaits the wake-up event)."""

    def asleep() -> bool:
        awaiting = task.get_coro().cr_await  # type: ignore[union-attr]
        while awaiting is not None:
            if getattr(awaiting, "__qualname__", "") in ("Event.wait", "wait_for"):
                return True
            awaiting = getattr(awaiting, "cr_await", None)
        return False

    await eventually(asleep, within=DEADLINE, what="the loop to sleep between passes")
