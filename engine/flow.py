"""Preparing and calling the flow function: fetch, load, bind, call, and judge the result.

Nothing here talks to the control plane: the runner reports what these functions return.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from engine.entrypoints import parse_entrypoint
from engine.errors import ParameterError, SourceError
from engine.loader import load_entrypoint
from engine.model import RunSpec, StateType
from engine.params import BoundCall, bind_parameters
from engine.storage import FetchedCode, fetch_code
from engine.tracebacks import describe_exception, format_user_traceback
from flowyard_sdk.context import FlowRunInfo
from flowyard_sdk.flows import run_entrypoint

__all__ = [
    "Outcome",
    "PreparedFlow",
    "call_flow",
    "fetch_flow_code",
    "prepare_flow",
    "summarize_result",
]

RESULT_SUMMARY_LIMIT = 200


@dataclass(frozen=True)
class PreparedFlow:
    """A flow function ready to be called."""

    source_dir: Path
    function: Callable[..., Any]
    call: BoundCall
    run: FlowRunInfo
    """What ``flowyard.runtime.flow_run`` tells the flow."""


@dataclass(frozen=True)
class Outcome:
    """How the flow ended, as the terminal state to propose."""

    state: StateType
    message: str = ""
    result_summary: str = ""


def fetch_flow_code(spec: RunSpec, workdir: Path, announce: Callable[[str], None]) -> FetchedCode:
    """Fetch the run's code into ``workdir``.

    Raises:
        SourceError: with the message to store with the FAILED state.
    """
    if spec.source is None:
        raise SourceError(spec.source_problem)
    fetched = fetch_code(spec.source, workdir)
    revision = f" (revision {fetched.revision})" if fetched.revision else ""
    announce(f"Fetched code from {spec.source.describe()}{revision}")
    return fetched


def prepare_flow(spec: RunSpec, fetched: FetchedCode) -> PreparedFlow:
    """Enter the code's directory, load the entrypoint and bind the parameters.

    The working directory becomes the source directory and the source directory goes first
    on ``sys.path``, for the rest of the process: the flow's own imports rely on both.

    Raises:
        FlowSetupError: with the message to store with the FAILED state.
    """
    source_dir = fetched.directory
    os.chdir(source_dir)
    sys.path.insert(0, str(source_dir))
    entrypoint = parse_entrypoint(spec.entrypoint)
    function = load_entrypoint(entrypoint, source_dir)
    parameters = _parameters(spec)
    run = FlowRunInfo(
        id=spec.run_id,
        attempt=spec.attempt,
        flow_name=spec.flow_name or None,
        deployment_name=spec.deployment_name or None,
        scheduled_time=spec.scheduled_time,
        parameters=MappingProxyType(parameters),
    )
    return PreparedFlow(source_dir, function, bind_parameters(function, parameters), run)


def _parameters(spec: RunSpec) -> dict[str, Any]:
    if not spec.parameters_json.strip():
        return {}
    try:
        parameters = json.loads(spec.parameters_json)
    except json.JSONDecodeError as exc:
        raise ParameterError(f"the run's parameters are not valid JSON: {exc}") from exc
    if not isinstance(parameters, dict):
        raise ParameterError(
            f"the run's parameters must be a JSON object, not {type(parameters).__name__}"
        )
    return parameters


def call_flow(flow: PreparedFlow) -> Any:
    """Call the function in this thread as the run's flow (``flowyard.runtime`` knows the run;
    its tasks' threads are waited for); coroutine functions run in a new event loop."""
    return run_entrypoint(flow.function, flow.call.args, flow.call.kwargs, flow.run)


def completed(result: Any) -> Outcome:
    """The outcome of a flow that returned ``result``."""
    return Outcome(StateType.COMPLETED, result_summary=summarize_result(result))


def failed(exc: BaseException) -> Outcome:
    """The outcome of a flow that raised ``exc``: its description and the user's traceback."""
    return Outcome(
        StateType.FAILED,
        message=f"{describe_exception(exc)}\n\n{format_user_traceback(exc)}",
    )


def summarize_result(result: Any) -> str:
    """``repr(result)``, cut to 200 characters (a failing ``__repr__`` is described instead)."""
    try:
        text = repr(result)
    except Exception as exc:
        text = f"<{type(result).__name__} object; repr() raised {describe_exception(exc)}>"
    if len(text) > RESULT_SUMMARY_LIMIT:
        text = text[: RESULT_SUMMARY_LIMIT - 1] + "…"
    return text
