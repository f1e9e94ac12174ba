"""Child runs: subflows recorded as runs, and ``run_deployment``.

Inside a run the engine lends the SDK a :class:`ChildRunHost` (:func:`hosting`), through which
a ``@flow`` called inside another flow is recorded as a subflow run and ``run_deployment``
starts a run of a deployment; both become children of the calling run. Outside a run there is
no host: a subflow runs locally with nothing recorded, and ``run_deployment`` raises, since
only the control plane can start a deployment's run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "ChildRun",
    "ChildRunError",
    "ChildRunHost",
    "current_host",
    "current_subflow_run",
    "hosting",
    "in_subflow",
    "jsonable",
    "run_deployment",
]

#: Characters of a parameter's repr recorded when it is not JSON.
MAX_REPR_CHARS = 200


class ChildRunError(RuntimeError):
    """A child run could not be started or followed (unknown deployment, parameters its
    schema refuses, the control plane unreachable); the message says which."""


@dataclass(frozen=True)
class ChildRun:
    """A child run as last seen: what ``run_deployment`` returns."""

    id: str
    deployment_name: str
    state: str
    """The state type: ``SCHEDULED``, ``PENDING``, ``RUNNING``, ``COMPLETED``, ``FAILED``,
    ``CRASHED``, ``CANCELLING`` or ``CANCELLED``."""
    state_name: str = ""
    message: str = ""
    result_summary: str = ""

    @property
    def is_final(self) -> bool:
        """Whether the run has ended (it can no longer change)."""
        return self.state in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}

    @property
    def ok(self) -> bool:
        """Whether the run COMPLETED."""
        return self.state == "COMPLETED"


class ChildRunHost(Protocol):
    """What the engine provides to start and follow child runs of the current run."""

    def start_subflow(self, name: str, parameters: Mapping[str, Any]) -> str:
        """Record a subflow run (RUNNING) under the current run; its id."""

    def end_subflow(self, run_id: str, error: BaseException | None, result: Any) -> None:
        """Record the end of a subflow run: COMPLETED with ``result`` or FAILED with ``error``."""

    def start_deployment_run(
        self, name: str, parameters: Mapping[str, Any], cancel_with_parent: bool
    ) -> ChildRun:
        """Create a run of deployment ``name`` as a child of the current run."""

    def wait(self, run_id: str, timeout: float | None) -> ChildRun:
        """Wait for a child run to end (or ``timeout`` to pass) and return it as it is."""


_host: ContextVar[ChildRunHost | None] = ContextVar("flowyard_child_run_host", default=None)
_subflow_run: ContextVar[str] = ContextVar("flowyard_subflow_run", default="")


def current_host() -> ChildRunHost | None:
    """The host of the current run, None outside a run (or when run without a server)."""
    return _host.get()


@contextmanager
def hosting(host: ChildRunHost) -> Iterator[None]:
    """Make ``host`` the one child runs of the current run go through."""
    token = _host.set(host)
    try:
        yield
    finally:
        _host.reset(token)


def current_subflow_run() -> str:
    """The id of the subflow run the caller is in, "" outside a recorded subflow."""
    return _subflow_run.get()


@contextmanager
def in_subflow(run_id: str) -> Iterator[None]:
    """Mark the code inside as the subflow run ``run_id``'s (its log lines are its own)."""
    token = _subflow_run.set(run_id)
    try:
        yield
    finally:
        _subflow_run.reset(token)


def jsonable(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as JSON can hold them: a value JSON cannot encode is recorded as its
    (bounded) repr."""
    out: dict[str, Any] = {}
    for name, value in parameters.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            text = repr(value)
            value = text if len(text) <= MAX_REPR_CHARS else text[: MAX_REPR_CHARS - 3] + "..."
        out[name] = value
    return out


def run_deployment(
    name: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    wait: bool = True,
    timeout: float | None = None,
) -> ChildRun:
    """Start a run of deployment ``name`` as a child of the current run.

    The run goes through the control plane like any other (the deployment's pool, queue,
    schema and limits apply). With ``wait=True`` this returns once the child has ended (or
    ``timeout`` seconds have passed: check :attr:`ChildRun.is_final`), and cancelling the
    parent cancels the child; with ``wait=False`` it returns the new run at once and the
    child lives on its own.

    Raises:
        ChildRunError: outside a run, an unknown deployment, parameters its schema refuses.
    """
    host = current_host()
    if host is None:
        raise ChildRunError(
            f"run_deployment({name!r}) starts a run through the control plane: call it from "
            "a flow that runs as a Flowyard run (flowyard run, a schedule), not a plain script"
        )
    if timeout is not None and timeout < 0:
        raise ValueError(f"run_deployment: timeout must not be negative, got {timeout}")
    child = host.start_deployment_run(name, dict(parameters or {}), cancel_with_parent=wait)
    if not wait:
        return child
    return host.wait(child.id, timeout)
