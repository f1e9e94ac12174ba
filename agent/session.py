"""One Connect session over one stream: Hello, Welcome, then reports out and work in.

This is the only module that touches protobuf. Inbound messages become calls on the
:class:`~agent.runs.RunManager` with plain dataclasses; outbound reports come from the
:class:`~agent.reports.Outbox` and are converted here. A session ends by raising
:class:`~agent.errors.StreamBroken` (reconnect) or :class:`~agent.errors.SessionRejected`
(give up), or by returning after :meth:`Session.close` flushed the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import grpc.aio
from google.protobuf.timestamp_pb2 import Timestamp

from agent import __version__
from agent.errors import SessionError, SessionRejected, StreamBroken
from agent.health import HealthFile
from agent.models import Assignment, InfraEvent, InfraEventKind, RunKey, SecretEnv
from agent.reports import (
    Accepted,
    Cancelled,
    CreditGranted,
    InfraObserved,
    Outbox,
    Report,
    SubmitFailed,
    Submitted,
)
from agent.runs import HelloState, RunManager
from agent.settings import AgentSettings, ConnectionSettings
from agent.tasks import wait_first
from flowyard.v1 import agent_pb2, agent_pb2_grpc
from flowyard_common.aiotasks import cancel_and_wait

__all__ = ["FATAL_CODES", "Session", "Welcome"]

logger = logging.getLogger(__name__)

FATAL_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)
"""Status codes that mean the server refuses this agent as configured: reconnecting won't help."""

_Call = grpc.aio.StreamStreamCall[agent_pb2.ConnectRequest, agent_pb2.ConnectResponse]

_KINDS: dict[InfraEventKind, agent_pb2.InfraEventKind.ValueType] = {
    InfraEventKind.PENDING: agent_pb2.INFRA_EVENT_KIND_PENDING,
    InfraEventKind.UNSCHEDULABLE: agent_pb2.INFRA_EVENT_KIND_UNSCHEDULABLE,
    InfraEventKind.IMAGE_PULL_ERROR: agent_pb2.INFRA_EVENT_KIND_IMAGE_PULL_ERROR,
    InfraEventKind.CRASH_LOOP: agent_pb2.INFRA_EVENT_KIND_CRASH_LOOP,
    InfraEventKind.OOM_KILLED: agent_pb2.INFRA_EVENT_KIND_OOM_KILLED,
    InfraEventKind.EVICTED: agent_pb2.INFRA_EVENT_KIND_EVICTED,
    InfraEventKind.FAILED: agent_pb2.INFRA_EVENT_KIND_FAILED,
    InfraEventKind.SUCCEEDED: agent_pb2.INFRA_EVENT_KIND_SUCCEEDED,
    InfraEventKind.DELETED: agent_pb2.INFRA_EVENT_KIND_DELETED,
}


@dataclass(frozen=True)
class Welcome:
    """The server's answer to Hello, with the cadences this session runs at (seconds)."""

    session_id: str
    heartbeat_interval: float
    lease_duration: float
    server_version: str


class Session:
    """One Connect stream of one agent, from Hello to the stream's end."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        agent: AgentSettings,
        connection: ConnectionSettings,
        runtime_name: str,
        manager: RunManager,
        outbox: Outbox,
        health: HealthFile | None = None,
    ) -> None:
        self._stub = agent_pb2_grpc.AgentServiceStub(channel)
        self._agent = agent
        self._connection = connection
        self._runtime_name = runtime_name
        self._manager = manager
        self._outbox = outbox
        self._health = health
        self._closing = asyncio.Event()
        self._last_seen = 0.0
        self.welcome: Welcome | None = None
        """Set once the server welcomed the session."""

    def close(self) -> None:
        """Ask a welcomed session to send what is queued, end its stream and return."""
        self._closing.set()

    async def run(self) -> None:
        """Run the session; returns after :meth:`close`, raises when the stream ends otherwise."""
        token = self._connection.token
        call = self._stub.Connect(
            None, metadata=(("authorization", f"Bearer {token}"),) if token else None
        )
        try:
            await self._exchange(call)
        except grpc.aio.AioRpcError as error:
            raise _session_error(error) from error
        except asyncio.InvalidStateError as error:
            # Writing to a call that already finished without an error status.
            raise StreamBroken("the stream was closed") from error
        finally:
            call.cancel()

    async def _exchange(self, call: _Call) -> None:
        welcome = await self._handshake(call)
        self.welcome = welcome
        self._server_alive()
        logger.info(
            "connected to %s as agent %r of pool %r (instance %s): session %s "
            "(heartbeat every %g s, server %s)",
            self._connection.server,
            self._agent.name,
            self._agent.pool,
            self._agent.instance_id,
            welcome.session_id,
            welcome.heartbeat_interval,
            welcome.server_version or "unknown",
        )
        tasks = [
            asyncio.create_task(self._read(call), name="session:read"),
            asyncio.create_task(self._write(call, welcome), name="session:write"),
            asyncio.create_task(self._watch_silence(welcome), name="session:watchdog"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(tasks)
        # Look at every finished task (a read and a write often fail together), so no
        # error is left unretrieved; the first one ends the session.
        errors = [task.exception() for task in done if not task.cancelled()]
        for error in errors:
            if error is not None:
                raise error

    async def _handshake(self, call: _Call) -> Welcome:
        state = self._manager.hello()
        await call.write(agent_pb2.ConnectRequest(hello=self._hello(state)))
        timeout = self._connection.welcome_timeout
        try:
            async with asyncio.timeout(timeout):
                first = await call.read()
        except TimeoutError:
            raise StreamBroken(f"no Welcome within {timeout:g} s") from None
        if not isinstance(first, agent_pb2.ConnectResponse):
            raise StreamBroken("the server ended the stream before Welcome")
        if first.WhichOneof("message") != "welcome":
            raise StreamBroken(f"expected Welcome, got {first.WhichOneof('message')}")
        self._last_seen = asyncio.get_running_loop().time()
        return _welcome_from_proto(first.welcome, self._connection.default_heartbeat_interval)

    def _hello(self, state: HelloState) -> agent_pb2.Hello:
        return agent_pb2.Hello(
            agent_name=self._agent.name,
            pool=self._agent.pool,
            queues=list(self._agent.queues),
            instance_id=self._agent.instance_id,
            capacity=state.capacity,
            slots=state.slots,
            runtime=self._runtime_name,
            version=__version__,
            observed_runs=[
                agent_pb2.ObservedRun(
                    run_id=run.key.run_id,
                    attempt=run.key.attempt,
                    infrastructure_id=run.infrastructure_id,
                )
                for run in state.observed
            ],
        )

    async def _read(self, call: _Call) -> None:
        loop = asyncio.get_running_loop()
        while True:
            message = await call.read()
            if not isinstance(message, agent_pb2.ConnectResponse):
                raise StreamBroken("the server ended the stream")
            self._last_seen = loop.time()
            self._dispatch(message)

    def _dispatch(self, message: agent_pb2.ConnectResponse) -> None:
        kind = message.WhichOneof("message")
        if kind == "assign":
            if not message.assign.run_id:
                logger.warning("ignoring an Assign without a run id")
                return
            self._manager.assign(_assignment_from_proto(message.assign), datetime.now(UTC))
        elif kind == "cancel":
            cancel = message.cancel
            self._manager.cancel(RunKey(cancel.run_id, cancel.attempt), cancel.reason)
        elif kind == "heartbeat":
            self._server_alive()
        elif kind == "welcome":
            logger.warning("ignoring a second Welcome in session %s", message.welcome.session_id)
        else:
            logger.debug("ignoring a message of unknown kind %r", kind)

    def _server_alive(self) -> None:
        """The server is alive and talking to us: tell the liveness probe."""
        if self._health is not None:
            self._health.touch()

    async def _write(self, call: _Call, welcome: Welcome) -> None:
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + welcome.heartbeat_interval
        while True:
            if self._closing.is_set():
                await self._flush(call)
                await call.done_writing()
                return
            # Heartbeats go first so that a burst of reports cannot starve them.
            now = loop.time()
            if now >= next_beat:
                await call.write(agent_pb2.ConnectRequest(heartbeat=_heartbeat()))
                next_beat = now + welcome.heartbeat_interval
                continue
            report = self._outbox.first()
            if report is not None:
                await self._send(call, report)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(next_beat - now):
                    await wait_first(
                        "session:write-wait", self._outbox.wait(), self._closing.wait()
                    )

    async def _flush(self, call: _Call) -> None:
        while (report := self._outbox.first()) is not None:
            await self._send(call, report)

    async def _send(self, call: _Call, report: Report) -> None:
        await call.write(_report_to_proto(report))
        # Only now: if the write failed, the next session sends the report again.
        self._outbox.discard(report)

    async def _watch_silence(self, welcome: Welcome) -> None:
        loop = asyncio.get_running_loop()
        limit = welcome.heartbeat_interval * self._connection.silent_intervals
        while True:
            remaining = self._last_seen + limit - loop.time()
            if remaining > 0:
                await asyncio.sleep(remaining)
                continue
            # Before blaming the server, give the reader one more interval: after this
            # process was stopped or stalled, what the server sent meanwhile (heartbeats, an
            # Assign) is still waiting in the socket, behind this timer.
            seen = self._last_seen
            await asyncio.sleep(welcome.heartbeat_interval)
            if self._last_seen == seen:
                raise StreamBroken(f"the server was silent for {limit:g} s")


def _session_error(error: grpc.aio.AioRpcError) -> SessionError:
    code = error.code()
    details = error.details() or ""
    if code in FATAL_CODES:
        return SessionRejected(code.name, details)
    if code is grpc.StatusCode.ALREADY_EXISTS:
        # Another process connected under this agent's name. Not fatal: during a rollout the
        # old pod's session may not have ended yet, and retrying gets this one in once it has.
        return StreamBroken(f"refused, this agent's name is in use: {details}")
    return StreamBroken(f"{code.name}: {details}" if details else code.name)


def _welcome_from_proto(welcome: agent_pb2.Welcome, default_interval: float) -> Welcome:
    interval = welcome.heartbeat_interval.ToTimedelta().total_seconds()
    return Welcome(
        session_id=welcome.session_id,
        heartbeat_interval=interval if interval > 0 else default_interval,
        lease_duration=welcome.lease_duration.ToTimedelta().total_seconds(),
        server_version=welcome.server_version,
    )


def _assignment_from_proto(assign: agent_pb2.Assign) -> Assignment:
    deadline = (
        assign.lease_deadline.ToDatetime(tzinfo=UTC) if assign.HasField("lease_deadline") else None
    )
    return Assignment(
        key=RunKey(assign.run_id, assign.attempt),
        deployment_name=assign.deployment_name,
        flow_name=assign.flow_name,
        base_job_template_json=assign.base_job_template_json,
        job_variables_json=assign.job_variables_json,
        engine_token=assign.engine_token,
        lease_deadline=deadline,
        secret_env=tuple(
            SecretEnv(item.name, item.secret_name, item.secret_key) for item in assign.secret_env
        ),
    )


def _report_to_proto(report: Report) -> agent_pb2.ConnectRequest:
    match report:
        case Accepted(key, receive_time):
            return agent_pb2.ConnectRequest(
                accepted=agent_pb2.Accepted(
                    run_id=key.run_id, attempt=key.attempt, receive_time=_timestamp(receive_time)
                )
            )
        case Submitted(key, infrastructure_id):
            return agent_pb2.ConnectRequest(
                submitted=agent_pb2.Submitted(
                    run_id=key.run_id, attempt=key.attempt, infrastructure_id=infrastructure_id
                )
            )
        case SubmitFailed(key, reason):
            return agent_pb2.ConnectRequest(
                submit_failed=agent_pb2.SubmitFailed(
                    run_id=key.run_id, attempt=key.attempt, reason=reason
                )
            )
        case InfraObserved(event):
            return agent_pb2.ConnectRequest(infra_event=_infra_event_to_proto(event))
        case Cancelled(key):
            return agent_pb2.ConnectRequest(
                cancelled=agent_pb2.Cancelled(run_id=key.run_id, attempt=key.attempt)
            )
        case CreditGranted(credits):
            return agent_pb2.ConnectRequest(credit=agent_pb2.CreditGrant(credits=credits))


def _infra_event_to_proto(event: InfraEvent) -> agent_pb2.InfraEvent:
    return agent_pb2.InfraEvent(
        run_id=event.key.run_id,
        attempt=event.key.attempt,
        kind=_KINDS[event.kind],
        reason=event.reason,
        message=event.message,
        exit_code=event.exit_code or 0,
        log_tail=bounded_tail(event.log_tail),
        observe_time=_timestamp(event.observe_time),
        gave_up=event.gave_up,
    )


#: Bounds of the output lines sent with an infrastructure event: whatever the pod printed (one
#: line of megabytes, say), the report stays far below the server's message size limit.
TAIL_LINE_BYTES = 4096
TAIL_TOTAL_BYTES = 64 * 1024


def bounded_tail(lines: Sequence[str]) -> list[str]:
    """The last lines that fit in ``TAIL_TOTAL_BYTES``, each cut to ``TAIL_LINE_BYTES``."""
    kept: list[str] = []
    total = 0
    for line in reversed(lines):
        data = line.encode("utf-8", errors="replace")
        if len(data) > TAIL_LINE_BYTES:
            cut = len(data) - TAIL_LINE_BYTES
            line = data[:TAIL_LINE_BYTES].decode("utf-8", errors="ignore") + f"… [{cut} bytes cut]"
            data = line.encode("utf-8", errors="replace")
        if total + len(data) > TAIL_TOTAL_BYTES:
            break
        kept.append(line)
        total += len(data)
    kept.reverse()
    return kept


def _heartbeat() -> agent_pb2.Heartbeat:
    return agent_pb2.Heartbeat(sent_time=_timestamp(datetime.now(UTC)))


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp
