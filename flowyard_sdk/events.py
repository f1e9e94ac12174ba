"""What happens to task runs, told to whoever listens.

Every change of a task run (an attempt starts, fails and will be retried, the run completes,
fails for good or is cancelled) becomes a :class:`TaskRunChange` handed to the listener. The
default listener writes it to the ``flowyard.tasks`` logger, so a flow run locally shows its
retries; the engine installs its own (:func:`set_listener`), which writes each change into the
run's log lines with the change attached, for the control plane to store as task runs.
"""

from __future__ import annotations

import enum
import logging
import reprlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = [
    "TaskRunChange",
    "TaskRunState",
    "describe_inputs",
    "listening",
    "log_change",
    "set_listener",
    "tell",
]

log = logging.getLogger("flowyard.tasks")

INPUTS_LIMIT = 500
"""Characters of a task run's arguments kept in its record."""


class TaskRunState(enum.Enum):
    """Where a task run stands (names match ``flowyard.v1.TaskRunState``)."""

    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True, slots=True)
class TaskRunChange:
    """One change of a task run."""

    task_run_id: str
    name: str
    task_name: str
    state: TaskRunState
    attempt: int
    attempts: int
    """How many attempts it may make (retries + 1)."""
    error_type: str = ""
    error_message: str = ""
    retry_delay: float = 0.0
    duration: float = 0.0
    """Seconds since the task run started (COMPLETED, FAILED, CANCELLED)."""
    inputs: str = ""
    tags: frozenset[str] = frozenset()

    @property
    def text(self) -> str:
        """The log line that announces the change."""
        error = (
            f"{self.error_type}: {self.error_message}" if self.error_message else self.error_type
        )
        match self.state:
            case TaskRunState.RUNNING if self.attempt == 1:
                return f"Task run {self.name} started"
            case TaskRunState.RUNNING:
                return f"Task run {self.name} started attempt {self.attempt} of {self.attempts}"
            case TaskRunState.RETRYING:
                return (
                    f"Task run {self.name} failed (attempt {self.attempt} of {self.attempts}): "
                    f"{error}; retrying in {self.retry_delay:g} s"
                )
            case TaskRunState.COMPLETED:
                return f"Task run {self.name} completed in {self.duration:.3f} s"
            case TaskRunState.FAILED:
                return (
                    f"Task run {self.name} failed (attempt {self.attempt} of {self.attempts}): "
                    f"{error}"
                )
            case TaskRunState.CANCELLED:
                return f"Task run {self.name} cancelled: {self.error_message or 'its flow is stopping'}"

    @property
    def level(self) -> int:
        """The log level of :attr:`text`."""
        return _LEVELS[self.state]


_LEVELS = {
    TaskRunState.RUNNING: logging.DEBUG,
    TaskRunState.RETRYING: logging.WARNING,
    TaskRunState.COMPLETED: logging.DEBUG,
    TaskRunState.FAILED: logging.ERROR,
    TaskRunState.CANCELLED: logging.WARNING,
}


def log_change(change: TaskRunChange) -> None:
    """The default listener: the change as a record of the ``flowyard.tasks`` logger."""
    log.log(change.level, change.text)


Listener = Callable[[TaskRunChange], None]
_listener: Listener = log_change
_wants_inputs = False


def set_listener(listener: Listener | None, *, wants_inputs: bool = False) -> None:
    """Send changes to ``listener`` (None: back to the logger); ``wants_inputs`` asks for a
    bounded repr of each task run's arguments, which costs a little per call."""
    global _listener, _wants_inputs
    _listener = listener or log_change
    _wants_inputs = wants_inputs and listener is not None


@contextmanager
def listening(listener: Listener, *, wants_inputs: bool = False) -> Iterator[None]:
    """Send changes to ``listener`` for the duration of the block."""
    set_listener(listener, wants_inputs=wants_inputs)
    try:
        yield
    finally:
        set_listener(None)


def tell(change: TaskRunChange) -> None:
    """Hand ``change`` to the listener; a listener that fails never fails the task."""
    try:
        _listener(change)
    except Exception:  # reporting is best effort, for the flow's sake
        log.exception("could not report %s", change.text)


def wants_inputs() -> bool:
    """Whether the listener wants task runs' arguments."""
    return _wants_inputs


_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 10


def describe_inputs(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """A short repr of a call's arguments, never longer than 500 characters."""
    try:
        parts = [_repr.repr(value) for value in args]
        parts += [f"{key}={_repr.repr(value)}" for key, value in kwargs.items()]
    except Exception as exc:  # a broken __repr__ must not fail the task
        return f"<arguments could not be shown: {type(exc).__name__}>"
    text = ", ".join(parts)
    return text if len(text) <= INPUTS_LIMIT else text[: INPUTS_LIMIT - 1] + "…"
