"""What ``-o json`` and ``-o yaml`` print: API objects as plain, stable documents.

The shapes are documented in ``docs/cli.md`` and are a promise to scripts: keys are
``snake_case`` and only ever added, ids are whole, times are RFC 3339 in UTC with a ``Z``
(``null`` when unset), enums are their names without the proto prefix (``COMPLETED``,
``process``), and JSON text the API carries as strings (parameters, job variables) is parsed
into objects. They are built by hand rather than with ``json_format.MessageToDict``, whose
output follows the proto (camelCase, int64 as strings, omitted defaults) and would change
whenever a field is added.
"""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

from control_plane.cli.output import level_name
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2

Document = dict[str, Any]


def timestamp(message: Any, field: str) -> str | None:
    """``message.field`` (a Timestamp) as ``2026-12-03T15:00:04.123456Z``, or None if unset."""
    if not message.HasField(field):
        return None
    when = getattr(message, field).ToDatetime(tzinfo=UTC)
    return str(when.isoformat(timespec="microseconds").replace("+00:00", "Z"))


def _times(values: Any) -> list[str]:
    return [
        str(t.ToDatetime(tzinfo=UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"))
        for t in values
    ]


def _json(text: str) -> Any:
    """JSON text the API carries as a string; an empty string is an empty object."""
    return json.loads(text) if text else {}


def _limit(value: int) -> int | None:
    # The API says 0 for "no limit"; a script reads null more safely than a zero.
    return value or None


def state_type(value: types_pb2.StateType.ValueType) -> str:
    """``COMPLETED`` for ``STATE_TYPE_COMPLETED``."""
    return types_pb2.StateType.Name(value).removeprefix("STATE_TYPE_")


def state(message: types_pb2.RunState) -> Document:
    """A run state: type, name, message, time and attempt."""
    return {
        "type": state_type(message.type),
        "name": message.name,
        "message": message.message,
        "time": timestamp(message, "timestamp"),
        "attempt": message.attempt,
    }


def run(message: types_pb2.FlowRun) -> Document:
    """A flow run."""
    return {
        "id": message.id,
        "deployment": message.deployment_name,
        "deployment_id": message.deployment_id,
        "flow": message.flow_name,
        "pool": message.pool,
        "queue": message.queue,
        "schedule": message.schedule_name or None,
        "state": state(message.state),
        "attempt": message.attempt,
        "max_retries": message.max_retries,
        "parameters": _json(message.parameters_json),
        "job_variables": _json(message.job_variables_json),
        "idempotency_key": message.idempotency_key or None,
        "scheduled_time": timestamp(message, "scheduled_time"),
        "create_time": timestamp(message, "create_time"),
        "accept_time": timestamp(message, "accept_time"),
        "start_time": timestamp(message, "start_time"),
        "end_time": timestamp(message, "end_time"),
        "agent": message.agent_name or None,
        "infrastructure_id": message.infrastructure_id or None,
        "result": message.result_summary or None,
        "source_revision": message.source_revision or None,
        "parent_run_id": message.parent_run_id or None,
        "subflow": message.subflow,
    }


def run_with_history(response: pb.GetRunResponse) -> Document:
    """A run (as in ``runs ls``) plus ``history``: every state it was in, oldest first, and
    ``task_runs``: how many task runs it has in each state, and ``children``: the runs its
    flow started (subflows, ``run_deployment``)."""
    return {
        **run(response.run),
        "history": [state(h) for h in response.history],
        "task_runs": task_run_counts(response.task_run_counts),
        "children": [run(child) for child in response.children],
    }


def task_run_state(value: types_pb2.TaskRunState.ValueType) -> str:
    """``TASK_RUN_STATE_FAILED`` as ``FAILED``."""
    return types_pb2.TaskRunState.Name(value).removeprefix("TASK_RUN_STATE_")


def task_run_counts(counts: Any) -> dict[str, int]:
    """``GetRunResponse.task_run_counts`` keyed by short state names."""
    return {
        name.removeprefix("TASK_RUN_STATE_"): int(count) for name, count in sorted(counts.items())
    }


def task_run(message: types_pb2.TaskRun) -> Document:
    """A task run, as ``runs tasks -o json`` lists them."""
    return {
        "id": message.id,
        "name": message.name,
        "task": message.task_name,
        "state": task_run_state(message.state),
        "flow_attempt": message.flow_attempt,
        "attempts": message.attempts,
        "start_time": timestamp(message, "start_time"),
        "end_time": timestamp(message, "end_time"),
        "error_type": message.error_type or None,
        "error_message": message.error_message or None,
        "inputs": message.inputs or None,
        "tags": list(message.tags),
        "attempt_errors": {
            str(attempt): error for attempt, error in sorted(message.attempt_errors.items())
        },
    }


def queue(message: types_pb2.WorkQueue) -> Document:
    """A work queue."""
    return {
        "name": message.name,
        "priority": message.priority,
        "concurrency_limit": _limit(message.concurrency_limit),
        "paused": message.paused,
    }


def pool(message: types_pb2.WorkPool) -> Document:
    """A work pool, with its queues in dispatch order."""
    return {
        "name": message.name,
        "type": types_pb2.PoolType.Name(message.type).removeprefix("POOL_TYPE_").lower(),
        "concurrency_limit": _limit(message.concurrency_limit),
        "paused": message.paused,
        "connected_agents": message.connected_agents,
        "queues": [queue(q) for q in message.queues],
        "create_time": timestamp(message, "create_time"),
        "update_time": timestamp(message, "update_time"),
    }


def source(message: types_pb2.Source) -> Document:
    """Where a deployment's code comes from: ``{"local"|"git"|"archive": {...}}``."""
    kind = message.WhichOneof("kind")
    if kind == "local":
        return {"local": {"path": message.local.path}}
    if kind == "git":
        git = message.git
        credentials: Document | None = None
        if git.HasField("credentials"):
            secret = git.credentials.token_secret
            credentials = {
                "username": git.credentials.username or None,
                "token_env": git.credentials.token_env or None,
                "token_secret": ({"name": secret.name, "key": secret.key} if secret.name else None),
            }
        return {
            "git": {
                "url": git.url,
                "ref": git.ref or None,
                "subdirectory": git.subdirectory or None,
                "shallow": git.shallow,
                "credentials": credentials,
            }
        }
    if kind == "archive":
        archive = message.archive
        return {
            "archive": {
                "url": archive.url,
                "sha256": archive.sha256 or None,
                "subdirectory": archive.subdirectory or None,
            }
        }
    return {}


def schedule(message: types_pb2.Schedule) -> Document:
    """A schedule: ``cron`` or ``interval`` (the other is null)."""
    kind = message.WhichOneof("kind")
    return {
        "name": message.name,
        "cron": (
            {"expression": message.cron.expression, "timezone": message.cron.timezone or "UTC"}
            if kind == "cron"
            else None
        ),
        "interval": (
            {
                "seconds": message.interval.seconds,
                "anchor_time": timestamp(message.interval, "anchor_time"),
            }
            if kind == "interval"
            else None
        ),
        "paused": message.paused,
        "parameters": _json(message.parameters_json),
    }


def deployment(message: types_pb2.Deployment) -> Document:
    """A deployment."""
    strategy = message.collision_strategy or types_pb2.COLLISION_STRATEGY_ENQUEUE
    return {
        "name": message.name,
        "id": message.id,
        "flow": message.flow_name,
        "entrypoint": message.entrypoint,
        "source": source(message.source),
        "pool": message.pool,
        "queue": message.queue or "default",
        "parameters": _json(message.parameters_json),
        "parameter_schema": _json(message.parameter_schema_json),
        "job_variables": _json(message.job_variables_json),
        "tags": list(message.tags),
        "description": message.description,
        "version": message.version or None,
        "retries": message.retries,
        "retry_delay_seconds": message.retry_delay_seconds,
        "concurrency_limit": _limit(message.concurrency_limit),
        "collision_strategy": types_pb2.CollisionStrategy.Name(strategy).removeprefix(
            "COLLISION_STRATEGY_"
        ),
        "schedules": [schedule(s) for s in message.schedules],
        "paused": message.paused,
        "create_time": timestamp(message, "create_time"),
        "update_time": timestamp(message, "update_time"),
    }


def schedules(name: str, response: pb.ListSchedulesResponse) -> Document:
    """A deployment's schedules, each with its next firings and the runs it already created."""
    return {
        "deployment": name,
        "deployment_paused": response.deployment_paused,
        "schedules": [
            {
                "schedule": schedule(status.schedule),
                "next_times": _times(status.next_times),
                "scheduled_runs": [
                    {"id": r.id, "scheduled_time": timestamp(r, "scheduled_time")}
                    for r in status.scheduled_runs
                ],
            }
            for status in response.schedules
        ],
    }


def token(message: pb.TokenInfo) -> Document:
    """A token's description (never its secret)."""
    return {
        "id": message.id,
        "kind": pb.TokenKind.Name(message.kind).removeprefix("TOKEN_KIND_").lower(),
        "pool": message.pool or None,
        "description": message.description,
        "create_time": timestamp(message, "create_time"),
        "expire_time": timestamp(message, "expire_time"),
        "revoked": message.revoked,
    }


def log_line(message: types_pb2.LogLine) -> Document:
    """A log line, as ``logs -o json`` prints one per line."""
    return {
        "attempt": message.attempt,
        "seq": message.seq,
        "time": timestamp(message, "timestamp"),
        "level": level_name(message.level),
        "level_number": message.level,
        "stream": types_pb2.LogStream.Name(message.stream).removeprefix("LOG_STREAM_").lower(),
        "logger": message.logger or None,
        "task_run": message.task_run or None,
        "subflow_run": message.subflow_run or None,
        "text": message.text,
    }
