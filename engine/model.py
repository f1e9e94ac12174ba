"""The engine's plain data: what to run, states, log lines.

These are the shapes the engine works with inside; :mod:`engine.wire` converts them to and
from the ``flowyard.v1`` protobuf messages at the edge.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from engine.storage import CodeSource
from flowyard_sdk.events import TaskRunChange

__all__ = ["LogLine", "LogStream", "OpenedInfo", "RunSpec", "StateResult", "StateType"]


class StateType(enum.Enum):
    """The run state types the engine sees or proposes (names match ``flowyard.v1``)."""

    UNSPECIFIED = "UNSPECIFIED"
    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CRASHED = "CRASHED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"


class LogStream(enum.Enum):
    """Where a log line came from (names match ``flowyard.v1.LogStream``)."""

    LOGGER = "LOGGER"
    STDOUT = "STDOUT"
    STDERR = "STDERR"
    SYSTEM = "SYSTEM"


@dataclass(slots=True)
class LogLine:
    """One line of the attempt's logs (never changed once numbered; not frozen because a
    frozen dataclass costs four times as much to build, and every line builds one)."""

    seq: int
    """Position within the attempt, from 1; 0 while the line waits to be numbered."""
    timestamp: float
    """Seconds since the epoch, by this machine's clock."""
    level: int
    stream: LogStream
    logger: str
    text: str
    task_run: str = ""
    """The name of the task run that wrote the line; empty outside a task."""
    task_event: TaskRunChange | None = None
    """The change of a task run this line announces, if it does."""
    subflow_run: str = ""
    """The id of the subflow run that wrote the line; empty outside a subflow."""


@dataclass(frozen=True)
class RunSpec:
    """What StartRun told the engine to run."""

    run_id: str
    attempt: int
    flow_name: str
    entrypoint: str
    source: CodeSource | None
    """None when the run carries no source the engine knows how to fetch."""
    source_problem: str
    """Why ``source`` is None, for the FAILED message."""
    parameters_json: str
    heartbeat_interval: float
    """Seconds between heartbeats on the Report stream."""
    deployment_name: str = ""
    scheduled_time: datetime | None = None


@dataclass(frozen=True)
class StateResult:
    """The control plane's answer to a state proposal."""

    accepted: bool
    state: StateType
    """The run's state after the proposal (its current state if rejected)."""
    reason: str


@dataclass(frozen=True)
class OpenedInfo:
    """The control plane's answer to the first Open of the engine."""

    stored_seq: int
    state: StateType
