"""Conversions between the engine's dataclasses and the ``flowyard.v1`` messages.

With :mod:`engine.reporter` and :mod:`engine.stream`, the only modules that touch generated code:
everything else in the engine works with :mod:`engine.model`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path

from engine.model import LogLine, LogStream, OpenedInfo, RunSpec, StateResult, StateType
from engine.storage import CodeSource, LocalSource
from flowyard.v1 import engine_pb2, types_pb2
from flowyard_sdk.events import TaskRunChange, TaskRunState

__all__ = [
    "log_batch_to_proto",
    "new_transition_id",
    "opened_from_proto",
    "proposal_to_proto",
    "run_spec_from_proto",
    "state_result_from_proto",
    "state_type_from_proto",
    "state_type_to_proto",
]

DEFAULT_HEARTBEAT_INTERVAL = 10.0

_STREAMS: dict[LogStream, types_pb2.LogStream.ValueType] = {
    LogStream.LOGGER: types_pb2.LOG_STREAM_LOGGER,
    LogStream.STDOUT: types_pb2.LOG_STREAM_STDOUT,
    LogStream.STDERR: types_pb2.LOG_STREAM_STDERR,
    LogStream.SYSTEM: types_pb2.LOG_STREAM_SYSTEM,
}


def new_transition_id() -> str:
    """A fresh proposal id (32 hex characters)."""
    return uuid.uuid4().hex


def state_type_to_proto(state: StateType) -> types_pb2.StateType.ValueType:
    """``StateType.RUNNING`` → ``STATE_TYPE_RUNNING``."""
    return types_pb2.StateType.Value(f"STATE_TYPE_{state.value}")


def state_type_from_proto(value: types_pb2.StateType.ValueType) -> StateType:
    """``STATE_TYPE_RUNNING`` → ``StateType.RUNNING``; unknown numbers are UNSPECIFIED."""
    try:
        name = types_pb2.StateType.Name(value)
    except ValueError:
        return StateType.UNSPECIFIED
    return StateType(name.removeprefix("STATE_TYPE_"))


def opened_from_proto(message: engine_pb2.Opened) -> OpenedInfo:
    """The Opened answer as plain data."""
    return OpenedInfo(message.stored_seq, state_type_from_proto(message.state.type))


def state_result_from_proto(message: engine_pb2.StateResult) -> StateResult:
    """A StateResult as plain data."""
    return StateResult(
        accepted=message.accepted,
        state=state_type_from_proto(message.state.type),
        reason=message.reason,
    )


def proposal_to_proto(
    transition_id: str,
    state: StateType,
    *,
    message: str = "",
    result_summary: str = "",
    source_revision: str = "",
) -> engine_pb2.ReportRequest:
    """A ProposeState request."""
    return engine_pb2.ReportRequest(
        propose_state=engine_pb2.ProposeState(
            transition_id=transition_id,
            type=state_type_to_proto(state),
            message=message,
            result_summary=result_summary,
            source_revision=source_revision,
        )
    )


def log_batch_to_proto(lines: Sequence[LogLine]) -> engine_pb2.ReportRequest:
    """A LogBatch request; run id and attempt are left for the server to fill from the stream."""
    request = engine_pb2.ReportRequest()
    into = request.log_batch.lines
    for line in lines:
        # Built in place, field by field, defaults left unset: a chatty flow sends every
        # line it prints, and keyword construction and copying cost twice as much.
        message = into.add()
        message.seq = line.seq
        seconds = int(line.timestamp)
        message.timestamp.seconds = seconds
        # Microseconds, as the control plane keeps times (a float clock holds no finer).
        message.timestamp.nanos = int((line.timestamp - seconds) * 1e6) * 1_000
        message.level = line.level
        message.stream = _STREAMS[line.stream]
        if line.logger:
            message.logger = line.logger
        message.text = line.text
        if line.task_run:
            message.task_run = line.task_run
        if line.subflow_run:
            message.subflow_run = line.subflow_run
        if line.task_event is not None:
            message.task_run_event.CopyFrom(task_event_to_proto(line.task_event))
    return request


_TASK_STATES = {
    TaskRunState.RUNNING: types_pb2.TASK_RUN_STATE_RUNNING,
    TaskRunState.RETRYING: types_pb2.TASK_RUN_STATE_RETRYING,
    TaskRunState.COMPLETED: types_pb2.TASK_RUN_STATE_COMPLETED,
    TaskRunState.FAILED: types_pb2.TASK_RUN_STATE_FAILED,
    TaskRunState.CANCELLED: types_pb2.TASK_RUN_STATE_CANCELLED,
}


def task_event_to_proto(change: TaskRunChange) -> types_pb2.TaskRunEvent:
    """A task run's change as the event its log line carries."""
    return types_pb2.TaskRunEvent(
        task_run_id=change.task_run_id,
        name=change.name,
        task_name=change.task_name,
        state=_TASK_STATES[change.state],
        attempt=change.attempt,
        error_type=change.error_type,
        error_message=change.error_message,
        inputs=change.inputs,
        tags=sorted(change.tags),
    )


def run_spec_from_proto(response: engine_pb2.StartRunResponse) -> RunSpec:
    """What StartRun answered, as plain data."""
    source: CodeSource | None = None
    problem = ""
    kind = response.source.WhichOneof("kind")
    if kind == "local":
        source = LocalSource(Path(response.source.local.path))
    elif kind == "git":
        # Imported here: fetching over the network costs start-up time that a local run
        # (the common case in development) should not pay.
        from engine.git import GitSource

        git = response.source.git
        source = GitSource(
            url=git.url,
            ref=git.ref,
            subdirectory=git.subdirectory,
            shallow=git.shallow,
            username=git.credentials.username,
            token_env=git.credentials.token_env,
        )
    elif kind == "archive":
        from engine.archives import ArchiveSource

        archive = response.source.archive
        source = ArchiveSource(archive.url, archive.sha256, archive.subdirectory)
    elif kind is None:
        problem = "the run has no source to fetch the flow's code from"
    else:  # a newer control plane with a source kind this engine does not know
        problem = f"this engine cannot fetch code from a {kind!r} source"
    interval = response.heartbeat_interval.ToTimedelta().total_seconds()
    return RunSpec(
        run_id=response.run.id,
        attempt=response.run.attempt,
        flow_name=response.run.flow_name,
        entrypoint=response.entrypoint,
        source=source,
        source_problem=problem,
        parameters_json=response.run.parameters_json,
        heartbeat_interval=interval if interval > 0 else DEFAULT_HEARTBEAT_INTERVAL,
        deployment_name=response.run.deployment_name,
        scheduled_time=(
            response.run.scheduled_time.ToDatetime(tzinfo=UTC)
            if response.run.HasField("scheduled_time")
            else None
        ),
    )
