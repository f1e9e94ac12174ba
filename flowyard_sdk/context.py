"""What a flow or task can ask about itself while it runs: ``flowyard.runtime``.

The engine fills in the run (:func:`enter_run`); each task attempt fills in its task run. Both
live in context variables, so a task running in a worker thread or an asyncio task sees the
run and the task run that started it. Outside a run every attribute answers None (or an empty
value) rather than raising, so a flow stays importable and testable anywhere.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

__all__ = ["FlowRunInfo", "Runtime", "TaskRunInfo", "enter_run", "enter_task_run", "runtime"]


@dataclass(frozen=True)
class FlowRunInfo:
    """The flow run this code belongs to (all None outside a run)."""

    id: str | None = None
    attempt: int | None = None
    flow_name: str | None = None
    deployment_name: str | None = None
    scheduled_time: datetime | None = None
    parameters: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class TaskRunInfo:
    """The task run this code belongs to (all None outside a task)."""

    id: str | None = None
    name: str | None = None
    """The task run's name: the task's name and its call number in the flow, e.g. ``fetch-3``."""
    task_name: str | None = None
    attempt: int | None = None
    """1 for the first try, 2 for the first retry..."""
    tags: frozenset[str] = frozenset()


_OUTSIDE_RUN = FlowRunInfo()
_OUTSIDE_TASK = TaskRunInfo()
_flow_run: ContextVar[FlowRunInfo] = ContextVar("flowyard_flow_run", default=_OUTSIDE_RUN)
_task_run: ContextVar[TaskRunInfo] = ContextVar("flowyard_task_run", default=_OUTSIDE_TASK)
_stopping: ContextVar[threading.Event | None] = ContextVar("flowyard_stopping", default=None)


class Runtime:
    """``flowyard.runtime``: the current flow run and task run, and whether to stop."""

    @property
    def flow_run(self) -> FlowRunInfo:
        """The current flow run; its fields are None outside a run."""
        return _flow_run.get()

    @property
    def task_run(self) -> TaskRunInfo:
        """The current task run; its fields are None outside a task."""
        return _task_run.get()

    @property
    def cancel_requested(self) -> bool:
        """Whether the flow is stopping (cancelled, or it raised): a long sync task checks
        this between steps and returns early, since a thread cannot be stopped from outside."""
        stopping = _stopping.get()
        return stopping is not None and stopping.is_set()


runtime = Runtime()


@contextmanager
def enter_run(info: FlowRunInfo) -> Iterator[None]:
    """Make ``info`` the current flow run (the engine does this around the flow call)."""
    token = _flow_run.set(info)
    try:
        yield
    finally:
        _flow_run.reset(token)


@contextmanager
def enter_task_run(info: TaskRunInfo) -> Iterator[None]:
    """Make ``info`` the current task run for one attempt."""
    token = _task_run.set(info)
    try:
        yield
    finally:
        _task_run.reset(token)


@contextmanager
def stopping_flag(event: threading.Event) -> Iterator[None]:
    """Make ``event`` the flag :attr:`Runtime.cancel_requested` reads."""
    token = _stopping.set(event)
    try:
        yield
    finally:
        _stopping.reset(token)
