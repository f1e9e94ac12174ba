"""The engine's side of child runs (``flowyard_sdk.children``): subflow runs and
``run_deployment``, through ``EngineService`` with the attempt's token.

Every call carries a key made here, once per call, so that a call retried after a transient
error returns the child the first try created rather than a second one, and names the subflow
it is made from (if any), which becomes the child's parent.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from engine.capture import Capture
from engine.errors import ReportError
from engine.flow import completed, failed
from engine.reporter import Reporter
from engine.settings import EngineSettings
from engine.wire import state_type_from_proto, state_type_to_proto
from flowyard.v1 import engine_pb2
from flowyard_sdk.children import ChildRun, ChildRunError, current_subflow_run

__all__ = ["EngineChildRuns"]


class EngineChildRuns:
    """A :class:`~flowyard_sdk.children.ChildRunHost` for the attempt the engine runs."""

    def __init__(self, settings: EngineSettings, reporter: Reporter, capture: Capture) -> None:
        self._run_id = settings.run_id
        self._attempt = settings.attempt
        self._reporter = reporter
        self._capture = capture

    def start_subflow(self, name: str, parameters: Mapping[str, Any]) -> str:
        """Record a subflow run (RUNNING) under this attempt; its id."""
        request = engine_pb2.StartChildRunRequest(
            run_id=self._run_id,
            attempt=self._attempt,
            key=f"subflow:{uuid.uuid4().hex}",
            subflow_name=name,
            parameters_json=json.dumps(dict(parameters)),
            within_run_id=current_subflow_run(),
        )
        run = self._call("StartChildRun", request, f"subflow {name!r}").run
        self._capture.system(f"Subflow {name} is run {run.id}")
        return str(run.id)

    def end_subflow(self, run_id: str, error: BaseException | None, result: Any) -> None:
        """Record a subflow's end once its lines are acknowledged (a follower of the
        subflow's logs stops at its end and must have seen them all)."""
        self._capture.flush_partial()
        self._reporter.flush()
        outcome = completed(result) if error is None else failed(error)
        request = engine_pb2.EndSubflowRequest(
            run_id=self._run_id,
            attempt=self._attempt,
            subflow_run_id=run_id,
            type=state_type_to_proto(outcome.state),
            message=outcome.message,
            result_summary=outcome.result_summary,
        )
        self._call("EndSubflow", request, f"the end of subflow run {run_id}")

    def start_deployment_run(
        self, name: str, parameters: Mapping[str, Any], cancel_with_parent: bool
    ) -> ChildRun:
        """Create a run of deployment ``name`` as a child of this run."""
        try:
            parameters_json = json.dumps(dict(parameters), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ChildRunError(
                f"run_deployment({name!r}): parameters must be JSON values: {exc}"
            ) from None
        request = engine_pb2.StartChildRunRequest(
            run_id=self._run_id,
            attempt=self._attempt,
            key=f"deployment:{uuid.uuid4().hex}",
            deployment_name=name,
            parameters_json=parameters_json,
            cancel_with_parent=cancel_with_parent,
            within_run_id=current_subflow_run(),
        )
        run = self._call("StartChildRun", request, f"a run of deployment {name!r}").run
        self._capture.system(f"Started run {run.id} of deployment {name}")
        return _child(run)

    def wait(self, run_id: str, timeout: float | None) -> ChildRun:
        """Follow a child run (pushed by the control plane) until it ends or ``timeout``."""
        request = engine_pb2.WatchChildRunRequest(
            run_id=self._run_id, attempt=self._attempt, child_run_id=run_id
        )
        last: list[ChildRun] = []

        def seen(run: Any) -> bool:
            last[:] = [_child(run)]
            return last[0].is_final

        try:
            self._reporter.watch(request, seen, timeout)
        except ReportError as exc:
            raise ChildRunError(f"could not follow run {run_id}: {exc}") from None
        if not last:
            raise ChildRunError(f"run {run_id} was not seen within {timeout:g} s")
        child = last[0]
        level = logging.INFO if child.ok or not child.is_final else logging.WARNING
        self._capture.system(
            f"Run {run_id} of deployment {child.deployment_name} is {child.state}", level
        )
        return child

    def _call(self, method: str, request: Any, what: str) -> Any:
        try:
            return self._reporter.call(method, request)
        except ReportError as exc:
            raise ChildRunError(f"could not record {what}: {exc}") from None


def _child(run: Any) -> ChildRun:
    return ChildRun(
        id=run.id,
        deployment_name=run.deployment_name,
        state=state_type_from_proto(run.state.type).value,
        state_name=run.state.name,
        message=run.state.message,
        result_summary=run.result_summary,
    )
