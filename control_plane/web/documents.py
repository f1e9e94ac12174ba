"""The JSON documents of the HTTP API, built from the same domain objects the gRPC API sends.

Field names follow the ``.proto`` messages where they exist (``state``, ``attempt``,
``infrastructure_id``...), times are RFC 3339 strings in UTC, and what the gRPC API carries as
JSON text (parameters, job variables, schemas) is plain JSON here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from control_plane.models import (
    Deployment,
    LogRecord,
    Pool,
    Run,
    Schedule,
    StateRecord,
    TaskRunRecord,
    TaskRunState,
    WorkQueue,
)
from control_plane.orchestration.scheduler import ScheduleStatus

Document = dict[str, Any]


def time(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a ``Z``, or None."""
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


def run(value: Run) -> Document:
    """A run as the runs list and the run page show it."""
    return {
        "id": value.id,
        "deployment": value.deployment_name,
        "flow_name": value.flow_name,
        "pool": value.pool_name,
        "queue": value.queue_name,
        "state": {
            "type": value.state_type.value,
            "name": value.state_name,
            "message": value.state_message,
            "time": time(value.state_time),
        },
        "attempt": value.attempt,
        "max_retries": value.max_retries,
        "parameters": value.parameters,
        "job_variables": value.job_variables,
        "scheduled_time": time(value.scheduled_at),
        "create_time": time(value.created_at),
        "accept_time": time(value.accepted_at),
        "start_time": time(value.started_at),
        "end_time": time(value.ended_at),
        "infrastructure_id": value.infrastructure_id,
        "agent_name": value.agent_name,
        "result_summary": value.result_summary,
        "source_revision": value.source_revision,
        "schedule_name": value.schedule_name,
        "parent_run_id": value.parent_run_id,
        "subflow": value.subflow,
        "version": value.version,
    }


def state(value: StateRecord) -> Document:
    """One entry of a run's state history."""
    return {
        "attempt": value.attempt,
        "type": value.type.value,
        "name": value.name,
        "message": value.message,
        "time": time(value.created_at),
    }


def task_run(value: TaskRunRecord) -> Document:
    """A task run of a flow run."""
    return {
        "id": value.id,
        "name": value.name,
        "task_name": value.task_name,
        "state": value.state.value,
        "attempts": value.attempts,
        "flow_attempt": value.flow_attempt,
        "start_time": time(value.start_time),
        "end_time": time(value.end_time),
        "error_type": value.error_type,
        "error_message": value.error_message,
        "tags": list(value.tags),
    }


def task_run_counts(counts: dict[TaskRunState, int]) -> Document:
    """How many task runs of a run are in each state."""
    return {state.value: count for state, count in counts.items()}


def line(value: LogRecord) -> Document:
    """One log line (its position is the event id of the logs stream)."""
    return {
        "attempt": value.attempt,
        "seq": value.seq,
        "time": time(value.timestamp),
        "level": value.level,
        "stream": value.stream.value,
        "logger": value.logger,
        "text": value.text,
        "task_run": value.task_run,
        "subflow_run": value.subflow_run,
    }


def queue(value: WorkQueue) -> Document:
    """A queue of a pool."""
    return {
        "name": value.name,
        "priority": value.priority,
        "concurrency_limit": value.concurrency_limit,
        "paused": value.paused,
    }


def pool(value: Pool, queues: list[WorkQueue], agents: list[Document]) -> Document:
    """A work pool with its queues and the agents connected to it."""
    return {
        "name": value.name,
        "type": value.type.value,
        "concurrency_limit": value.concurrency_limit,
        "paused": value.paused,
        "create_time": time(value.created_at),
        "update_time": time(value.updated_at),
        "queues": [queue(q) for q in queues],
        "agents": agents,
    }


def schedule(value: Schedule) -> Document:
    """A schedule of a deployment."""
    return {
        "name": value.name,
        "cron": value.cron,
        "timezone": value.timezone,
        "interval_seconds": value.interval_seconds,
        "anchor": time(value.anchor),
        "paused": value.paused,
        "parameters": value.parameters,
    }


def deployment(value: Deployment, statuses: list[ScheduleStatus] | None = None) -> Document:
    """A deployment; with ``statuses``, each schedule's next times and the runs it already
    created that wait for their time."""
    next_times = {s.schedule.name: [time(t) for t in s.next_times] for s in statuses or []}
    scheduled = {
        s.schedule.name: [{"id": r.id, "scheduled_time": time(r.scheduled_at)} for r in s.runs]
        for s in statuses or []
    }
    scheduling = value.scheduling
    return {
        "id": value.id,
        "name": value.name,
        "flow_name": value.flow_name,
        "entrypoint": value.entrypoint,
        "source": value.source,
        "version": value.version,
        "pool": value.pool_name,
        "queue": scheduling.queue,
        "parameters": value.parameters,
        "parameter_schema": value.parameter_schema,
        "job_variables": value.job_variables,
        "tags": list(value.tags),
        "description": value.description,
        "retries": scheduling.retries,
        "retry_delay_seconds": scheduling.retry_delay_seconds,
        "concurrency_limit": scheduling.concurrency_limit,
        "collision_strategy": scheduling.collision.value,
        "paused": scheduling.paused,
        "schedules": [
            {
                **schedule(s),
                "next_times": next_times.get(s.name, []),
                "scheduled_runs": scheduled.get(s.name, []),
            }
            for s in scheduling.schedules
        ],
        "create_time": time(value.created_at),
        "update_time": time(value.updated_at),
    }
