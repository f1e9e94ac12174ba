"""The engine's exceptions.

Everything the engine raises on purpose derives from :class:`EngineError`; what it does with
each branch decides the process's exit code::

    EngineError
    ├── SettingsError            FLOWYARD_* environment or arguments unusable     → exit 3
    ├── ReportError              the control plane could not be told anything      → exit 3
    │   ├── ControlPlaneUnavailable   unreachable past the deadline
    │   ├── ControlPlaneRejected      auth errors, protocol violations
    │   └── RunNotStartable           stale attempt, finished run, RUNNING refused
    └── FlowSetupError           the flow could not be fetched, loaded or bound    → FAILED, exit 1
        ├── SourceError               the code's source is missing or unusable
        ├── EntrypointError (ValueError)
        │   ├── InvalidEntrypoint     the entrypoint text is malformed
        │   ├── EntrypointNotFound    no such file, module or function; not callable
        │   └── EntrypointImportError the module failed to import (syntax error, exception)
        └── ParameterError (ValueError)  the parameters do not fit the signature

:class:`FlowCancelled` is deliberately a ``BaseException``: it is raised inside the user's
flow (from a signal handler) and must not be swallowed by the flow's own ``except Exception``.

A :class:`FlowSetupError`'s ``str()`` is the complete message stored with the FAILED state, so
it is written for the person who deployed the flow: it names what is missing and carries a
traceback only when the user's own code raised (:class:`EntrypointImportError`).
"""

from __future__ import annotations

from flowyard_common import entrypoints


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class SettingsError(EngineError):
    """The engine's environment or command line is missing or inconsistent."""


class ReportError(EngineError):
    """The engine could not report to the control plane; the run cannot be driven."""


class ControlPlaneUnavailable(ReportError):
    """The control plane stayed unreachable past a deadline."""


class ControlPlaneRejected(ReportError):
    """The control plane refused the engine (bad token, invalid request, protocol error)."""


class RunNotStartable(ReportError):
    """The attempt is not the run's current one, the run is finished, or RUNNING was refused."""


class FlowSetupError(EngineError):
    """The flow could not be prepared; its message is stored with the FAILED state."""


class SourceError(FlowSetupError):
    """The flow's code could not be fetched from its source."""


class EntrypointError(FlowSetupError, ValueError):
    """The entrypoint does not lead to a callable function."""


class InvalidEntrypoint(EntrypointError, entrypoints.InvalidEntrypoint):
    """The entrypoint text is not ``path/to/file.py:fn`` or ``package.module:fn``."""


class EntrypointNotFound(EntrypointError):
    """The entrypoint's file, module or function does not exist, or is not callable."""


class EntrypointImportError(EntrypointError):
    """The entrypoint's module raised while being imported; the message has its traceback."""


class ParameterError(FlowSetupError, ValueError):
    """The run's parameters do not match the flow function's signature."""


class FlowCancelled(BaseException):
    """Raised in the main thread when the run is cancelled (CancelFlow or SIGTERM)."""

    def __init__(self, reason: str = "cancelled") -> None:
        super().__init__(reason)
        self.reason = reason
