"""The flow author's SDK, imported as ``flowyard``: tasks, flows, child runs and the runtime
context.

It needs nothing but the standard library, so importing it costs the engine next to nothing
and a flow stays runnable (and testable) with no server.
"""

from flowyard_sdk.children import ChildRun, ChildRunError, run_deployment
from flowyard_sdk.context import FlowRunInfo, TaskRunInfo, runtime
from flowyard_sdk.flows import Flow, flow
from flowyard_sdk.futures import TaskFuture, TaskFutureList, UpstreamTaskFailed
from flowyard_sdk.tasks import (
    AsyncTask,
    Task,
    TaskCancelledError,
    TaskTimeoutError,
    task,
    unmapped,
)

__all__ = [
    "AsyncTask",
    "ChildRun",
    "ChildRunError",
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
    "run_deployment",
    "runtime",
    "task",
    "unmapped",
]
