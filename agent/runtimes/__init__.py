"""Runtimes: where the agent creates run infrastructure.

``process`` (local engine processes) is implemented; ``kubernetes`` is designed behind the
same :class:`~agent.runtimes.base.Runtime` interface and will be added later.
"""

from __future__ import annotations

from agent.errors import RuntimeNotAvailable
from agent.runtimes.base import ExitCallback, Runtime
from agent.runtimes.process import ProcessRuntime
from agent.settings import Settings

__all__ = ["ExitCallback", "ProcessRuntime", "Runtime", "make_runtime"]


def make_runtime(settings: Settings) -> Runtime:
    """The runtime ``settings.agent.runtime`` names; :class:`RuntimeNotAvailable` if none."""
    if settings.agent.runtime == ProcessRuntime.name:
        return ProcessRuntime(settings.process, server=settings.connection.server)
    raise RuntimeNotAvailable(
        f"the {settings.agent.runtime!r} runtime is not available yet; use --runtime process"
    )
