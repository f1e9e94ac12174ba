"""The run state machine: which transitions are allowed, and for whom.

Only the control plane changes a run's state, by compare-and-set on the run's version; this
module is the pure part of that: given the current state and a proposal from an actor, it says
whether the transition is allowed and, if not, why. It knows nothing of the database.

    SCHEDULED(Scheduled|Late|AwaitingRetry|AwaitingConcurrencySlot)
      -> PENDING(Assigned -> Submitted -> InfrastructurePending)
      -> RUNNING -> COMPLETED | FAILED | CRASHED
    any non-terminal -> CANCELLING -> CANCELLED      (SCHEDULED -> CANCELLED directly)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class StateType(enum.StrEnum):
    """Coarse run states, as stored (the values) and as in the API (``STATE_TYPE_<value>``)."""

    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CRASHED = "CRASHED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        """Whether a run in this state can never change again."""
        return self in TERMINAL


TERMINAL = frozenset(
    {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}
)

#: Non-terminal states in which the run holds infrastructure or a claim on it.
ACTIVE = frozenset({StateType.PENDING, StateType.RUNNING, StateType.CANCELLING})

DEFAULT_NAMES: dict[StateType, str] = {
    StateType.SCHEDULED: "Scheduled",
    StateType.PENDING: "Pending",
    StateType.RUNNING: "Running",
    StateType.COMPLETED: "Completed",
    StateType.FAILED: "Failed",
    StateType.CRASHED: "Crashed",
    StateType.CANCELLING: "Cancelling",
    StateType.CANCELLED: "Cancelled",
}

# Sub-state names the control plane itself uses.
ASSIGNED = "Assigned"
SUBMITTED = "Submitted"
INFRASTRUCTURE_PENDING = "InfrastructurePending"
LATE = "Late"
AWAITING_RETRY = "AwaitingRetry"
AWAITING_CONCURRENCY_SLOT = "AwaitingConcurrencySlot"


class Actor(enum.Enum):
    """Who proposes a transition."""

    USER = "user"  # ControlPlane API (the CLI, generated clients)
    SERVER = "server"  # the control plane's own dispatcher and reapers
    AGENT = "agent"  # the agent session holding the run
    ENGINE = "engine"  # the engine of the run's current attempt


@dataclass(frozen=True)
class State:
    """A state to store: type, sub-state name and message."""

    type: StateType
    name: str = ""
    message: str = ""

    @property
    def display_name(self) -> str:
        """The sub-state name, or the type's default name."""
        return self.name or DEFAULT_NAMES[self.type]


_S = StateType
_ALLOWED: dict[Actor, dict[StateType, frozenset[StateType]]] = {
    Actor.USER: {
        _S.SCHEDULED: frozenset({_S.CANCELLED}),
        # A PENDING run with no infrastructure yet is cancelled at once.
        _S.PENDING: frozenset({_S.CANCELLING, _S.CANCELLED}),
        _S.RUNNING: frozenset({_S.CANCELLING}),
    },
    Actor.SERVER: {
        # Dispatch claims a run or holds it back (AwaitingConcurrencySlot, or CANCELLED by a
        # deployment's CANCEL_NEW collision strategy); the reaper marks it Late.
        _S.SCHEDULED: frozenset({_S.SCHEDULED, _S.PENDING, _S.CANCELLED}),
        # An expired assignment is handed back, a failed attempt with retries left is
        # scheduled again (AwaitingRetry), an orphaned submission crashes.
        _S.PENDING: frozenset({_S.SCHEDULED, _S.CRASHED}),
        # A failed attempt with retries left; an engine gone silent.
        _S.RUNNING: frozenset({_S.SCHEDULED, _S.CRASHED}),
        # An expired lease or a cancel that timed out: the run is CANCELLED for good.
        _S.CANCELLING: frozenset({_S.CANCELLED}),
    },
    Actor.AGENT: {
        # Submitted / InfrastructurePending are PENDING sub-states.
        _S.PENDING: frozenset({_S.PENDING, _S.CRASHED}),
        _S.RUNNING: frozenset({_S.CRASHED}),
        _S.CANCELLING: frozenset({_S.CANCELLED}),
    },
    Actor.ENGINE: {
        _S.PENDING: frozenset({_S.RUNNING, _S.FAILED}),
        _S.RUNNING: frozenset({_S.COMPLETED, _S.FAILED}),
        # The flow may finish on its own before the cancel reaches it: its outcome stands.
        _S.CANCELLING: frozenset({_S.CANCELLED, _S.COMPLETED, _S.FAILED}),
    },
}


class IllegalTransition(RuntimeError):
    """Code of the control plane tried a transition its actor may not make: a bug, refused
    before anything is stored. (Proposals from outside are checked with ``rejection`` and
    answered with FAILED_PRECONDITION before they get this far.)"""


def rejection(current: StateType, proposed: StateType, actor: Actor) -> str | None:
    """Why ``actor`` may not move a run from ``current`` to ``proposed``; None if it may."""
    if current.is_terminal:
        return f"the run is already {current.value} and can no longer change"
    allowed = _ALLOWED[actor].get(current, frozenset())
    if proposed in allowed:
        return None
    return f"{actor.value} cannot move a run from {current.value} to {proposed.value}"


def cancel_target(current: StateType, has_infrastructure: bool) -> StateType:
    """The state a user's cancel moves a run to.

    A run that holds no infrastructure (not yet dispatched, or assigned to an agent that is
    gone before submitting) is CANCELLED at once; otherwise it is CANCELLING until the
    infrastructure is torn down.
    """
    if current is StateType.SCHEDULED or not has_infrastructure:
        return StateType.CANCELLED
    return StateType.CANCELLING


def crash_target(current: StateType) -> StateType:
    """The state a run goes to when its infrastructure ends before the engine finished.

    A run being cancelled whose infrastructure is gone has simply been cancelled.
    """
    return StateType.CANCELLED if current is StateType.CANCELLING else StateType.CRASHED
