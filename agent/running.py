"""The agent's lifetime: start the runtime, hold a session, stop gracefully on a signal.

Shutdown order matters: first the session (no new work arrives), then the run manager's
submissions and cancellations (grace period, then cancel), then the runtime's watchers.
Engines (processes or Kubernetes Jobs) are never killed on shutdown: they report to the
control plane on their own, and a restarted agent adopts what is still running.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from agent.connection import run_connection
from agent.health import HealthFile
from agent.http import serving
from agent.reports import Outbox
from agent.runs import RunManager
from agent.runtimes.base import Runtime
from agent.runtimes.kubernetes import KubernetesRuntime
from agent.runtimes.process import ProcessRuntime
from agent.settings import Settings
from flowyard_common.heap import freeze_startup_heap

__all__ = ["make_runtime", "run_agent"]

logger = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def run_agent(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the agent until ``stop`` is set or SIGTERM/SIGINT arrives.

    Raises :class:`~agent.errors.ConfigurationError` for settings that cannot work and
    :class:`~agent.errors.SessionRejected` when the server refuses the agent.
    """
    stop = stop if stop is not None else asyncio.Event()
    # Listening from the start: the runtime's own start (a first list of Jobs) shows in the
    # metrics, and a port that cannot be bound stops the agent before it takes any work.
    async with serving(settings.http, settings.health):
        await _run(settings, stop)


async def _run(settings: Settings, stop: asyncio.Event) -> None:
    runtime = make_runtime(settings)
    outbox = Outbox()
    manager = RunManager(runtime, outbox, settings.agent.capacity)
    await runtime.start(manager.on_event)
    freeze_startup_heap()
    loop = asyncio.get_running_loop()
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, _request_stop, stop, signum)
    logger.info(
        "agent %s starting: pool %r, capacity %d, runtime %s, server %s",
        settings.agent.name,
        settings.agent.pool,
        settings.agent.capacity,
        runtime.name,
        settings.connection.server,
    )
    try:
        await run_connection(
            agent=settings.agent,
            connection=settings.connection,
            runtime_name=runtime.name,
            manager=manager,
            outbox=outbox,
            stop=stop,
            health=HealthFile(settings.health.file),
        )
    finally:
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)
        await manager.close(settings.agent.shutdown_grace)
        await runtime.close()
    logger.info("agent stopped")


def make_runtime(settings: Settings) -> Runtime:
    """The runtime ``settings.agent.runtime`` names."""
    if settings.agent.runtime == KubernetesRuntime.name:
        return KubernetesRuntime(settings.kubernetes, pool=settings.agent.pool)
    return ProcessRuntime(
        settings.process,
        # --engine-server defaults to --server; it differs when the agent itself uses the
        # mutual-TLS agent port, which engines (without client certificates) cannot.
        server=settings.kubernetes.engine_server,
        tls_ca=settings.connection.tls.ca,
    )


def _request_stop(stop: asyncio.Event, signum: int) -> None:
    if not stop.is_set():
        logger.info("%s received: stopping", signal.Signals(signum).name)
    stop.set()
