"""The engine's configuration, read from its environment in one place.

The agent (or the Kubernetes Job it renders) starts the engine with::

    FLOWYARD_SERVER       control plane address, "host:port" (several: comma-separated)
    FLOWYARD_RUN_ID       the run to execute
    FLOWYARD_RUN_ATTEMPT  the attempt, an integer >= 1
    FLOWYARD_RUN_TOKEN    bearer token scoped to this run attempt
    FLOWYARD_LOG_LEVEL    optional root logger level, default INFO
    FLOWYARD_TLS_CA       optional CA certificate file (PEM): the channel speaks TLS and
                          trusts that CA (the agent passes on its own --tls-ca)
    FLOWYARD_TLS_CA_PEM   the same CA as PEM text (how Kubernetes Jobs get it, from the
                          attempt's Secret)

The timeouts are not read from the environment: they are the engine's contract with the
control plane (how long an unreachable server is tolerated) and tests pass their own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from engine.errors import SettingsError
from flowyard_common import addresses

__all__ = ["EngineSettings", "Timeouts", "load_settings"]


@dataclass(frozen=True)
class Timeouts:
    """How long the engine waits for the control plane, in seconds."""

    connect: float = 60.0
    """For the Report stream to open and StartRun to answer, at start-up."""
    flush: float = 30.0
    """For every log line to be acknowledged before a terminal state is proposed."""
    propose: float = 60.0
    """For a state proposal to be answered."""
    stop_grace: float = 5.0
    """For the stream and channel to close cleanly at exit."""
    backoff_base: float = 0.2
    """First reconnect delay bound; the bound doubles up to ``backoff_cap`` (full jitter)."""
    backoff_cap: float = 10.0
    """Largest reconnect delay bound."""


@dataclass(frozen=True)
class EngineSettings:
    """Everything the engine needs to know to execute one run attempt."""

    server: str
    run_id: str
    attempt: int
    token: str
    log_level: int = logging.INFO
    timeouts: Timeouts = Timeouts()
    #: The CA (PEM) that signed the control plane's certificate; None: plaintext.
    tls_ca: bytes | None = None

    def __repr__(self) -> str:
        # Never print the token: settings end up in logs and tracebacks.
        return (
            f"EngineSettings(server={self.server!r}, run_id={self.run_id!r}, "
            f"attempt={self.attempt}, token='***', log_level={self.log_level}, "
            f"tls={self.tls_ca is not None})"
        )


def load_settings(env: Mapping[str, str], run_id: str | None = None) -> EngineSettings:
    """Read the settings from ``env``; ``run_id`` is the command line's argument, if any.

    Raises:
        SettingsError: a variable is missing or malformed, or the run id argument does not
            match FLOWYARD_RUN_ID.
    """
    env_run_id = env.get("FLOWYARD_RUN_ID", "").strip()
    arg_run_id = (run_id or "").strip()
    if env_run_id and arg_run_id and env_run_id != arg_run_id:
        raise SettingsError(
            f"run id argument {arg_run_id!r} does not match FLOWYARD_RUN_ID={env_run_id!r}"
        )
    resolved_run_id = arg_run_id or env_run_id
    if not resolved_run_id:
        raise SettingsError("no run id: pass it as an argument or set FLOWYARD_RUN_ID")
    return EngineSettings(
        server=_server(_required(env, "FLOWYARD_SERVER")),
        run_id=resolved_run_id,
        attempt=_attempt(_required(env, "FLOWYARD_RUN_ATTEMPT")),
        token=_required(env, "FLOWYARD_RUN_TOKEN"),
        log_level=_log_level(env.get("FLOWYARD_LOG_LEVEL", "")),
        tls_ca=_tls_ca(env),
    )


def _tls_ca(env: Mapping[str, str]) -> bytes | None:
    pem = env.get("FLOWYARD_TLS_CA_PEM", "").strip()
    if pem:
        return pem.encode()
    path = env.get("FLOWYARD_TLS_CA", "").strip()
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise SettingsError(f"FLOWYARD_TLS_CA={path!r}: {error.strerror or error}") from None


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise SettingsError(f"{name} is not set")
    return value


def _server(value: str) -> str:
    try:
        addresses.check(value)
    except addresses.AddressError as error:
        raise SettingsError(
            f"FLOWYARD_SERVER={value!r}: {error}; give host:port, or several separated by commas"
        ) from None
    return value


def _attempt(value: str) -> int:
    try:
        attempt = int(value)
    except ValueError:
        raise SettingsError(f"FLOWYARD_RUN_ATTEMPT={value!r} is not an integer") from None
    if attempt < 1:
        raise SettingsError(f"FLOWYARD_RUN_ATTEMPT={value!r} must be 1 or more")
    return attempt


def _log_level(value: str) -> int:
    text = value.strip().upper()
    if not text:
        return logging.INFO
    if text.isdigit():
        return int(text)
    level = logging.getLevelNamesMapping().get(text)
    if level is None:
        raise SettingsError(
            f"FLOWYARD_LOG_LEVEL={value!r} is not a level (DEBUG, INFO, WARNING, ERROR, CRITICAL)"
        )
    return level
