"""The interface every runtime implements: submit, cancel, observe, report exits.

A runtime knows how to create and tear down a run's infrastructure on one kind of platform
(local processes, Kubernetes Jobs). It sees plain dataclasses only, never protobuf, and it
never talks to the control plane: it reports the end of an attempt's infrastructure through
the :data:`ExitCallback` given to :meth:`Runtime.start`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import ClassVar

from agent.models import Assignment, InfraExit, RunKey, RunningInfra

__all__ = ["ExitCallback", "Runtime"]

ExitCallback = Callable[[InfraExit], None]
"""Called once per attempt when its infrastructure has ended (on its own or cancelled)."""


class Runtime(abc.ABC):
    """Creates, watches and tears down the infrastructure of run attempts."""

    name: ClassVar[str]
    """The value sent as ``Hello.runtime``."""

    @abc.abstractmethod
    async def start(self, on_exit: ExitCallback) -> None:
        """Prepare the runtime; afterwards every ended attempt is passed to ``on_exit``."""

    @abc.abstractmethod
    async def submit(self, assignment: Assignment) -> str:
        """Create the attempt's infrastructure and return its infrastructure id.

        Submitting an attempt that is already running returns the existing id and creates
        nothing. Raises :class:`~agent.errors.SubmitError` with a reason for a person.
        """

    @abc.abstractmethod
    async def cancel(self, key: RunKey) -> bool:
        """Tear down the attempt's infrastructure and return once it is gone.

        The exit is still passed to the exit callback. Returns False, at once, if the
        runtime has no infrastructure for ``key``.
        """

    @abc.abstractmethod
    def observe(self) -> list[RunningInfra]:
        """The attempts whose infrastructure is still running."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop watching. Running infrastructure is left alone: it reports on its own."""
