"""The control-plane process: wiring, the gRPC server, and graceful shutdown.

``serve(config)`` migrates the database, starts the ``grpc.aio`` server with the three
Flowyard services plus the standard health and reflection services, starts the dispatcher,
and runs until SIGTERM/SIGINT. Shutdown: health goes NOT_SERVING, agent streams are told to
end, in-flight calls get ``shutdown_grace_seconds``, then the dispatcher is cancelled and
awaited and the database closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from control_plane.api.agent import AgentServicer
from control_plane.api.control_plane import ControlPlaneServicer
from control_plane.api.engine import EngineServicer
from control_plane.config import ServerConfig
from control_plane.orchestration.agents import AgentRegistry
from control_plane.orchestration.catalog import Catalog
from control_plane.orchestration.changes import Notifier
from control_plane.orchestration.dispatch import Dispatcher
from control_plane.orchestration.reports import AgentReports, EngineReports
from control_plane.orchestration.runs import Runs
from control_plane.orchestration.signals import Signals
from control_plane.store.db import Database
from flowyard.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    control_plane_pb2,
    control_plane_pb2_grpc,
    engine_pb2,
    engine_pb2_grpc,
)

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
SERVICE_NAMES = (
    control_plane_pb2.DESCRIPTOR.services_by_name["ControlPlaneService"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    engine_pb2.DESCRIPTOR.services_by_name["EngineService"].full_name,
)
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Accept client keepalive pings as often as every 10 s, even on idle streams, so agents
    # and engines can detect half-open connections without being sent GOAWAY.
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


@dataclass
class App:
    """The control plane's parts, wired together."""

    db: Database
    agents: AgentRegistry
    dispatcher: Dispatcher
    server: grpc.aio.Server
    health: Any  # grpc_health.v1.health.aio.HealthServicer (untyped)
    port: int
    dispatcher_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serve, report SERVING, and start dispatching."""
        await self.server.start()
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.dispatcher_task = asyncio.create_task(self.dispatcher.run(), name="dispatcher")

    async def stop(self, grace: float) -> None:
        """Stop gracefully: NOT_SERVING, end agent streams, drain calls, stop dispatching."""
        await self.health.enter_graceful_shutdown()
        for session in self.agents.all():
            session.close()
        await self.server.stop(grace)
        if self.dispatcher_task is not None:
            self.dispatcher_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.dispatcher_task
        await self.db.close()


async def build(config: ServerConfig) -> App:
    """Open the database and build the server (not yet started)."""
    db = await Database.open(config.resolved_db_url())
    signals = Signals()
    agents = AgentRegistry()
    lease = timedelta(seconds=config.lease_seconds)
    dispatcher_ref: list[Dispatcher] = []
    notifier = Notifier(signals, lambda: dispatcher_ref[0].wake())
    dispatcher = Dispatcher(db, agents, notifier, lease)
    dispatcher_ref.append(dispatcher)
    catalog = Catalog(db)
    runs = Runs(db, notifier, agents)

    server = grpc.aio.server(options=SERVER_OPTIONS)
    control_plane_pb2_grpc.add_ControlPlaneServiceServicer_to_server(
        ControlPlaneServicer(db, catalog, runs, agents, signals), server
    )
    agent_pb2_grpc.add_AgentServiceServicer_to_server(
        AgentServicer(
            db,
            catalog,
            agents,
            AgentReports(db, notifier, agents, lease),
            notifier,
            timedelta(seconds=config.agent_heartbeat_seconds),
            lease,
        ),
        server,
    )
    engine_pb2_grpc.add_EngineServiceServicer_to_server(
        EngineServicer(
            db,
            catalog,
            EngineReports(db, notifier),
            signals,
            timedelta(seconds=config.engine_heartbeat_seconds),
        ),
        server,
    )
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    return App(db, agents, dispatcher, server, health_servicer, port)


async def serve(config: ServerConfig, stop: asyncio.Event | None = None) -> None:
    """Run the control plane until ``stop`` is set or SIGTERM/SIGINT arrives."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    app = await build(config)
    await app.start()
    address = f"{config.host}:{app.port}"
    log.info("Flowyard control plane listening on %s (database %s)", address, _safe_url(config))
    if config.ready_file is not None:
        _write_atomically(config.ready_file, address)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await app.stop(config.shutdown_grace_seconds)
        log.info("stopped")


def _safe_url(config: ServerConfig) -> str:
    from sqlalchemy.engine import make_url

    return make_url(config.resolved_db_url()).render_as_string(hide_password=True)


def _write_atomically(path: os.PathLike[str], text: str) -> None:
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
