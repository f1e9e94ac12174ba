"""Conversions between domain objects and ``flowyard.v1`` messages, at the edge only."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from control_plane.errors import InvalidArgument
from control_plane.models import (
    Collision,
    Deployment,
    LogRecord,
    Pool,
    PoolType,
    Run,
    Schedule,
    Scheduling,
    StateRecord,
    TaskRunEvent,
    TaskRunRecord,
    TaskRunState,
    WorkQueue,
)
from control_plane.orchestration import validation
from control_plane.states import StateType
from control_plane.store.line_messages import (
    EPOCH,
    MAX_SECONDS,
    MIN_SECONDS,
    fill_log_line,
    timestamp_or_none,
)
from flowyard.v1 import types_pb2
from flowyard_common.templates import compact_json

POOL_TYPES = {
    PoolType.PROCESS: types_pb2.POOL_TYPE_PROCESS,
    PoolType.KUBERNETES: types_pb2.POOL_TYPE_KUBERNETES,
}
STATE_TYPES: dict[StateType, types_pb2.StateType.ValueType] = {
    t: types_pb2.StateType.Value(f"STATE_TYPE_{t.value}") for t in StateType
}
TASK_RUN_STATES: dict[TaskRunState, types_pb2.TaskRunState.ValueType] = {
    t: types_pb2.TaskRunState.Value(f"TASK_RUN_STATE_{t.value}") for t in TaskRunState
}
#: Bounds of what a task-run event may say: ids, names and the line's task run are refused
#: beyond them (INVALID_ARGUMENT), free text is cut to its column.
MAX_TASK_RUN_ID_CHARS = 64
MAX_TASK_RUN_NAME_CHARS = 200
MAX_TASK_ERROR_TYPE_CHARS = 200
MAX_TASK_ERROR_MESSAGE_CHARS = 4000
MAX_TASK_INPUTS_CHARS = 2000
MAX_TASK_TAGS = 100
MAX_TASK_TAG_CHARS = 200


def timestamp(value: datetime | None) -> Timestamp | None:
    """A protobuf Timestamp, or None for an unset time."""
    if value is None:
        return None
    return required_timestamp(value)


def required_timestamp(value: datetime) -> Timestamp:
    """A protobuf Timestamp of a time that is always set (a naive time is taken as UTC)."""
    since = value - (EPOCH if value.tzinfo is not None else EPOCH.replace(tzinfo=None))
    return Timestamp(seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1_000)


def from_timestamp(value: Timestamp, field: str) -> datetime:
    """A UTC datetime from a protobuf Timestamp; INVALID_ARGUMENT naming ``field`` if it is
    outside what a Timestamp may hold (0001-01-01 to 9999-12-31, nanos below one second)."""
    time = timestamp_or_none(value)
    if time is None:
        raise InvalidArgument(
            f"{field}: not a valid time (seconds={value.seconds}, nanos={value.nanos}): seconds "
            f"must be between {MIN_SECONDS} (0001-01-01) and {MAX_SECONDS} (9999-12-31), "
            "nanos between 0 and 999999999"
        )
    return time


def storable(text: str) -> str:
    """Text reported by an agent or engine as it can be stored: NUL, which PostgreSQL text
    columns refuse, becomes U+FFFD (the rest of the text is kept)."""
    return text.replace("\x00", "\ufffd")


def pool_type(value: types_pb2.PoolType.ValueType) -> PoolType:
    """The domain pool type; INVALID_ARGUMENT for UNSPECIFIED or unknown values."""
    for domain, wire in POOL_TYPES.items():
        if wire == value:
            return domain
    raise InvalidArgument("type: must be POOL_TYPE_PROCESS or POOL_TYPE_KUBERNETES")


def state_type(value: types_pb2.StateType.ValueType, field: str) -> StateType:
    """The domain state type; INVALID_ARGUMENT for UNSPECIFIED or unknown values."""
    for domain, wire in STATE_TYPES.items():
        if wire == value:
            return domain
    names = ", ".join(types_pb2.StateType.Name(wire) for wire in STATE_TYPES.values())
    raise InvalidArgument(f"{field}: {value} is not a state type; use one of {names}")


def task_run_name(value: str, field: str) -> str:
    """The task run a log line names (empty outside a task); INVALID_ARGUMENT if too long."""
    if len(value) > MAX_TASK_RUN_NAME_CHARS:
        raise InvalidArgument(
            f"{field}: longer than {MAX_TASK_RUN_NAME_CHARS} characters ({len(value)})"
        )
    return storable(value)


def task_run_event(event: types_pb2.TaskRunEvent, field: str) -> TaskRunEvent:
    """The domain event; INVALID_ARGUMENT naming the field for what cannot be stored.

    Ids and names out of bounds and impossible states are refused; the error, inputs and
    tags are cut to what is stored.
    """
    if not 1 <= len(event.task_run_id) <= MAX_TASK_RUN_ID_CHARS:
        raise InvalidArgument(
            f"{field}.task_run_id: must be 1 to {MAX_TASK_RUN_ID_CHARS} characters, "
            f"got {len(event.task_run_id)}"
        )
    for name in ("name", "task_name"):
        value = getattr(event, name)
        if not 1 <= len(value) <= MAX_TASK_RUN_NAME_CHARS:
            raise InvalidArgument(
                f"{field}.{name}: must be 1 to {MAX_TASK_RUN_NAME_CHARS} characters, "
                f"got {len(value)}"
            )
    if event.attempt < 1:
        raise InvalidArgument(f"{field}.attempt: must be 1 or more, got {event.attempt}")
    return TaskRunEvent(
        task_run_id=storable(event.task_run_id),
        name=storable(event.name),
        task_name=storable(event.task_name),
        state=_reported_task_run_state(event.state, f"{field}.state"),
        attempt=event.attempt,
        error_type=storable(event.error_type[:MAX_TASK_ERROR_TYPE_CHARS]),
        error_message=storable(event.error_message[:MAX_TASK_ERROR_MESSAGE_CHARS]),
        inputs=storable(event.inputs[:MAX_TASK_INPUTS_CHARS]),
        tags=tuple(storable(tag[:MAX_TASK_TAG_CHARS]) for tag in event.tags[:MAX_TASK_TAGS]),
    )


def _reported_task_run_state(value: types_pb2.TaskRunState.ValueType, field: str) -> TaskRunState:
    reportable = {t: wire for t, wire in TASK_RUN_STATES.items() if t is not TaskRunState.CRASHED}
    for domain, wire in reportable.items():
        if wire == value:
            return domain
    names = ", ".join(types_pb2.TaskRunState.Name(wire) for wire in reportable.values())
    if value == TASK_RUN_STATES[TaskRunState.CRASHED]:
        raise InvalidArgument(
            f"{field}: TASK_RUN_STATE_CRASHED is set by the control plane only (when the run's "
            f"attempt ends with the task run unfinished); report one of {names}"
        )
    raise InvalidArgument(f"{field}: {value} is not a task run state; use one of {names}")


def task_run_to_proto(record: TaskRunRecord) -> types_pb2.TaskRun:
    """A TaskRun message."""
    return types_pb2.TaskRun(
        id=record.id,
        run_id=record.run_id,
        flow_attempt=record.flow_attempt,
        name=record.name,
        task_name=record.task_name,
        state=TASK_RUN_STATES[record.state],
        attempts=record.attempts,
        start_time=timestamp(record.start_time),
        end_time=timestamp(record.end_time),
        error_type=record.error_type,
        error_message=record.error_message,
        inputs=record.inputs,
        tags=list(record.tags),
        attempt_errors=record.attempt_errors,
    )


def task_run_counts(counts: dict[TaskRunState, int]) -> dict[str, int]:
    """Counts by state as GetRunResponse.task_run_counts names them."""
    return {types_pb2.TaskRunState.Name(TASK_RUN_STATES[s]): n for s, n in counts.items()}


COLLISIONS = {
    Collision.ENQUEUE: types_pb2.COLLISION_STRATEGY_ENQUEUE,
    Collision.CANCEL_NEW: types_pb2.COLLISION_STRATEGY_CANCEL_NEW,
}


def pool_to_proto(
    pool: Pool, connected_agents: int, queues: list[WorkQueue] | None = None
) -> types_pb2.WorkPool:
    """A WorkPool message."""
    return types_pb2.WorkPool(
        name=pool.name,
        type=POOL_TYPES[pool.type],
        base_job_template_json=compact_json(pool.base_job_template),
        concurrency_limit=pool.concurrency_limit,
        paused=pool.paused,
        create_time=timestamp(pool.created_at),
        update_time=timestamp(pool.updated_at),
        connected_agents=connected_agents,
        queues=[queue_to_proto(q) for q in queues or []],
    )


def queue_to_proto(queue: WorkQueue) -> types_pb2.WorkQueue:
    """A WorkQueue message."""
    return types_pb2.WorkQueue(
        name=queue.name,
        priority=queue.priority,
        concurrency_limit=queue.concurrency_limit,
        paused=queue.paused,
    )


def collision(value: types_pb2.CollisionStrategy.ValueType, field: str) -> Collision:
    """The domain collision strategy (UNSPECIFIED is ENQUEUE); INVALID_ARGUMENT if unknown."""
    if value == types_pb2.COLLISION_STRATEGY_UNSPECIFIED:
        return Collision.ENQUEUE
    for domain, wire in COLLISIONS.items():
        if wire == value:
            return domain
    raise InvalidArgument(
        f"{field}: {value} is not a collision strategy; use COLLISION_STRATEGY_ENQUEUE or "
        "COLLISION_STRATEGY_CANCEL_NEW"
    )


def scheduling_from_proto(deployment: types_pb2.Deployment) -> Scheduling:
    """The queue, retries, limit and schedules of a Deployment message (not yet validated)."""
    schedules = []
    for index, message in enumerate(deployment.schedules):
        field = f"deployment.schedules[{index}]"
        anchor = None
        if message.interval.HasField("anchor_time"):
            anchor = from_timestamp(message.interval.anchor_time, f"{field}.interval.anchor_time")
        schedules.append(
            Schedule(
                name=message.name or f"schedule-{index}",
                cron=message.cron.expression,
                timezone=message.cron.timezone,
                interval_seconds=message.interval.seconds,
                anchor=anchor,
                paused=message.paused,
                parameters=validation.json_object(
                    message.parameters_json, f"{field}.parameters_json"
                ),
            )
        )
    return Scheduling(
        queue=deployment.queue or "default",
        retries=deployment.retries,
        retry_delay_seconds=deployment.retry_delay_seconds,
        concurrency_limit=deployment.concurrency_limit,
        collision=collision(deployment.collision_strategy, "deployment.collision_strategy"),
        paused=deployment.paused,
        schedules=tuple(schedules),
    )


def schedule_to_proto(schedule: Schedule) -> types_pb2.Schedule:
    """A Schedule message."""
    message = types_pb2.Schedule(
        name=schedule.name,
        paused=schedule.paused,
        parameters_json=compact_json(schedule.parameters) if schedule.parameters else "",
    )
    if schedule.cron:
        message.cron.CopyFrom(
            types_pb2.CronSchedule(expression=schedule.cron, timezone=schedule.timezone)
        )
    else:
        message.interval.CopyFrom(
            types_pb2.IntervalSchedule(
                seconds=schedule.interval_seconds, anchor_time=timestamp(schedule.anchor)
            )
        )
    return message


def source_to_proto(source: dict[str, Any]) -> types_pb2.Source:
    """A Source message from the stored source document (the message's JSON form)."""
    return json_format.ParseDict(source, types_pb2.Source(), ignore_unknown_fields=True)


def source_from_proto(source: types_pb2.Source) -> dict[str, Any]:
    """The source document to check and store: the message's JSON form with proto field
    names ({} when no kind is set)."""
    return json_format.MessageToDict(source, preserving_proto_field_name=True)


def deployment_to_proto(deployment: Deployment) -> types_pb2.Deployment:
    """A Deployment message."""
    return types_pb2.Deployment(
        id=deployment.id,
        name=deployment.name,
        flow_name=deployment.flow_name,
        entrypoint=deployment.entrypoint,
        source=source_to_proto(deployment.source),
        pool=deployment.pool_name,
        parameters_json=compact_json(deployment.parameters),
        parameter_schema_json=compact_json(deployment.parameter_schema)
        if deployment.parameter_schema
        else "",
        job_variables_json=compact_json(deployment.job_variables),
        tags=deployment.tags,
        description=deployment.description,
        create_time=timestamp(deployment.created_at),
        update_time=timestamp(deployment.updated_at),
        queue=deployment.scheduling.queue,
        retries=deployment.scheduling.retries,
        retry_delay_seconds=deployment.scheduling.retry_delay_seconds,
        schedules=[schedule_to_proto(s) for s in deployment.scheduling.schedules],
        concurrency_limit=deployment.scheduling.concurrency_limit,
        collision_strategy=COLLISIONS[deployment.scheduling.collision],
        paused=deployment.scheduling.paused,
        version=deployment.version,
    )


def state_to_proto(record: StateRecord) -> types_pb2.RunState:
    """A RunState message from a history row."""
    return types_pb2.RunState(
        type=STATE_TYPES[record.type],
        name=record.name,
        message=record.message,
        timestamp=timestamp(record.created_at),
        attempt=record.attempt,
    )


def current_state(run: Run) -> types_pb2.RunState:
    """The run's current state as a RunState message."""
    return state_to_proto(
        StateRecord(run.attempt, run.state_type, run.state_name, run.state_message, run.state_time)
    )


def run_to_proto(run: Run) -> types_pb2.FlowRun:
    """A FlowRun message."""
    return types_pb2.FlowRun(
        id=run.id,
        deployment_id=run.deployment_id,
        deployment_name=run.deployment_name,
        flow_name=run.flow_name,
        pool=run.pool_name,
        parameters_json=compact_json(run.parameters),
        job_variables_json=compact_json(run.job_variables),
        idempotency_key=run.idempotency_key or "",
        state=current_state(run),
        attempt=run.attempt,
        scheduled_time=timestamp(run.scheduled_at),
        create_time=timestamp(run.created_at),
        accept_time=timestamp(run.accepted_at),
        start_time=timestamp(run.started_at),
        end_time=timestamp(run.ended_at),
        infrastructure_id=run.infrastructure_id,
        agent_name=run.agent_name,
        result_summary=run.result_summary,
        source_revision=run.source_revision,
        queue=run.queue_name,
        max_retries=run.max_retries,
        schedule_name=run.schedule_name,
        parent_run_id=run.parent_run_id or "",
        subflow=run.subflow,
        cancel_with_parent=run.cancel_with_parent,
    )


def log_to_proto(line: LogRecord) -> types_pb2.LogLine:
    """A LogLine message."""
    message = types_pb2.LogLine()
    fill_log_line(message, line)
    return message
