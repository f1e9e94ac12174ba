"""Futures of submitted task runs, and what a task does with futures among its arguments.

A :class:`TaskFuture` wraps either a :class:`concurrent.futures.Future` (a sync task on the
flow's worker threads) or an :class:`asyncio.Task` (an async task on the flow's event loop).
Either can be waited on from sync code (``.result()``) or awaited; a task called with futures
among its arguments (at any depth of lists, tuples, sets and dicts) waits for them and gets
their values.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Generator, Iterable
from typing import Any, Generic, TypeVar

__all__ = ["TaskFuture", "TaskFutureList", "UpstreamTaskFailed", "resolve", "resolve_async"]

T = TypeVar("T")


class UpstreamTaskFailed(Exception):
    """A task was given the future of a task run that failed; it does not run."""


class TaskFuture(Generic[T]):
    """The eventual result of one submitted task run."""

    def __init__(
        self, inner: concurrent.futures.Future[T] | asyncio.Future[T], task_run_name: str
    ) -> None:
        self._inner = inner
        self.task_run_name = task_run_name

    def done(self) -> bool:
        """Whether the task run has finished (or was cancelled before it started)."""
        return self._inner.done()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the task run finishes; whether it did within ``timeout`` seconds."""
        inner = self._inner
        if isinstance(inner, concurrent.futures.Future):
            concurrent.futures.wait([inner], timeout)
            return inner.done()
        if inner.done():
            return True
        if _in_loop_of(inner):
            raise RuntimeError(
                f"task run {self.task_run_name} runs on this event loop: await its future "
                "instead of waiting on it"
            )
        finished = threading.Event()
        inner.get_loop().call_soon_threadsafe(inner.add_done_callback, lambda _: finished.set())
        return finished.wait(timeout)

    def result(self, timeout: float | None = None) -> T:
        """The task run's value; raises what it raised (after its retries).

        Raises:
            TimeoutError: not finished within ``timeout`` seconds.
        """
        if not self.wait(timeout):
            raise TimeoutError(f"task run {self.task_run_name} did not finish in {timeout} s")
        return self._inner.result()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """What the task run raised, or None if it returned."""
        if not self.wait(timeout):
            raise TimeoutError(f"task run {self.task_run_name} did not finish in {timeout} s")
        return self._inner.exception()

    def cancel(self) -> bool:
        """Cancel the task run if it has not started; whether it was."""
        return self._inner.cancel()

    def __await__(self) -> Generator[Any, None, T]:
        return self.on_this_loop().__await__()

    def on_this_loop(self) -> asyncio.Future[T]:
        """An asyncio future of the running loop that settles with this one."""
        inner = self._inner
        if isinstance(inner, concurrent.futures.Future):
            return asyncio.wrap_future(inner)
        if _in_loop_of(inner):
            return inner
        return asyncio.wrap_future(_bridge(inner))

    def __repr__(self) -> str:
        state = "done" if self.done() else "pending"
        return f"<TaskFuture {self.task_run_name} {state}>"


class TaskFutureList(list[TaskFuture[T]]):
    """The futures of ``task.map``: one per item, in the items' order."""

    def result(self, timeout: float | None = None) -> list[T]:
        """Every task run's value, in order; raises the first failure met."""
        return [future.result(timeout) for future in self]

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for all of them; whether all finished within ``timeout`` seconds."""
        return all(future.wait(timeout) for future in self)


def _in_loop_of(future: asyncio.Future[Any]) -> bool:
    try:
        return asyncio.get_running_loop() is future.get_loop()
    except RuntimeError:
        return False


def _bridge(inner: asyncio.Future[T]) -> concurrent.futures.Future[T]:
    """A thread-safe future that settles with ``inner`` (which lives on another loop)."""
    bridge: concurrent.futures.Future[T] = concurrent.futures.Future()

    def settle(done: asyncio.Future[T]) -> None:
        if done.cancelled():
            bridge.cancel()
        elif (error := done.exception()) is not None:
            bridge.set_exception(error)
        else:
            bridge.set_result(done.result())

    inner.get_loop().call_soon_threadsafe(inner.add_done_callback, settle)
    return bridge


def resolve(value: Any) -> Any:
    """``value`` with every future in it replaced by its result (waiting for it)."""
    return _replace(value, _value_of)


async def resolve_async(value: Any) -> Any:
    """Like :func:`resolve`, awaiting the futures instead of blocking the loop."""
    futures = _futures_in(value)
    if not futures:
        return value
    results: dict[int, Any] = {}
    for future in futures:
        try:
            results[id(future)] = await future
        except Exception as exc:
            raise _upstream(future, exc) from exc
    return _replace(value, lambda future: results[id(future)])


def _value_of(future: TaskFuture[Any]) -> Any:
    try:
        return future.result()
    except Exception as exc:
        raise _upstream(future, exc) from exc


def _upstream(future: TaskFuture[Any], exc: Exception) -> UpstreamTaskFailed:
    return UpstreamTaskFailed(
        f"upstream task run {future.task_run_name} failed: {type(exc).__name__}: {exc}"
    )


_CONTAINERS = (list, tuple, set, frozenset, dict)


def _futures_in(value: Any) -> list[TaskFuture[Any]]:
    found: list[TaskFuture[Any]] = []
    _walk(value, found.append)
    return found


def _walk(value: Any, visit: Any) -> None:
    if isinstance(value, TaskFuture):
        visit(value)
    elif type(value) in _CONTAINERS:
        items: Iterable[Any] = value.values() if isinstance(value, dict) else value
        for item in items:
            _walk(item, visit)


def _replace(value: Any, result_of: Any) -> Any:
    """``value`` with futures replaced; the same object when it holds none (no copying)."""
    if isinstance(value, TaskFuture):
        return result_of(value)
    kind = type(value)
    if kind not in _CONTAINERS:
        return value
    if kind is dict:
        replaced = {key: _replace(item, result_of) for key, item in value.items()}
        changed = any(replaced[key] is not item for key, item in value.items())
    else:
        items = [_replace(item, result_of) for item in value]
        changed = any(new is not old for new, old in zip(items, value, strict=True))
        replaced = kind(items)
    return replaced if changed else value
