"""Owned tasks: named, stopped with a grace period, failures logged, nothing left behind."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agent.tasks import TaskSet, stop_tasks, wait_first


async def test_stop_lets_quick_tasks_finish_and_cancels_the_rest() -> None:
    tasks = TaskSet("owner")
    finished = asyncio.Event()
    cancelled = asyncio.Event()

    async def quick() -> None:
        await asyncio.sleep(0)
        finished.set()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    first = tasks.spawn("quick", quick())
    second = tasks.spawn("forever", forever())
    assert first.get_name() == "owner:quick"
    assert len(tasks) == 2
    await tasks.stop(grace=0.2)
    assert finished.is_set() and cancelled.is_set()
    assert first.done() and second.cancelled()
    assert len(tasks) == 0


async def test_a_failing_task_is_logged_with_its_name(caplog: pytest.LogCaptureFixture) -> None:
    tasks = TaskSet("owner")

    async def boom() -> None:
        raise ValueError("broken")

    task = tasks.spawn("boom", boom())
    await asyncio.wait([task])
    with caplog.at_level(logging.ERROR):
        await tasks.stop(grace=0)
    assert "owner:boom" in caplog.text
    assert len(tasks) == 0


async def test_stop_tasks_without_grace_cancels_at_once() -> None:
    task = asyncio.create_task(asyncio.Event().wait(), name="test:waiter")
    await stop_tasks([task], grace=0)
    assert task.cancelled()


async def test_wait_first_returns_after_the_first_and_cancels_the_others() -> None:
    fired = asyncio.Event()
    fired.set()
    never = asyncio.Event()
    await wait_first("test", fired.wait(), never.wait())
    assert not never.is_set()
