"""Plain data the agent passes around: what to run, what is running, how it ended.

These are what runtimes see; protobuf messages never get past the session module.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["Assignment", "InfraExit", "RunKey", "RunningInfra"]


@dataclass(frozen=True, order=True)
class RunKey:
    """One attempt of one run: the unit the agent holds, submits and cancels."""

    run_id: str
    attempt: int

    def __str__(self) -> str:
        return f"{self.run_id}#{self.attempt}"


@dataclass(frozen=True)
class Assignment:
    """An attempt the control plane handed to this agent, with everything needed to start it."""

    key: RunKey
    deployment_name: str
    flow_name: str
    base_job_template_json: str
    job_variables_json: str
    # Kept out of repr so that logging an assignment can never leak the token.
    engine_token: str = field(repr=False)
    lease_deadline: datetime | None = None


@dataclass(frozen=True)
class RunningInfra:
    """Infrastructure a runtime currently has for an attempt."""

    key: RunKey
    infrastructure_id: str


@dataclass(frozen=True)
class InfraExit:
    """The end of a run's infrastructure, as the runtime observed it.

    ``exit_code`` follows the shell's convention: ``128 + N`` when signal N ended the
    process, in which case ``signal_number`` is N.
    """

    key: RunKey
    infrastructure_id: str
    exit_code: int
    observe_time: datetime
    log_tail: tuple[str, ...] = ()
    signal_number: int | None = None

    @property
    def succeeded(self) -> bool:
        """Whether the infrastructure ended successfully (exit status 0)."""
        return self.exit_code == 0

    @property
    def reason(self) -> str:
        """A short machine-readable reason."""
        if self.succeeded:
            return "Completed"
        return "Signaled" if self.signal_number is not None else "Error"

    @property
    def message(self) -> str:
        """A sentence for the run's history."""
        if self.signal_number is not None:
            return f"the engine was killed by {_signal_name(self.signal_number)}"
        return f"the engine exited with code {self.exit_code}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
