"""Flowyard for flow authors: ``from flowyard import flow, task, runtime``.

The generated API (messages and gRPC stubs) is ``flowyard.v1``; the SDK itself lives in
``flowyard_sdk`` and is re-exported here.
"""

from flowyard_sdk import (
    AsyncTask,
    Flow,
    FlowRunInfo,
    Task,
    TaskCancelledError,
    TaskFuture,
    TaskFutureList,
    TaskRunInfo,
    TaskTimeoutError,
    UpstreamTaskFailed,
    flow,
    runtime,
    task,
    unmapped,
)

__all__ = [
    "AsyncTask",
    "Flow",
    "FlowRunInfo",
    "Task",
    "TaskCancelledError",
    "TaskFuture",
    "TaskFutureList",
    "TaskRunInfo",
    "TaskTimeoutError",
    "UpstreamTaskFailed",
    "flow",
    "runtime",
    "task",
    "unmapped",
]
