"""``@task``: a function whose every call is a task run, with retries, a timeout and a name.

Calling a task runs it in the caller and returns its value, or raises what its last attempt
raised. ``task.submit(...)`` returns a :class:`~flowyard_sdk.futures.TaskFuture` at once: a
sync task runs on one of the flow's worker threads, an async one as an asyncio task of the
running loop (from sync code, on a worker thread with its own loop). ``task.map(...)``
submits one call per item. Futures passed as arguments are waited for first.

An attempt that raises one of ``retry_on`` (every ``Exception`` by default) is tried again
after ``retry_delay_seconds`` (a number, or a list read one entry per retry, the last one
repeating) while retries are left and the flow is not stopping. ``timeout_seconds`` bounds
one attempt: an async attempt is cancelled; a sync one is abandoned in its thread (Python
cannot stop a thread from outside) and :class:`TaskTimeoutError` raised; a sync task that
may run long checks ``runtime.cancel_requested``. ``max_concurrency`` bounds how many calls
of this task run at once across the process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar, cast, overload

from flowyard_sdk.context import TaskRunInfo, enter_task_run, runtime
from flowyard_sdk.events import TaskRunChange, TaskRunState, describe_inputs, tell, wants_inputs
from flowyard_sdk.frames import Frame, block_termination_signals, current_frame
from flowyard_sdk.futures import TaskFuture, TaskFutureList, resolve, resolve_async

__all__ = ["AsyncTask", "Task", "TaskCancelledError", "TaskTimeoutError", "task", "unmapped"]

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger("flowyard.tasks")


class TaskTimeoutError(TimeoutError):
    """A task attempt ran longer than its ``timeout_seconds``."""


class TaskCancelledError(Exception):
    """A task run did not go on because its flow is stopping."""


class unmapped(Generic[T]):
    """Pass an iterable to ``task.map`` whole, to every call, instead of item by item."""

    def __init__(self, value: T) -> None:
        self.value = value


@dataclass(frozen=True)
class TaskSettings:
    """How a task is run; None means "the flow's default, else the built-in one"."""

    name: str
    retries: int | None = None
    retry_delay_seconds: float | tuple[float, ...] | None = None
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    timeout_seconds: float | None = None
    tags: frozenset[str] = frozenset()
    max_concurrency: int | None = None

    def __post_init__(self) -> None:
        if self.retries is not None and (
            isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0
        ):
            raise ValueError(f"task {self.name}: retries must be a whole number >= 0")
        delays = self.retry_delay_seconds
        for delay in delays if isinstance(delays, tuple) else (delays,):
            if delay is not None and (not isinstance(delay, int | float) or delay < 0):
                raise ValueError(f"task {self.name}: retry delays must be numbers >= 0")
        if self.timeout_seconds is not None and not self.timeout_seconds > 0:
            raise ValueError(f"task {self.name}: timeout_seconds must be > 0")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"task {self.name}: max_concurrency must be >= 1")
        for kind in self.retry_on:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise TypeError(f"task {self.name}: retry_on takes exception classes, not {kind!r}")


@dataclass(frozen=True)
class _Plan:
    """One task call's settings, the flow's defaults applied."""

    retries: int
    delays: float | tuple[float, ...]
    timeout: float | None

    def delay(self, retry: int) -> float:
        if isinstance(self.delays, tuple):
            return float(self.delays[min(retry, len(self.delays)) - 1]) if self.delays else 0.0
        return float(self.delays)


class _BaseTask:
    def __init__(self, fn: Callable[..., Any], settings: TaskSettings) -> None:
        functools.update_wrapper(cast(Any, self), fn)
        self.fn = fn
        self.settings = settings

    @property
    def name(self) -> str:
        return self.settings.name

    def _plan(self, frame: Frame) -> _Plan:
        own, defaults = self.settings, frame.defaults
        retries = own.retries if own.retries is not None else defaults.retries
        delays = own.retry_delay_seconds
        if delays is None:
            delays = defaults.retry_delay_seconds
        timeout = own.timeout_seconds if own.timeout_seconds is not None else None
        return _Plan(
            retries=retries or 0,
            delays=delays if delays is not None else 0.0,
            timeout=timeout if timeout is not None else defaults.timeout_seconds,
        )

    def _retry_after(self, exc: Exception, run: _Run, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or None when ``exc`` is final (reported)."""
        if (
            attempt < run.tries
            and isinstance(exc, self.settings.retry_on)
            and not runtime.cancel_requested
        ):
            delay = run.plan.delay(attempt)
            run.failed(exc, attempt, retry_delay=delay)
            return delay
        run.failed(exc, attempt, retry_delay=None)
        return None

    def _calls(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        """``map``'s arguments, item by item: iterables are zipped, ``unmapped`` kept whole."""
        lengths: dict[str, int] = {}
        mapped_args: list[Any] = []
        for index, value in enumerate(args):
            mapped_args.append(_mapped(value, f"argument {index + 1}", lengths))
        mapped_kwargs = {key: _mapped(value, key, lengths) for key, value in kwargs.items()}
        if not lengths:
            raise TypeError(f"task {self.name}: map needs at least one iterable argument")
        if len(set(lengths.values())) > 1:
            sizes = ", ".join(f"{key} has {size}" for key, size in lengths.items())
            raise ValueError(f"task {self.name}: map's iterables differ in length ({sizes})")
        count = next(iter(lengths.values()))
        return [
            (
                tuple(_item(value, i) for value in mapped_args),
                {key: _item(value, i) for key, value in mapped_kwargs.items()},
            )
            for i in range(count)
        ]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class _Run:
    """One task run's identity and reporting: every change goes to the listener."""

    def __init__(
        self,
        task: _BaseTask,
        name: str,
        plan: _Plan,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.id = uuid.uuid4().hex
        self.name = name
        self.task = task
        self.plan = plan
        self.tries = plan.retries + 1
        self._inputs = describe_inputs(args, kwargs) if wants_inputs() else ""
        self._started = time.monotonic()

    def info(self, attempt: int) -> TaskRunInfo:
        return TaskRunInfo(self.id, self.name, self.task.name, attempt, self.task.settings.tags)

    def running(self, attempt: int) -> None:
        first = attempt == 1
        self._tell(
            TaskRunState.RUNNING,
            attempt,
            inputs=self._inputs if first else "",
            tags=self.task.settings.tags if first else frozenset(),
        )

    def completed(self, attempt: int) -> None:
        self._tell(TaskRunState.COMPLETED, attempt, duration=time.monotonic() - self._started)

    def failed(self, exc: BaseException, attempt: int, retry_delay: float | None) -> None:
        state = TaskRunState.FAILED if retry_delay is None else TaskRunState.RETRYING
        self._tell(
            state,
            attempt,
            error_type=type(exc).__name__,
            error_message=str(exc),
            retry_delay=retry_delay or 0.0,
            duration=time.monotonic() - self._started,
        )

    def cancelled(self, attempt: int, reason: str) -> None:
        self._tell(
            TaskRunState.CANCELLED,
            attempt,
            error_message=reason,
            duration=time.monotonic() - self._started,
        )

    def _tell(self, state: TaskRunState, attempt: int, **details: Any) -> None:
        tell(
            TaskRunChange(self.id, self.name, self.task.name, state, attempt, self.tries, **details)
        )


class _Items(list[Any]):
    """An argument of ``map`` taken item by item."""


def _mapped(value: Any, label: str, lengths: dict[str, int]) -> Any:
    if isinstance(value, unmapped):
        return value.value
    if isinstance(value, str | bytes | Mapping | TaskFuture) or not isinstance(value, Iterable):
        return value
    items = _Items(value)
    lengths[label] = len(items)
    return items


def _item(value: Any, index: int) -> Any:
    return value[index] if isinstance(value, _Items) else value


class Task(_BaseTask, Generic[P, T]):
    """A sync function as a task; see the module docstring."""

    fn: Callable[P, T]

    def __init__(self, fn: Callable[P, T], settings: TaskSettings) -> None:
        super().__init__(fn, settings)
        self._slots = (
            threading.BoundedSemaphore(settings.max_concurrency)
            if settings.max_concurrency
            else None
        )

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        frame = current_frame()
        return self._run(frame, frame.next_run_name(self.name), args, kwargs)

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> TaskFuture[T]:
        """Start a task run on a worker thread of the flow; its future at once."""
        frame = current_frame()
        run_name = frame.next_run_name(self.name)
        context = contextvars.copy_context()
        return frame.submit(
            functools.partial(context.run, self._run, frame, run_name, args, kwargs), run_name
        )

    def map(self, *args: Any, **kwargs: Any) -> TaskFutureList[T]:
        """Submit one call per item of the iterable arguments (zipped; see :class:`unmapped`)."""
        return TaskFutureList(self.submit(*a, **k) for a, k in self._calls(args, kwargs))

    def _run(self, frame: Frame, run_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        args, kwargs = resolve(args), resolve(kwargs)
        run = _Run(self, run_name, self._plan(frame), args, kwargs)
        attempt = 1
        while True:
            try:
                with enter_task_run(run.info(attempt)):
                    value = self._attempt(run, attempt, args, kwargs)
            except Exception as exc:
                delay = self._retry_after(exc, run, attempt)
                if delay is None:
                    raise
            except BaseException as exc:
                run.cancelled(attempt, _describe(exc))
                raise
            else:
                run.completed(attempt)
                return value
            if frame.stopping.wait(delay):
                run.cancelled(attempt, "its flow is stopping")
                raise TaskCancelledError(f"task run {run_name}: the flow is stopping")
            attempt += 1

    def _attempt(self, run: _Run, attempt: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        if self._slots is not None:
            with self._slots:
                return self._timed(run, attempt, args, kwargs)
        return self._timed(run, attempt, args, kwargs)

    def _timed(self, run: _Run, attempt: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        run.running(attempt)
        if run.plan.timeout is None:
            return self.fn(*args, **kwargs)
        return _call_with_timeout(self.fn, args, kwargs, run.plan.timeout, self.name)


def _call_with_timeout(
    fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float, name: str
) -> T:
    """Run one sync attempt in its own thread and stop waiting for it after ``timeout``."""
    done: concurrent.futures.Future[T] = concurrent.futures.Future()
    context = contextvars.copy_context()

    def attempt() -> None:
        block_termination_signals()
        try:
            done.set_result(context.run(fn, *args, **kwargs))
        except BaseException as exc:
            done.set_exception(exc)

    threading.Thread(target=attempt, name=f"flowyard-{name}-attempt", daemon=True).start()
    try:
        return done.result(timeout)
    except TimeoutError as exc:
        if done.done():
            raise
        raise TaskTimeoutError(f"task {name} did not finish within {timeout:g} s") from exc


class AsyncTask(_BaseTask, Generic[P, T]):
    """An async function as a task; see the module docstring."""

    fn: Callable[P, Coroutine[Any, Any, T]]

    def __init__(self, fn: Callable[P, Coroutine[Any, Any, T]], settings: TaskSettings) -> None:
        super().__init__(fn, settings)
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, T]:
        frame = current_frame()
        return self._run(frame, frame.next_run_name(self.name), args, kwargs)

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> TaskFuture[T]:
        """Start a task run as an asyncio task of the running loop (from sync code, on a
        worker thread); its future at once."""
        frame = current_frame()
        run_name = frame.next_run_name(self.name)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            context = contextvars.copy_context()
            coroutine = functools.partial(self._run, frame, run_name, args, kwargs)
            return frame.submit(
                functools.partial(context.run, lambda: asyncio.run(coroutine())), run_name
            )
        running = loop.create_task(self._run(frame, run_name, args, kwargs), name=run_name)
        return frame.track(TaskFuture(running, run_name))

    def map(self, *args: Any, **kwargs: Any) -> TaskFutureList[T]:
        """Submit one call per item of the iterable arguments (zipped; see :class:`unmapped`)."""
        return TaskFutureList(self.submit(*a, **k) for a, k in self._calls(args, kwargs))

    async def _run(
        self, frame: Frame, run_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        args, kwargs = await resolve_async(args), await resolve_async(kwargs)
        run = _Run(self, run_name, self._plan(frame), args, kwargs)
        attempt = 1
        while True:
            try:
                with enter_task_run(run.info(attempt)):
                    value = await self._attempt(run, attempt, args, kwargs)
            except Exception as exc:
                delay = self._retry_after(exc, run, attempt)
                if delay is None:
                    raise
            except BaseException as exc:
                run.cancelled(attempt, _describe(exc))
                raise
            else:
                run.completed(attempt)
                return value
            await asyncio.sleep(delay)
            attempt += 1

    async def _attempt(
        self, run: _Run, attempt: int, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        limit = self.settings.max_concurrency
        if limit is None:
            return await self._timed(run, attempt, args, kwargs)
        loop = asyncio.get_running_loop()
        slots = self._slots.setdefault(loop, asyncio.Semaphore(limit))
        async with slots:
            return await self._timed(run, attempt, args, kwargs)

    async def _timed(
        self, run: _Run, attempt: int, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        run.running(attempt)
        timeout = run.plan.timeout
        if timeout is None:
            return await self.fn(*args, **kwargs)
        try:
            return await asyncio.wait_for(self.fn(*args, **kwargs), timeout)
        except TimeoutError as exc:
            raise TaskTimeoutError(f"task {self.name} did not finish within {timeout:g} s") from exc


class _TaskDecorator:
    def __init__(self, **options: Any) -> None:
        self._options = options

    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[P, Coroutine[Any, Any, T]]
    ) -> AsyncTask[P, T]: ...
    @overload
    def __call__(self, fn: Callable[P, T]) -> Task[P, T]: ...
    def __call__(self, fn: Callable[..., Any]) -> Task[..., Any] | AsyncTask[..., Any]:
        settings = _settings(fn, **self._options)
        if inspect.iscoroutinefunction(fn):
            return AsyncTask(fn, settings)
        return Task(fn, settings)


@overload
def task(fn: Callable[P, Coroutine[Any, Any, T]], /) -> AsyncTask[P, T]: ...  # type: ignore[overload-overlap]
@overload
def task(fn: Callable[P, T], /) -> Task[P, T]: ...
@overload
def task(
    *,
    name: str | None = None,
    retries: int | None = None,
    retry_delay_seconds: float | Sequence[float] | None = None,
    retry_on: type[BaseException] | Iterable[type[BaseException]] = Exception,
    timeout_seconds: float | None = None,
    tags: Iterable[str] = (),
    max_concurrency: int | None = None,
) -> _TaskDecorator: ...
def task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Make a function a task: ``@task`` or ``@task(retries=3, retry_delay_seconds=[1, 5])``."""
    decorator = _TaskDecorator(**options)
    return decorator if fn is None else decorator(fn)


def _settings(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    retries: int | None = None,
    retry_delay_seconds: float | Sequence[float] | None = None,
    retry_on: type[BaseException] | Iterable[type[BaseException]] = Exception,
    timeout_seconds: float | None = None,
    tags: Iterable[str] = (),
    max_concurrency: int | None = None,
) -> TaskSettings:
    delays = (
        tuple(retry_delay_seconds)
        if isinstance(retry_delay_seconds, Sequence)
        else retry_delay_seconds
    )
    kinds = (retry_on,) if isinstance(retry_on, type) else tuple(retry_on)
    return TaskSettings(
        name=str(name or getattr(fn, "__name__", "task")),
        retries=retries,
        retry_delay_seconds=delays,
        retry_on=kinds,
        timeout_seconds=timeout_seconds,
        tags=frozenset(tags),
        max_concurrency=max_concurrency,
    )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
