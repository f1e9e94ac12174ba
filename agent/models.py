"""Plain data the agent passes around: what to run, what is running, what happened to it.

These are what runtimes see; protobuf messages never get past the session module.
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

__all__ = [
    "ENDING_KINDS",
    "Assignment",
    "EventCallback",
    "InfraEvent",
    "InfraEventKind",
    "InfraExit",
    "RunKey",
    "RunningInfra",
    "SecretEnv",
]


@dataclass(frozen=True, order=True)
class RunKey:
    """One attempt of one run: the unit the agent holds, submits and cancels."""

    run_id: str
    attempt: int

    def __str__(self) -> str:
        return f"{self.run_id}#{self.attempt}"


@dataclass(frozen=True)
class SecretEnv:
    """An environment variable whose value comes from one key of a Kubernetes Secret."""

    name: str
    secret_name: str
    secret_key: str


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
    secret_env: tuple[SecretEnv, ...] = ()
    """Environment variables the engine reads from Kubernetes Secrets (git credentials)."""


@dataclass(frozen=True)
class RunningInfra:
    """Infrastructure a runtime currently has for an attempt."""

    key: RunKey
    infrastructure_id: str


class InfraEventKind(enum.Enum):
    """What a runtime saw happen to an attempt's infrastructure."""

    PENDING = "pending"
    UNSCHEDULABLE = "unschedulable"
    IMAGE_PULL_ERROR = "image pull error"
    CRASH_LOOP = "crash loop"
    OOM_KILLED = "OOM killed"
    EVICTED = "evicted"
    FAILED = "failed"
    SUCCEEDED = "succeeded"
    DELETED = "deleted"


ENDING_KINDS = frozenset(
    {
        InfraEventKind.OOM_KILLED,
        InfraEventKind.EVICTED,
        InfraEventKind.FAILED,
        InfraEventKind.SUCCEEDED,
        InfraEventKind.DELETED,
    }
)
"""Kinds after which the infrastructure no longer runs the engine."""


@dataclass(frozen=True)
class InfraEvent:
    """Something a runtime observed about an attempt's infrastructure.

    An event :attr:`ends` the attempt when its kind is one of :data:`ENDING_KINDS` or the
    runtime gave up on it (and tore the infrastructure down); a runtime reports exactly one
    ending event per attempt and any number of other events before it.
    """

    key: RunKey
    infrastructure_id: str
    kind: InfraEventKind
    observe_time: datetime
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    log_tail: tuple[str, ...] = ()
    gave_up: bool = False

    @property
    def ends(self) -> bool:
        """Whether the attempt's infrastructure is over after this event."""
        return self.gave_up or self.kind in ENDING_KINDS


EventCallback = Callable[[InfraEvent], None]
"""Where a runtime reports what happens to an attempt; exactly one ending event per attempt."""


@dataclass(frozen=True)
class InfraExit:
    """The exit of a local engine process, as the process runtime observed it.

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

    def to_event(self) -> InfraEvent:
        """The ending event this exit stands for: succeeded on exit 0, failed otherwise."""
        return InfraEvent(
            key=self.key,
            infrastructure_id=self.infrastructure_id,
            kind=InfraEventKind.SUCCEEDED if self.succeeded else InfraEventKind.FAILED,
            observe_time=self.observe_time,
            reason=self.reason,
            message=self.message,
            exit_code=self.exit_code,
            log_tail=self.log_tail,
        )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
