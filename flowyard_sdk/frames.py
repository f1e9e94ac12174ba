"""One flow call in progress: where its submitted tasks run and what it waits for at the end.

Each flow call (the run's entrypoint, a subflow, a ``@flow`` called in a plain script) gets a
:class:`Frame`: a pool of worker threads for its submitted sync tasks (created on first use),
the futures it has handed out, the numbering of its task runs (``fetch-0``, ``fetch-1``...)
and the flag ``runtime.cancel_requested`` reads. A flow that returns waits for the task runs
it submitted and never looked at, so none is cut off by the process exiting; a failure among
them fails the flow only if the flow itself let it propagate. A flow that raises (or is
cancelled) does not wait: tasks not started are cancelled, running ones see the flag.

Tasks called outside any flow use a process-wide frame, so a script or a unit test can call
and submit tasks with no flow and no server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from flowyard_sdk.context import stopping_flag
from flowyard_sdk.futures import TaskFuture

__all__ = [
    "Frame",
    "TaskDefaults",
    "block_termination_signals",
    "current_frame",
    "entered",
    "in_flow",
    "run_in_frame",
    "run_in_frame_async",
]

T = TypeVar("T")

DEFAULT_MAX_WORKERS = min(32, (os.cpu_count() or 1) + 4)


@dataclass(frozen=True)
class TaskDefaults:
    """A flow's defaults for the tasks it calls that do not set their own."""

    retries: int | None = None
    retry_delay_seconds: float | tuple[float, ...] | None = None
    timeout_seconds: float | None = None


class Frame:
    """The state of one flow call; see the module docstring."""

    def __init__(
        self,
        name: str,
        *,
        max_workers: int | None = None,
        defaults: TaskDefaults | None = None,
    ) -> None:
        self.name = name
        self.defaults = defaults or TaskDefaults()
        self.stopping = threading.Event()
        self._max_workers = max_workers or DEFAULT_MAX_WORKERS
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._futures: list[TaskFuture[Any]] = []
        self._counters: dict[str, int] = {}
        self._lock = threading.Lock()

    def next_run_name(self, task_name: str) -> str:
        """The name of the next task run of ``task_name`` in this flow call."""
        with self._lock:
            number = self._counters.get(task_name, 0)
            self._counters[task_name] = number + 1
        return f"{task_name}-{number}"

    def submit(self, call: Callable[[], T], task_run_name: str) -> TaskFuture[T]:
        """Run ``call`` on a worker thread of this flow."""
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    self._max_workers,
                    thread_name_prefix=f"flowyard-{self.name}",
                    initializer=block_termination_signals,
                )
            executor = self._executor
        return self.track(TaskFuture(executor.submit(call), task_run_name))

    def track(self, future: TaskFuture[T]) -> TaskFuture[T]:
        """Remember ``future`` so the flow waits for it before it returns."""
        with self._lock:
            self._futures.append(future)
        return future

    def finish(self) -> None:
        """The flow returned: wait for every task run it started."""
        for future in self._outstanding():
            future.wait()
        self._shut_down()

    async def finish_async(self) -> None:
        """Like :meth:`finish`, from the flow's event loop."""
        outstanding = [future.on_this_loop() for future in self._outstanding()]
        if outstanding:
            # asyncio.wait raises nothing: a failure nobody looked at is the flow's choice.
            await asyncio.wait(outstanding)
        self._shut_down()

    def abandon(self) -> None:
        """The flow raised or was cancelled: stop what has not started and do not wait."""
        self.stopping.set()
        for future in self._outstanding():
            future.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _outstanding(self) -> list[TaskFuture[Any]]:
        with self._lock:
            futures, self._futures = self._futures, []
        return [future for future in futures if not future.done()]

    def _shut_down(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)


def block_termination_signals() -> None:
    """Worker threads leave SIGTERM and SIGINT to the main thread, where a cancel is handled."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})


_frame: ContextVar[Frame | None] = ContextVar("flowyard_frame", default=None)
_outside: Frame | None = None
_outside_lock = threading.Lock()


def in_flow() -> bool:
    """Whether a flow call is in progress in this context."""
    return _frame.get() is not None


def current_frame() -> Frame:
    """The frame of the flow call in progress, or the process-wide one outside any flow."""
    frame = _frame.get()
    if frame is not None:
        return frame
    global _outside
    with _outside_lock:
        if _outside is None:
            _outside = Frame("tasks")
        return _outside


@contextmanager
def entered(frame: Frame) -> Iterator[None]:
    """Make ``frame`` the current flow call (and its flag the one tasks read)."""
    token = _frame.set(frame)
    try:
        with stopping_flag(frame.stopping):
            yield
    finally:
        _frame.reset(token)


def run_in_frame(frame: Frame, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a sync flow function as ``frame``'s flow call; for an async one, the coroutine
    that does so when awaited."""
    if inspect.iscoroutinefunction(function):
        return run_in_frame_async(frame, function, *args, **kwargs)
    with entered(frame):
        try:
            value = function(*args, **kwargs)
        except BaseException:
            frame.abandon()
            raise
        frame.finish()
        return value


async def run_in_frame_async(
    frame: Frame, function: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    """Await an async flow function as ``frame``'s flow call."""
    with entered(frame):
        try:
            value = await function(*args, **kwargs)
        except BaseException:
            frame.abandon()
            raise
        await frame.finish_async()
        return value
