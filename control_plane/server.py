"""The control-plane process: wiring, the gRPC server, and graceful shutdown.

``serve(config)`` migrates the database, starts the ``grpc.aio`` server with the three
Flowyard services plus the standard health and reflection services, starts the dispatcher,
the reaper and the scheduler, and runs until SIGTERM/SIGINT. Shutdown: health goes
NOT_SERVING, agent streams are told to end, in-flight calls get ``shutdown_grace_seconds``,
then the background tasks are cancelled and awaited and the database closed.

The root tasks (the gRPC server, the dispatcher, the reaper, the scheduler) are supervised:
none of them ends while the server runs, so one that does (a loop that failed for good, see
``orchestration.loops``) is logged with its traceback and stops the whole process the same
graceful way, and ``serve`` raises ``RootTaskFailed`` naming it. A control plane that went on
serving without its dispatcher would accept runs and never start them.

User calls pass admission control first (``control_plane.admission``); the gRPC limits below
are set so that under a burst it is admission control, with its retry hint, that refuses
calls, never gRPC's own queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from control_plane.admission import Admission
from control_plane.api.agent import AgentServicer
from control_plane.api.authentication import Authenticator
from control_plane.api.control_plane import ControlPlaneServicer
from control_plane.api.decoding import Decoding
from control_plane.api.engine import EngineServicer
from control_plane.auth.bootstrap import ensure_admin_token
from control_plane.auth.registry import Tokens
from control_plane.auth.transport import TLSFiles
from control_plane.config import ServerConfig
from control_plane.orchestration.agents import AgentRegistry
from control_plane.orchestration.bus import DISPATCH, LINES, RUN, SCHEDULES, Bus
from control_plane.orchestration.catalog import Catalog
from control_plane.orchestration.changes import Notifier
from control_plane.orchestration.children import ChildRuns
from control_plane.orchestration.cluster import Replica, Singleton, serving_at
from control_plane.orchestration.dispatch import Dispatcher
from control_plane.orchestration.following import LINES_BATCH, Following
from control_plane.orchestration.heartbeats import Heartbeats
from control_plane.orchestration.liveness import LivenessPolicy, Reaper
from control_plane.orchestration.queues import Queues
from control_plane.orchestration.recent_lines import RecentLines
from control_plane.orchestration.reports import AgentReports, EngineReports
from control_plane.orchestration.runs import Runs
from control_plane.orchestration.scheduler import Scheduler, Schedules
from control_plane.orchestration.scrape import CONTENT_TYPE as METRICS_CONTENT_TYPE
from control_plane.orchestration.scrape import scrape
from control_plane.orchestration.signals import Signals, lines_key, run_key
from control_plane.orchestration.task_runs import TaskRuns
from control_plane.store.db import Database, connect_params, first_line, shown_url
from control_plane.store.migrate import behind_head
from control_plane.store.notifications import PostgresChannel
from control_plane.web.app import build_app
from control_plane.web.events import ANY_RUN
from control_plane.web.services import Services
from flowyard.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    control_plane_pb2,
    control_plane_pb2_grpc,
    engine_pb2,
    engine_pb2_grpc,
)
from flowyard_common.aiotasks import cancel_and_wait
from flowyard_common.heap import collect_young_objects_less_often, freeze_startup_heap
from flowyard_common.http_server import HttpServer

log = logging.getLogger(__name__)

#: Responses should fit a default client's 4 MiB receive limit; this is higher so that a client
#: that raised its own limit can take a larger page, yet a response that grew by mistake is
#: refused here rather than sent to every client that asks.
MAX_SEND_MESSAGE_BYTES = 16 * 1024 * 1024
#: Streams one HTTP/2 connection may hold open. An agent or an engine uses one or two per
#: connection; a busy client (a load test, a dashboard following many runs) may use many, and
#: past this its gRPC library queues new calls until one ends instead of failing them. The
#: limit keeps one connection from holding unbounded server state; the server as a whole is
#: bounded by admission control, which can answer with a retry hint.
MAX_STREAMS_PER_CONNECTION = 1000
#: Calls that arrived but that the event loop has not yet taken wait in gRPC's pending queue.
#: Past ``grpc.server.max_pending_requests`` gRPC refuses some of them at random, and past the
#: hard limit all of them; their clients see CANCELLED or INTERNAL, with no hint. With gRPC's
#: defaults (1,000 and 3,000) a reconnect storm of 2,000 agents lost 3-6 % of its streams that
#: way, and a burst of 3,000 CreateRun calls a quarter of its calls. Set well above any burst,
#: so that admission control, not gRPC, decides who is turned away and tells them when to
#: come back.
MAX_PENDING_REQUESTS = 10_000
MAX_PENDING_REQUESTS_HARD = 20_000
#: A call still not taken from the pending queue after this long is cancelled by gRPC. The
#: loop takes calls within moments, even in a burst, unless it is stuck; by then an agent has
#: given up waiting for its Welcome (30 s) and reconnects, so holding a call longer serves
#: no one.
MAX_UNREQUESTED_SECONDS = 30
SERVICE_NAMES = (
    control_plane_pb2.DESCRIPTOR.services_by_name["ControlPlaneService"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    engine_pb2.DESCRIPTOR.services_by_name["EngineService"].full_name,
)
#: The services whose unary calls go through admission control (see control_plane.admission).
ADMITTED_SERVICES = (SERVICE_NAMES[0],)


def server_options(config: ServerConfig) -> list[tuple[str, int]]:
    """The gRPC server's channel arguments.

    ``maximum_concurrent_rpcs`` (grpc.aio's own limit) is deliberately not used: it counts the
    long-lived agent and engine streams too, so a reconnect storm would lock users out, and it
    refuses with a bare "Concurrent RPC limit exceeded!" that says nothing of when to retry.
    """
    return [
        ("grpc.max_receive_message_length", config.max_receive_message_bytes),
        ("grpc.max_send_message_length", MAX_SEND_MESSAGE_BYTES),
        ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
        # gRPC's "overload protection" counts a stream against the limit until the server has
        # freed it, after the client has seen it end; a client at the limit then opens a stream
        # it has room for by its own count and gets REFUSED_STREAM, seen as UNAVAILABLE with no
        # hint. Counting as HTTP/2 does keeps such calls waiting in the client instead.
        ("grpc.http.overload_protection", 0),
        ("grpc.server.max_pending_requests", MAX_PENDING_REQUESTS),
        ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_REQUESTS_HARD),
        ("grpc.server_max_unrequested_time_in_server", MAX_UNREQUESTED_SECONDS),
        # Accept client keepalive pings as often as every 10 s, even on idle streams, so agents
        # and engines can detect half-open connections without being sent GOAWAY.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]


class RootTaskFailed(Exception):
    """A root task of the control plane ended while it was serving; the process must stop.

    The message names the task and says how it ended, on one line; what it raised, if
    anything, is the ``__cause__``.
    """

    def __init__(self, task: asyncio.Task[None]) -> None:
        self.task_name = task.get_name()
        error = None if task.cancelled() else task.exception()
        if task.cancelled():
            how = "was cancelled"
        elif error is not None:
            how = f"failed: {type(error).__name__}: {first_line(error)}"
        else:
            how = "ended"
        super().__init__(f"the {self.task_name} {how}")
        self.__cause__ = error


@dataclass
class App:
    """The control plane's parts, wired together."""

    db: Database
    agents: AgentRegistry
    dispatcher: Dispatcher
    reaper: Reaper
    scheduler: Scheduler
    server: grpc.aio.Server
    health: Any  # grpc_health.v1.health.aio.HealthServicer (untyped)
    port: int
    #: Who waits for which run to change (WatchRun, TailLogs, engine streams).
    signals: Signals
    #: This process as one of the replicas serving the database.
    replica: Replica
    #: Hints between the parts of this process and to the other replicas.
    bus: Bus
    #: Engine heartbeats noted, stored in batches.
    heartbeats: Heartbeats
    #: Which user calls the server takes now (``control_plane.admission``).
    admission: Admission
    #: The mutual-TLS agent port, if the server has one.
    agent_port: int | None = None
    #: The HTTP listener (web UI, JSON API, health, metrics), if the server has one.
    http: HttpServer | None = None
    #: What the HTTP routes share with the gRPC servicers.
    services: Services | None = None
    #: The root tasks, once started: each runs as long as the server does.
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    #: The first root task that ended by itself, if one did.
    failure: RootTaskFailed | None = field(default=None, init=False)
    _stopping: bool = field(default=False, init=False)

    async def start(self) -> None:
        """Serve, report SERVING, and start dispatching."""
        await self.server.start()
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.tasks = [
            asyncio.create_task(self._serving(), name="gRPC server"),
            asyncio.create_task(self.dispatcher.run(), name="dispatcher"),
            asyncio.create_task(self.reaper.run(), name="reaper"),
            asyncio.create_task(self.scheduler.run(), name="scheduler"),
            asyncio.create_task(self.replica.run(), name="replica heartbeat"),
            asyncio.create_task(self.heartbeats.run(), name="engine heartbeat writer"),
        ]
        if self.bus.channel is not None:
            self.tasks.append(
                asyncio.create_task(self.bus.channel.run(), name="notification channel")
            )
        if self.http is not None:
            self.tasks.append(asyncio.create_task(self.http.serve(), name="HTTP server"))
        for task in self.tasks:
            task.add_done_callback(self._ended)

    async def wait(self, stop: asyncio.Event | None = None) -> None:
        """Wait while the control plane serves (after ``start()``): until ``stop`` is set or
        ``stop()`` is called.

        Raises:
            RootTaskFailed: a root task ended by itself first (it is logged already); the
                others still run, and ``stop()`` stops them.
        """
        requested = None
        if stop is not None:
            requested = asyncio.create_task(stop.wait(), name="stop requested")
        try:
            await asyncio.wait(
                [*self.tasks, *([requested] if requested is not None else [])],
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            if requested is not None:
                await cancel_and_wait([requested])
        if self.failure is not None:
            raise self.failure

    async def stop(self, grace: float) -> None:
        """Stop gracefully: NOT_SERVING, end agent streams, drain calls, stop dispatching."""
        self._stopping = True
        await self.health.enter_graceful_shutdown()
        # The agents stay: what they were assigned waits for them to reconnect.
        _close_sessions(self.agents)
        if self.services is not None:
            # Browsers following a run reconnect (and resume) instead of holding the stop.
            self.services.stopping.set()
            self.services.following.stop()
        if self.http is not None:
            self.http.stop()
        await self.server.stop(grace)
        http_tasks = [task for task in self.tasks if task.get_name() == "HTTP server"]
        if http_tasks:
            await asyncio.wait(http_tasks, timeout=grace)
        await cancel_and_wait(self.tasks)
        try:
            await self.db.shielded(self.heartbeats.flush(), counted=False)
        except Exception as error:
            log.warning("could not store the last engine heartbeats: %s", error)
        try:
            # Another replica takes over the singleton passes at once, not after a timeout.
            await self.db.shielded(self.replica.stop(), counted=False)
        except Exception as error:
            log.warning("could not record that this replica stopped: %s", error)
        await self.db.close()

    async def unready(self) -> str | None:
        """Why this replica should not be sent traffic now, or None (``/readyz``)."""
        if self._stopping:
            return "the control plane is stopping"
        if self.failure is not None:
            return str(self.failure)
        try:
            async with self.db.read() as conn:
                return await conn.run_sync(behind_head)
        except Exception as error:
            return f"the database is unreachable: {first_line(error)}"

    async def _serving(self) -> None:
        await self.server.wait_for_termination()

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A root task ended: unless the control plane is stopping, it must stop now."""
        if self._stopping or self.failure is not None:
            return
        self.failure = RootTaskFailed(task)
        log.critical("%s; the control plane stops", self.failure, exc_info=self.failure.__cause__)


async def build(config: ServerConfig) -> App:
    """Open the database and build the server (not yet started)."""
    db = await Database.open(config.resolved_db_url())
    signals = Signals()
    bus = Bus()
    scheduling, sweeping = Singleton("scheduler"), Singleton("reaper")
    agents_ref: list[AgentRegistry] = []
    replica = Replica(
        db,
        bus,
        [scheduling, sweeping],
        on_ended=lambda: _close_sessions(agents_ref[0]),
    )
    agents = AgentRegistry(db, bus, replica.id)
    agents_ref.append(agents)
    replica.sessions = agents
    lease = timedelta(seconds=config.lease_seconds)
    notifier = Notifier(bus, signals)
    heartbeats = Heartbeats(db)
    # Leases of running assignments are re-granted only after an outage of the whole control
    # plane, not when one replica joins others that serve.
    dispatcher = Dispatcher(db, agents, notifier, lease, alone=replica.alone)
    reaper = Reaper(
        db,
        agents,
        notifier,
        LivenessPolicy(
            engine_grace=timedelta(seconds=config.engine_grace_seconds),
            late_after=timedelta(seconds=config.late_after_seconds),
            cancelling_timeout=timedelta(seconds=config.cancelling_timeout_seconds),
            agent_grace=timedelta(seconds=config.agent_grace_seconds),
        ),
        lease=sweeping,
        heartbeats=heartbeats,
    )
    runs = Runs(db, notifier, agents)
    scheduler = Scheduler(db, runs, lease=scheduling)

    bus.on(RUN, lambda run_id: signals.notify(run_key(run_id)))
    # Whoever follows a run's lines also stops at its end: a state change wakes them too.
    bus.on(RUN, lambda run_id: signals.notify(lines_key(run_id)))
    bus.on(LINES, lambda run_id: signals.notify(lines_key(run_id)))
    # Pages that list runs re-read them when any run changes.
    bus.on(RUN, lambda _: signals.notify(ANY_RUN))
    bus.on(DISPATCH, lambda _: dispatcher.wake())
    bus.on(SCHEDULES, lambda _: scheduler.wake())

    def missed_hints() -> None:
        signals.notify_all()
        dispatcher.wake()
        scheduler.wake()

    bus.on_gap(missed_hints)
    if db.dialect == "postgresql":
        bus.channel = PostgresChannel(connect_params(db.engine), replica.id, bus.receive, bus.gap)

    def deployment_changed() -> None:
        # New schedules are the scheduler's business; a raised limit, the dispatcher's.
        bus.publish(SCHEDULES)
        bus.publish(DISPATCH)

    catalog = Catalog(db, deployment_changed)
    queues = Queues(db, lambda: bus.publish(DISPATCH))
    schedules = Schedules(db, lambda: bus.publish(SCHEDULES))

    tls = TLSFiles(config.tls_cert, config.tls_key, config.tls_client_ca)
    tls.check()
    if config.require_agent_cert and tls.client_ca is None:
        raise ValueError("--require-agent-cert needs --tls-client-ca (and --tls-cert/--tls-key)")
    tokens = Tokens(db, bus)
    await ensure_admin_token(tokens, config.resolved_data_dir(), config.admin_token)

    admission = Admission(config.max_concurrent_calls, lambda: db.in_flight, ADMITTED_SERVICES)
    # Admission first: verifying a token may read the database, and that counts as work.
    authenticator = Authenticator(tokens, require_agent_cert=config.require_agent_cert)
    # Decoding last: an unparseable body is reported only for a call admitted and authenticated.
    server = grpc.aio.server(
        interceptors=[admission, authenticator, Decoding(SERVICE_NAMES)],
        options=server_options(config),
    )
    task_runs = TaskRuns(db)
    recent_lines = RecentLines(keep=2 * LINES_BATCH, most=20 * LINES_BATCH)
    following = Following(db, runs, task_runs, signals, recent_lines)
    control_plane_pb2_grpc.add_ControlPlaneServiceServicer_to_server(
        ControlPlaneServicer(
            db, catalog, runs, agents, queues, schedules, tokens, task_runs, following
        ),
        server,
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
            EngineReports(db, notifier, heartbeats, recent_lines),
            signals,
            timedelta(seconds=config.engine_heartbeat_seconds),
            ChildRuns(db, notifier, runs),
        ),
        server,
    )
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{config.host}:{config.port}"
    if tls.enabled:
        port = server.add_secure_port(address, tls.server_credentials(mutual=False))
    else:
        port = server.add_insecure_port(address)
    agent_port = None
    if tls.client_ca is not None:
        agent_port = server.add_secure_port(
            f"{config.host}:{config.agent_port}", tls.server_credentials(mutual=True)
        )
    # Registered once its port is known: the row tells replicas on one machine apart by it.
    await replica.register(serving_at(port))
    app = App(
        db,
        agents,
        dispatcher,
        reaper,
        scheduler,
        server,
        health_servicer,
        port,
        signals,
        replica,
        bus,
        heartbeats,
        admission,
        agent_port,
    )
    if config.http_port is not None:

        async def exposition() -> tuple[bytes, str]:
            return await scrape(db, agents, replica), METRICS_CONTENT_TYPE

        app.services = Services(
            db=db,
            tokens=tokens,
            catalog=catalog,
            runs=runs,
            queues=queues,
            schedules=schedules,
            task_runs=task_runs,
            agents=agents,
            following=following,
            signals=signals,
            unready=app.unready,
            admission=admission,
            metrics=exposition,
        )
        app.http = HttpServer(
            build_app(app.services),
            config.host,
            config.http_port,
            grace=config.shutdown_grace_seconds,
        )
    return app


def _close_sessions(agents: AgentRegistry) -> None:
    """End every agent stream of this replica; the agents reconnect, and what they were
    assigned waits for them."""
    for session in agents.all():
        session.keep_assignments = True
        session.close()


async def serve(config: ServerConfig, stop: asyncio.Event | None = None) -> None:
    """Run the control plane until ``stop`` is set or SIGTERM/SIGINT arrives."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    app = await build(config)
    await app.start()
    # Started: what is alive now lives as long as the process (see flowyard_common.heap).
    freeze_startup_heap()
    collect_young_objects_less_often()
    address = f"{config.host}:{app.port}"
    log.info(
        "Flowyard control plane listening on %s (%s; database %s); replica %s at %s",
        address,
        "TLS" if config.tls_cert else "plaintext",
        shown_url(config.resolved_db_url()),
        app.replica.id,
        app.replica.host,
    )
    ready = address
    if app.agent_port is not None:
        log.info("mutual-TLS agent port on %s:%d", config.host, app.agent_port)
        # A second line: the agent port, for tests and scripts that start with port 0.
        ready += f"\n{config.host}:{app.agent_port}"
    if app.http is not None:
        url = f"http://{_url_host(config.host)}:{app.http.port}/"
        log.info("web UI and HTTP API on %s", url)
        ready += f"\n{url}"
    if config.ready_file is not None:
        _write_atomically(config.ready_file, ready)
    try:
        await app.wait(stop)
    finally:
        log.info("shutting down")
        await app.stop(config.shutdown_grace_seconds)
        log.info("stopped")


def _url_host(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets, any-address as loopback."""
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _write_atomically(path: os.PathLike[str], text: str) -> None:
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
