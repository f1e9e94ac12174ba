"""The interface every runtime implements: submit, cancel, observe, report events.

A runtime knows how to create and tear down a run's infrastructure on one kind of platform
(local processes, Kubernetes Jobs). It sees plain dataclasses only, never protobuf, and it
never talks to the control plane: it reports what happens to an attempt's infrastructure
through the :data:`EventCallback` given to :meth:`Runtime.start`.
"""

from __future__ import annotations

import abc
from typing import ClassVar

from agent.models import Assignment, EventCallback, RunKey, RunningInfra

__all__ = ["EventCallback", "Runtime"]


class Runtime(abc.ABC):
    """Creates, watches and tears down the infrastructure of run attempts."""

    name: ClassVar[str]
    """The value sent as ``Hello.runtime``."""

    @abc.abstractmethod
    async def start(self, on_event: EventCallback) -> None:
        """Prepare the runtime; afterwards what happens to attempts is passed to ``on_event``.

        When this returns, :meth:`observe` knows the infrastructure that already exists.
        """

    @abc.abstractmethod
    async def submit(self, assignment: Assignment) -> str:
        """Create the attempt's infrastructure and return its infrastructure id.

        Submitting an attempt whose infrastructure already exists returns the existing id
        and creates nothing. Raises :class:`~agent.errors.SubmitError` with a reason for a
        person.
        """

    @abc.abstractmethod
    async def cancel(self, key: RunKey) -> bool:
        """Tear down the attempt's infrastructure and return once it is gone.

        The ending event of an attempt the runtime was reporting on is still passed to the
        event callback. Returns False if there was no infrastructure for ``key``.
        """

    @abc.abstractmethod
    def observe(self) -> list[RunningInfra]:
        """The attempts whose infrastructure is still running.

        The caller holds them from now on: the runtime reports their events, including
        those of infrastructure it did not create itself (found after a restart).
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop watching. Running infrastructure is left alone: it reports on its own."""
