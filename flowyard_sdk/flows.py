"""``@flow``: a name and task defaults for a flow function, and subflows.

``@flow`` is optional on a deployment's entrypoint: the engine runs a plain function the same
way (:func:`run_entrypoint`). What it adds is a name, defaults for the tasks the flow calls
(``task_retries``, ``task_retry_delay_seconds``, ``task_timeout_seconds``) and the size of
its worker pool (``max_workers``). A ``@flow`` function called from inside another flow is a
subflow: it runs in the caller's process with a frame of its own (its own task-run numbering,
worker pool and defaults), and inside a run it is recorded as a child run of the caller
(``flowyard_sdk.children``): its own state, task runs and log lines. Called outside any run
(a script, a test), a flow runs locally with no server.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any, Generic, ParamSpec, TypeVar, overload

from flowyard_sdk.children import current_host, in_subflow, jsonable
from flowyard_sdk.context import FlowRunInfo, enter_run, runtime
from flowyard_sdk.frames import Frame, TaskDefaults, in_flow, run_in_frame

__all__ = ["Flow", "flow", "run_entrypoint"]

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("flowyard.flows")


class Flow(Generic[P, R]):
    """A flow function with its name and defaults; see the module docstring."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        max_workers: int | None = None,
        defaults: TaskDefaults | None = None,
    ) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.name = str(name or getattr(fn, "__name__", "flow"))
        self.max_workers = max_workers
        self.defaults = defaults or TaskDefaults()
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"flow {self.name}: max_workers must be >= 1")

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        frame = Frame(self.name, max_workers=self.max_workers, defaults=self.defaults)
        if not in_flow():
            return run_in_frame(frame, self.fn, *args, **kwargs)  # type: ignore[no-any-return]
        if inspect.iscoroutinefunction(self.fn):
            return self._subflow_async(frame, args, kwargs)  # type: ignore[return-value]
        # A subflow: recorded as a child run of the current run when the engine hosts one
        # (its lines and task runs its own), logged either way.
        host, info = current_host(), None
        if host is not None:
            parameters = self._parameters(args, kwargs)
            info = self._started(host.start_subflow(self.name, parameters), parameters)
        try:
            with self._entered(info):
                result = run_in_frame(frame, self.fn, *args, **kwargs)
        except Exception as exc:
            if host is not None and info is not None:
                host.end_subflow(str(info.id), exc, None)
            raise
        if host is not None and info is not None:
            host.end_subflow(str(info.id), None, result)
        return result  # type: ignore[no-any-return]

    async def _subflow_async(self, frame: Frame, args: Any, kwargs: Any) -> Any:
        # As in __call__, with the control plane's round trips off the event loop.
        host, info = current_host(), None
        if host is not None:
            parameters = self._parameters(args, kwargs)
            run_id = await asyncio.to_thread(host.start_subflow, self.name, parameters)
            info = self._started(run_id, parameters)
        try:
            with self._entered(info):
                result = await run_in_frame(frame, self.fn, *args, **kwargs)
        except Exception as exc:
            if host is not None and info is not None:
                await asyncio.to_thread(host.end_subflow, str(info.id), exc, None)
            raise
        if host is not None and info is not None:
            await asyncio.to_thread(host.end_subflow, str(info.id), None, result)
        return result

    def _parameters(self, args: Any, kwargs: Any) -> dict[str, Any]:
        try:
            bound = dict(inspect.signature(self.fn).bind_partial(*args, **kwargs).arguments)
        except (TypeError, ValueError):
            bound = {**{f"arg{i}": value for i, value in enumerate(args)}, **kwargs}
        return jsonable(bound)

    def _started(self, run_id: str, parameters: dict[str, Any]) -> FlowRunInfo:
        """The subflow run ``runtime.flow_run`` names inside the subflow."""
        parent = runtime.flow_run
        return FlowRunInfo(
            id=run_id,
            attempt=1,
            flow_name=self.name,
            deployment_name=parent.deployment_name,
            scheduled_time=parent.scheduled_time,
            parameters=MappingProxyType(parameters),
        )

    @contextmanager
    def _entered(self, info: FlowRunInfo | None) -> Iterator[None]:
        if info is None:
            with self._logged():
                yield
            return
        with enter_run(info), in_subflow(str(info.id)), self._logged():
            yield

    @contextmanager
    def _logged(self) -> Iterator[None]:
        log.info("Subflow %s started", self.name)
        started = time.monotonic()
        try:
            yield
        except Exception as exc:
            log.error("Subflow %s failed: %s: %s", self.name, type(exc).__name__, exc)
            raise
        log.info("Subflow %s finished in %.3f s", self.name, time.monotonic() - started)

    def __repr__(self) -> str:
        return f"<Flow {self.name}>"


class _FlowDecorator:
    def __init__(self, **options: Any) -> None:
        self._options = options

    def __call__(self, fn: Callable[P, R]) -> Flow[P, R]:
        return _make(fn, **self._options)


@overload
def flow(fn: Callable[P, R], /) -> Flow[P, R]: ...
@overload
def flow(
    *,
    name: str | None = None,
    max_workers: int | None = None,
    task_retries: int | None = None,
    task_retry_delay_seconds: float | Sequence[float] | None = None,
    task_timeout_seconds: float | None = None,
) -> _FlowDecorator: ...
def flow(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Make a function a flow: ``@flow`` or ``@flow(name="etl", task_retries=2)``."""
    decorator = _FlowDecorator(**options)
    return decorator if fn is None else decorator(fn)


def _make(
    fn: Callable[P, R],
    *,
    name: str | None = None,
    max_workers: int | None = None,
    task_retries: int | None = None,
    task_retry_delay_seconds: float | Sequence[float] | None = None,
    task_timeout_seconds: float | None = None,
) -> Flow[P, R]:
    delays = (
        tuple(task_retry_delay_seconds)
        if isinstance(task_retry_delay_seconds, Sequence)
        else task_retry_delay_seconds
    )
    defaults = TaskDefaults(task_retries, delays, task_timeout_seconds)
    return Flow(fn, name=name, max_workers=max_workers, defaults=defaults)


def run_entrypoint(
    function: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any], run: FlowRunInfo
) -> Any:
    """Call a run's entrypoint (a ``@flow`` or a plain function) as the run's flow call.

    The engine calls this in its main thread; a coroutine function runs in a new event loop.
    """
    with enter_run(run):
        if isinstance(function, Flow):
            frame = Frame(
                function.name, max_workers=function.max_workers, defaults=function.defaults
            )
            function = function.fn
        else:
            frame = Frame(str(run.flow_name or getattr(function, "__name__", "flow")))
        value = run_in_frame(frame, function, *args, **kwargs)
        if inspect.iscoroutine(value):
            return asyncio.run(value)
        return value
