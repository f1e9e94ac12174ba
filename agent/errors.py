"""The agent's exceptions.

One hierarchy, rooted at :class:`AgentError`::

    AgentError
    ├── ConfigurationError        settings that cannot work; the agent exits with status 2
    ├── SessionError              something ended a Connect session
    │   ├── StreamBroken          transient: the agent reconnects with backoff
    │   └── SessionRejected       the server refused the agent; the agent exits with status 2
    ├── SubmitError               a runtime could not create a run's infrastructure
    └── KubernetesError           a Kubernetes API call failed (HTTP status, reason, message)

Only :class:`SubmitError` crosses the runtime boundary; its message is sent to the control
plane as ``SubmitFailed.reason``, so it is written for the person reading the run's state.
:class:`KubernetesError` stays inside the Kubernetes runtime, which retries it, turns it into
a :class:`SubmitError`, or logs it.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base class of every error the agent raises on purpose."""


class ConfigurationError(AgentError):
    """The agent's settings cannot work (bad flag, unusable work directory, ...)."""


class SessionError(AgentError):
    """Something ended a Connect session."""


class StreamBroken(SessionError):
    """The stream failed or went silent; a new session may succeed."""


class SessionRejected(SessionError):
    """The server refused this agent (bad pool, bad credentials); retrying will not help.

    ``code`` is the gRPC status code's name and ``details`` the server's message.
    """

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"the server rejected the agent: {code}: {details}")
        self.code = code
        self.details = details


class SubmitError(AgentError):
    """A runtime could not create a run's infrastructure; the message says why."""


class KubernetesError(AgentError):
    """A Kubernetes API call failed.

    ``status`` is the HTTP status, 0 when no response arrived (connection refused, reset,
    timed out); ``reason`` is Kubernetes' short reason (``AlreadyExists``, ``Expired``, ...);
    ``retry_after`` is the server's Retry-After in seconds, if it sent one.
    """

    def __init__(
        self, status: int, reason: str, message: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed later: throttled, server error, no response."""
        return self.status in (0, 429) or self.status >= 500
