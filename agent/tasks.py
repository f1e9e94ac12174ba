"""Owned asyncio tasks: every task has a name and an owner that stops and awaits it.

Stopping follows one shape everywhere: let tasks finish for a grace period, cancel what is
left, then await it, so nothing outlives its owner and no exception goes unobserved.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from flowyard_common.aiotasks import cancel_and_wait

__all__ = ["TaskSet", "stop_tasks", "wait_first"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]], grace: float) -> None:
    """Give ``tasks`` up to ``grace`` seconds to finish, then cancel the rest and await them."""
    pending = [task for task in tasks if not task.done()]
    if pending and grace > 0:
        _, still_running = await asyncio.wait(pending, timeout=grace)
        pending = list(still_running)
    await cancel_and_wait(pending)


class TaskSet:
    """A named group of background tasks owned by one object.

    A task that fails is logged with its name; the failure does not disturb its siblings.
    """

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, name: str, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Start ``coro`` as a task named ``<owner>:<name>`` and keep it until it ends."""
        task = asyncio.create_task(coro, name=f"{self._owner}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        return task

    async def stop(self, grace: float) -> None:
        """Stop every task: grace period, then cancel, then await."""
        await stop_tasks(list(self._tasks), grace)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            logger.error("task %s failed", task.get_name(), exc_info=error)


async def wait_first(name: str, *aws: Coroutine[Any, Any, Any]) -> None:
    """Wait until the first of ``aws`` finishes, then cancel and await the others.

    The outcomes are not returned: callers look at the state they were waiting for.
    """
    tasks = [asyncio.create_task(aw, name=f"{name}:{i}") for i, aw in enumerate(aws)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(tasks)
