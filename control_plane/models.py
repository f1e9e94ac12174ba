"""Domain objects: plain typed dataclasses. Protobuf messages exist only at the API edge."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from control_plane.states import StateType

JSONObject = dict[str, Any]


class PoolType(enum.StrEnum):
    """The runtime a pool's agents use."""

    PROCESS = "process"
    KUBERNETES = "kubernetes"


@dataclass(frozen=True)
class Pool:
    """A work pool."""

    id: str
    name: str
    type: PoolType
    base_job_template: JSONObject
    concurrency_limit: int
    paused: bool
    created_at: datetime
    updated_at: datetime


DEFAULT_QUEUE = "default"


@dataclass(frozen=True)
class WorkQueue:
    """A lane inside a pool: a priority (lower first), a concurrency limit, a pause switch."""

    id: str
    pool_id: str
    name: str
    priority: int
    concurrency_limit: int
    paused: bool
    created_at: datetime
    updated_at: datetime


class Collision(enum.StrEnum):
    """What a run does when its deployment is at its concurrency limit (stored values)."""

    ENQUEUE = "ENQUEUE"
    CANCEL_NEW = "CANCEL_NEW"


@dataclass(frozen=True)
class Schedule:
    """When the scheduler creates runs of a deployment: a cron in a zone, or an interval."""

    name: str
    cron: str = ""
    timezone: str = ""
    interval_seconds: int = 0
    anchor: datetime | None = None
    paused: bool = False
    parameters: JSONObject = field(default_factory=dict)


@dataclass(frozen=True)
class Scheduling:
    """A deployment's queue, retries, concurrency limit and schedules."""

    queue: str = DEFAULT_QUEUE
    retries: int = 0
    retry_delay_seconds: int = 0
    concurrency_limit: int = 0
    collision: Collision = Collision.ENQUEUE
    paused: bool = False
    schedules: tuple[Schedule, ...] = ()


@dataclass(frozen=True)
class Deployment:
    """A deployment: a flow, its code's source, its defaults and its pool."""

    id: str
    name: str
    flow_name: str
    entrypoint: str
    source: JSONObject
    pool_id: str
    pool_name: str
    parameters: JSONObject
    parameter_schema: JSONObject | None
    job_variables: JSONObject
    tags: list[str]
    description: str
    created_at: datetime
    updated_at: datetime
    scheduling: Scheduling = field(default_factory=Scheduling)
    version: str = ""


@dataclass(frozen=True)
class Run:
    """A flow run as stored, with the names of its deployment and pool."""

    id: str
    deployment_id: str
    deployment_name: str
    pool_id: str
    pool_name: str
    flow_name: str
    parameters: JSONObject
    job_variables: JSONObject
    idempotency_key: str | None
    state_type: StateType
    state_name: str
    state_message: str
    state_time: datetime
    version: int
    last_transition_id: str | None
    attempt: int
    scheduled_at: datetime
    created_at: datetime
    accepted_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    agent_session_id: str | None
    agent_name: str
    lease_deadline: datetime | None
    infrastructure_id: str
    engine_token_hash: str | None
    result_summary: str
    last_heartbeat_at: datetime | None = None
    source_revision: str = ""
    queue_id: str | None = None
    queue_name: str = DEFAULT_QUEUE
    max_retries: int = 0
    schedule_name: str = ""
    #: The run whose flow started this one (attempt ``parent_attempt``), if any.
    parent_run_id: str | None = None
    parent_attempt: int | None = None
    #: A subflow: run by the parent's engine, its lines stored with the parent's.
    subflow: bool = False
    #: Whether cancelling the parent cancels this run.
    cancel_with_parent: bool = False
    #: Whether this run's flow has started a subflow.
    has_subflows: bool = False
    #: When the current attempt was assigned to an agent (None: not yet, or before this was
    #: recorded).
    assigned_at: datetime | None = None
    #: Whether the run has reported task runs (its ending attempt ends those unfinished).
    has_task_runs: bool = False

    @property
    def is_terminal(self) -> bool:
        """Whether the run can never change again."""
        return self.state_type.is_terminal


_RUN_FIELDS = frozenset(field.name for field in fields(Run))


def replaced(run: Run, changes: dict[str, Any]) -> Run:
    """``dataclasses.replace(run, **changes)``, for the runs of the hot paths: a copy of the
    run's fields with ``changes`` over them, at a fraction of its cost (it calls no
    ``__init__``: a run checks nothing on creation)."""
    if not changes.keys() <= _RUN_FIELDS:
        raise TypeError(f"not fields of a run: {sorted(changes.keys() - _RUN_FIELDS)}")
    copy = object.__new__(Run)
    copy.__dict__.update(run.__dict__)
    copy.__dict__.update(changes)
    return copy


@dataclass(frozen=True)
class StateRecord:
    """One row of a run's state history."""

    attempt: int
    type: StateType
    name: str
    message: str
    created_at: datetime


class LogStream(enum.StrEnum):
    """Where a log line came from (stored values)."""

    UNSPECIFIED = "unknown"
    LOGGER = "logger"
    STDOUT = "stdout"
    STDERR = "stderr"
    SYSTEM = "system"


class TaskRunState(enum.StrEnum):
    """Where a task run stands (stored values; ``TASK_RUN_STATE_<value>`` in the API)."""

    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CRASHED = "CRASHED"
    """Set by the control plane only: the run's attempt ended while the task run was unfinished."""

    @property
    def is_terminal(self) -> bool:
        """Whether the task run can never change again."""
        return self not in UNFINISHED_TASK_RUN_STATES


#: Task-run states that an ending attempt turns into CRASHED (or CANCELLED).
UNFINISHED_TASK_RUN_STATES = frozenset({TaskRunState.RUNNING, TaskRunState.RETRYING})


@dataclass(frozen=True)
class TaskRunEvent:
    """One change of a task run, as the engine reported it on a log line."""

    task_run_id: str
    name: str
    task_name: str
    state: TaskRunState
    attempt: int
    error_type: str = ""
    error_message: str = ""
    inputs: str = ""
    tags: tuple[str, ...] = ()


@dataclass(slots=True)
class LogRecord:
    """One stored log line (never changed once built; not frozen because a frozen dataclass
    costs four times as much to build, and every line stored or tailed builds one)."""

    run_id: str
    attempt: int
    seq: int
    timestamp: datetime
    level: int
    stream: LogStream
    logger: str
    text: str
    #: The name of the task run that wrote the line; empty outside a task.
    task_run: str = ""
    #: The subflow run that wrote the line (its id); empty outside a subflow.
    subflow_run: str = ""
    #: The change of a task run this line records (not stored with the line: folded into
    #: the task run's row).
    task_run_event: TaskRunEvent | None = None
    #: The ``LogLine`` message of the line, as it arrived or as it was read back from the
    #: database, when it says exactly what a tail sends for this record: tails then send it
    #: as it is instead of building it again (and it is stored as it is).
    wire: Any = field(default=None, compare=False, repr=False)
    #: The whole batch (or stored row) the line came in, when every line of it kept its
    #: message and is here.
    batch: WireBatch | None = field(default=None, compare=False, repr=False)


@dataclass(slots=True, eq=False)
class WireBatch:
    """A batch of log lines as it arrived, or a stored row as read back: its ``LogBatch``
    message, each line naming its run and attempt.

    Every record of the batch points to it (``LogRecord.batch``). Its bytes are what the
    store writes (``line_messages.encode``), and a tail that sends the whole batch parses
    them into its message at once instead of copying each line's message (a third of the
    cost). They are made once, when the batch is stored; a row read back comes with them.
    """

    #: The ``LogBatch``; its only field is ``repeated LogLine lines = 1``.
    message: Any
    #: The seq of its first line; its lines' seqs follow without a gap...
    first: int
    #: ...``count`` of them.
    count: int
    _data: bytes | None = field(default=None, repr=False)

    @property
    def data(self) -> bytes:
        """The batch serialized: its lines, encoded as a ``repeated LogLine lines = 1``."""
        if self._data is None:
            self._data = self.message.SerializeToString()
        return self._data


@dataclass(frozen=True)
class TaskRunRecord:
    """A stored task run: every event of it folded into one row."""

    id: str
    run_id: str
    flow_attempt: int
    name: str
    task_name: str
    state: TaskRunState
    attempts: int
    start_time: datetime | None
    end_time: datetime | None
    error_type: str
    error_message: str
    inputs: str
    tags: tuple[str, ...]
    first_seq: int
    last_seq: int
    attempt_errors: dict[int, str] = field(default_factory=dict)
    """Each failed attempt's error (``"Type: message"``), by attempt number."""


class TokenKind(enum.StrEnum):
    """What a token may do."""

    ADMIN = "admin"
    """Everything on ControlPlaneService, and AgentService.Connect for any pool."""
    AGENT = "agent"
    """AgentService.Connect for one pool."""
    ENGINE = "engine"
    """EngineService for one run attempt (minted per assignment, never listed)."""


@dataclass(frozen=True)
class TokenRecord:
    """A stored admin or agent token (without its secret)."""

    id: str
    kind: TokenKind
    pool: str
    description: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
