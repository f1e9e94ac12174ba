"""The agent's exceptions.

One hierarchy, rooted at :class:`AgentError`::

    AgentError
    ├── ConfigurationError        settings that cannot work; the agent exits with status 2
    │   └── RuntimeNotAvailable   a runtime that this build does not provide yet
    ├── SessionError              something ended a Connect session
    │   ├── StreamBroken          transient: the agent reconnects with backoff
    │   └── SessionRejected       the server refused the agent; the agent exits with status 2
    └── SubmitError               a runtime could not create a run's infrastructure

Only :class:`SubmitError` crosses the runtime boundary; its message is sent to the control
plane as ``SubmitFailed.reason``, so it is written for the person reading the run's state.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base class of every error the agent raises on purpose."""


class ConfigurationError(AgentError):
    """The agent's settings cannot work (bad flag, unusable work directory, ...)."""


class RuntimeNotAvailable(ConfigurationError):
    """The requested runtime exists in the design but is not part of this build yet."""


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
