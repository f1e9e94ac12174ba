"""The ``AgentService`` servicer: one ``Connect`` stream per agent session.

The stream handler owns two things: a reader task that applies what the agent reports (its
reports about runs at once across runs, in order within each: ``_RunReports``), and the loop
that drains the session's outbox (assignments, cancels) onto the wire, with a heartbeat
whenever the outbox has been quiet for one interval.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Coroutine
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration

from control_plane import __version__
from control_plane.api import convert
from control_plane.api.errors import streaming
from control_plane.auth.principals import caller
from control_plane.errors import (
    AlreadyExists,
    FlowyardError,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
)
from control_plane.models import TokenKind
from control_plane.orchestration import clock, queues, validation
from control_plane.orchestration.agents import (
    AgentRegistry,
    AgentSession,
    AssignMessage,
    CancelMessage,
    Outgoing,
)
from control_plane.orchestration.catalog import Catalog
from control_plane.orchestration.changes import Notifier
from control_plane.orchestration.reports import AgentReports, InfraKind, InfraReport
from control_plane.store.db import Database, unavailable
from flowyard.v1 import agent_pb2 as pb
from flowyard.v1 import agent_pb2_grpc as pb_grpc
from flowyard_common.aiotasks import cancel_and_wait
from flowyard_common.templates import compact_json

log = logging.getLogger(__name__)

#: Heartbeat intervals of silence after which an agent's session is closed.
SILENT_INTERVALS = 3

Context = Any
HELLO_TIMEOUT_SECONDS = 30.0
MAX_CAPACITY = 10_000
MAX_AGENT_NAME_CHARS = 200
MAX_OBSERVED_RUNS = 10_000
MAX_INFRASTRUCTURE_ID_CHARS = 300

INFRA_KINDS = {
    pb.INFRA_EVENT_KIND_PENDING: InfraKind.PENDING,
    pb.INFRA_EVENT_KIND_UNSCHEDULABLE: InfraKind.UNSCHEDULABLE,
    pb.INFRA_EVENT_KIND_IMAGE_PULL_ERROR: InfraKind.IMAGE_PULL_ERROR,
    pb.INFRA_EVENT_KIND_CRASH_LOOP: InfraKind.CRASH_LOOP,
    pb.INFRA_EVENT_KIND_OOM_KILLED: InfraKind.OOM_KILLED,
    pb.INFRA_EVENT_KIND_EVICTED: InfraKind.EVICTED,
    pb.INFRA_EVENT_KIND_FAILED: InfraKind.FAILED,
    pb.INFRA_EVENT_KIND_SUCCEEDED: InfraKind.SUCCEEDED,
    pb.INFRA_EVENT_KIND_DELETED: InfraKind.DELETED,
}


class AgentServicer(pb_grpc.AgentServiceServicer):
    """Agent sessions."""

    def __init__(
        self,
        db: Database,
        catalog: Catalog,
        agents: AgentRegistry,
        reports: AgentReports,
        notifier: Notifier,
        heartbeat: timedelta,
        lease: timedelta,
    ) -> None:
        self._db = db
        self._catalog = catalog
        self._agents = agents
        self._reports = reports
        self._notifier = notifier
        self._heartbeat = heartbeat
        self._lease = lease

    @streaming
    async def Connect(
        self, request_iterator: AsyncIterator[pb.ConnectRequest], context: Context
    ) -> AsyncIterator[pb.ConnectResponse]:
        try:
            async with asyncio.timeout(HELLO_TIMEOUT_SECONDS):
                first = await anext(request_iterator)
        except (StopAsyncIteration, TimeoutError):
            raise InvalidArgument("the first message of Connect must be Hello") from None
        if first.WhichOneof("message") != "hello":
            raise InvalidArgument("the first message of Connect must be Hello")
        session = await self._db.shielded(self._open(first.hello))
        try:
            replaced = await self._db.shielded(self._agents.admit(session, self._silence_seconds))
        except AlreadyExists as refused:
            log.warning("refused a second agent: %s", refused)
            raise
        log.info(
            "agent %s (instance %s) connected to pool %s (session %s%s)",
            session.agent_name,
            session.instance_id or "not given",
            session.pool_name,
            session.id,
            f", replacing its stale session {replaced.id}" if replaced else "",
        )
        reports = _RunReports(self._db, session)
        reader = asyncio.create_task(
            self._read(request_iterator, session, reports), name=f"agent-reader-{session.id}"
        )
        try:
            yield pb.ConnectResponse(
                welcome=pb.Welcome(
                    session_id=session.id,
                    heartbeat_interval=_duration(self._heartbeat),
                    lease_duration=_duration(self._lease),
                    server_version=__version__,
                )
            )
            observed = [
                (
                    o.run_id,
                    o.attempt,
                    convert.storable(o.infrastructure_id[:MAX_INFRASTRUCTURE_ID_CHARS]),
                )
                for o in first.hello.observed_runs
            ]
            await self._db.shielded(self._reports.adopt(session, observed))
            self._notifier.wake_dispatcher()
            while True:
                try:
                    async with asyncio.timeout(self._heartbeat.total_seconds()):
                        message = await session.outbox.get()
                except TimeoutError:
                    yield pb.ConnectResponse(
                        heartbeat=pb.Heartbeat(sent_time=convert.timestamp(clock.now()))
                    )
                    continue
                if message is None:
                    if session.revoked:
                        raise Unauthenticated(
                            "the token this agent connected with was revoked; start it with "
                            "a new agent token (--token or FLOWYARD_TOKEN)"
                        )
                    break
                yield _outgoing(message)
            # The reader closes the session when the agent hangs up, or when a report is
            # invalid: then the stream ends with that error rather than quietly.
            if reader.done() and not reader.cancelled() and (failure := reader.result()):
                raise failure
            if reports.failure is not None:
                raise reports.failure
        finally:
            self._agents.forget(session)
            # One shielded unit: a handler cancelled again while it cleans up (the client
            # went, the server stops) must not skip the hand-back of what it never accepted.
            await self._db.shielded(self._closed(session, reader))

    async def _closed(self, session: AgentSession, reader: asyncio.Task[Any]) -> None:
        """What follows the end of a session's stream: its reader stopped, its row ended,
        the assignments it never accepted handed back, the dispatcher woken."""
        await cancel_and_wait([reader])
        log.info("agent %s disconnected (session %s)", session.agent_name, session.id)
        await self._agents.ended([session])
        await self._reports.session_closed(session, keep_assignments=session.keep_assignments)
        self._notifier.wake_dispatcher()

    @property
    def _silence_seconds(self) -> float:
        return SILENT_INTERVALS * self._heartbeat.total_seconds()

    async def _open(self, hello: pb.Hello) -> AgentSession:
        validation.text(hello.agent_name, "hello.agent_name", MAX_AGENT_NAME_CHARS, required=True)
        validation.text(hello.instance_id, "hello.instance_id", MAX_AGENT_NAME_CHARS)
        validation.pool_name(hello.pool, "hello.pool")
        principal = caller()
        # Checked before the pool is looked up: a token of another pool learns nothing.
        if principal.kind is TokenKind.AGENT and principal.pool != hello.pool:
            raise PermissionDenied(
                f"hello.pool: this agent token is for pool {principal.pool!r}, not "
                f"{hello.pool!r}; create one with 'flowyard token create --agent --pool "
                f"{hello.pool}'"
            )
        if not 0 <= hello.capacity <= MAX_CAPACITY:
            raise InvalidArgument(
                f"hello.capacity: must be between 0 and {MAX_CAPACITY}, got {hello.capacity}"
            )
        if hello.slots and not hello.capacity <= hello.slots <= MAX_CAPACITY:
            raise InvalidArgument(
                f"hello.slots: must be between hello.capacity ({hello.capacity}) and "
                f"{MAX_CAPACITY}, or 0, got {hello.slots}"
            )
        if len(hello.observed_runs) > MAX_OBSERVED_RUNS:
            raise InvalidArgument(
                f"hello.observed_runs: at most {MAX_OBSERVED_RUNS} runs "
                f"({len(hello.observed_runs)})"
            )
        pool = await self._catalog.get_pool(hello.pool)
        if hello.runtime and hello.runtime != pool.type.value:
            raise InvalidArgument(
                f"hello.runtime: {validation.shown(hello.runtime)} does not fit: "
                f"pool {pool.name!r} is a {pool.type.value} pool; "
                f"start the agent with --runtime {pool.type.value}"
            )
        return AgentSession(
            agent_name=hello.agent_name,
            pool_id=pool.id,
            pool_name=pool.name,
            runtime=hello.runtime,
            credits=hello.capacity,
            slots=hello.slots,
            queues=await queues.check_names(self._db, pool, list(hello.queues), "hello.queues"),
            token_id=principal.token_id,
            instance_id=hello.instance_id,
        )

    async def _read(
        self,
        requests: AsyncIterator[pb.ConnectRequest],
        session: AgentSession,
        reports: _RunReports,
    ) -> Exception | None:
        """Apply reports until the agent hangs up; returns the error the stream ends with
        (``_report_failed``), if any.

        Reports on a run go through ``reports`` (in order within the run, at once across
        runs); when the agent hangs up, they are applied before its session closes."""
        # The agent heartbeats at the interval Welcome told it; silence for this long means
        # the connection is dead without having failed (a partition): close the session so
        # that its runs are released and a new session of the agent can take them over.
        silence = self._silence_seconds
        try:
            while True:
                try:
                    # asyncio.timeout, not wait_for: no task per message on this hot path.
                    async with asyncio.timeout(silence):
                        request = await anext(requests)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    log.warning(
                        "agent %s was silent for %g s; closing its session %s",
                        session.agent_name,
                        silence,
                        session.id,
                    )
                    session.keep_assignments = True
                    break
                session.last_seen = clock.now()
                kind = request.WhichOneof("message")
                if kind in RUN_REPORTS:
                    await reports.add(getattr(request, kind).run_id, self._apply(session, request))
                else:
                    # Applied in memory at once: no task of its own to shield.
                    self._apply_to_session(session, request)
            await reports.drain()
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            raise
        except Exception as exc:
            return _report_failed(session, exc)
        finally:
            session.close()
        return None

    def _apply_to_session(self, session: AgentSession, request: pb.ConnectRequest) -> None:
        """A message that is not a report about a run: credit, heartbeat, a second Hello."""
        kind = request.WhichOneof("message")
        if kind == "credit":
            if request.credit.credits < 1 or request.credit.credits > MAX_CAPACITY:
                log.warning("agent %s sent an invalid credit grant", session.agent_name)
                return
            session.credits = min(MAX_CAPACITY, session.credits + request.credit.credits)
            self._notifier.wake_dispatcher()
        elif kind == "hello":
            log.warning("agent %s sent a second Hello; ignored", session.agent_name)

    async def _apply(self, session: AgentSession, request: pb.ConnectRequest) -> None:
        """A report about a run (one of ``RUN_REPORTS``)."""
        kind = request.WhichOneof("message")
        if kind == "accepted":
            accepted = request.accepted
            at = (
                convert.from_timestamp(accepted.receive_time, "accepted.receive_time")
                if accepted.HasField("receive_time")
                else clock.now()
            )
            await self._reports.accepted(session, accepted.run_id, accepted.attempt, at)
        elif kind == "submitted":
            submitted = request.submitted
            await self._reports.submitted(
                session,
                submitted.run_id,
                submitted.attempt,
                # The id is also quoted in the run's state message: keep both bounded.
                convert.storable(submitted.infrastructure_id[:MAX_INFRASTRUCTURE_ID_CHARS]),
            )
        elif kind == "submit_failed":
            failed = request.submit_failed
            await self._reports.submit_failed(
                session, failed.run_id, failed.attempt, convert.storable(failed.reason[:2000])
            )
        elif kind == "infra_event":
            event = request.infra_event
            infra_kind = INFRA_KINDS.get(event.kind)
            if infra_kind is None:
                return
            await self._reports.infra_event(
                session,
                InfraReport(
                    run_id=event.run_id,
                    attempt=event.attempt,
                    kind=infra_kind,
                    reason=convert.storable(event.reason[:200]),
                    message=convert.storable(event.message[:2000]),
                    exit_code=event.exit_code,
                    log_tail=tuple(convert.storable(line[:2000]) for line in event.log_tail[-200:]),
                    gave_up=event.gave_up,
                ),
            )
        elif kind == "cancelled":
            await self._reports.cancelled(
                session, request.cancelled.run_id, request.cancelled.attempt
            )


#: The reports about one run, which ``_RunReports`` applies in order within each run.
RUN_REPORTS = frozenset({"accepted", "submitted", "submit_failed", "infra_event", "cancelled"})
#: Reports of one agent being applied at once; past it, its stream is not read further until
#: one is done.
MAX_REPORTS_IN_FLIGHT = 64


class _RunReports:
    """An agent's reports about its runs, applied at once across runs, in order within one.

    One agent serves a whole pool, so its one stream carries the confirmations and events of
    every run it starts. Applied one after another, each waiting for a commit of its own,
    they fell behind the runs' engines, which report on streams of their own: under load an
    agent's Accepted reached the server after its run had COMPLETED, and the credit the agent
    gave back waited behind them. A report waits only for the previous report on its run.
    """

    def __init__(self, db: Database, session: AgentSession) -> None:
        self._db = db
        self._session = session
        self._room = asyncio.Semaphore(MAX_REPORTS_IN_FLIGHT)
        #: The last report of each run still being applied.
        self._last: dict[str, asyncio.Future[None]] = {}
        self._in_flight: set[asyncio.Future[None]] = set()
        #: What a report raised that ends the stream (``_report_failed``): the session is
        #: closed and the stream ends with it.
        self.failure: Exception | None = None

    async def add(self, run_id: str, report: Coroutine[Any, Any, None]) -> None:
        """Apply ``report`` once the reports on ``run_id`` before it are applied."""
        await self._room.acquire()
        task = self._db.background(_after(self._last.get(run_id), report))
        self._last[run_id] = task
        self._in_flight.add(task)
        task.add_done_callback(functools.partial(self._done, run_id))

    async def drain(self) -> None:
        """Wait until every report added so far is applied."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight))

    def _done(self, run_id: str, task: asyncio.Future[None]) -> None:
        self._room.release()
        self._in_flight.discard(task)
        if self._last.get(run_id) is task:
            del self._last[run_id]
        error = None if task.cancelled() else task.exception()
        if error is None:
            return
        self.failure = self.failure or _report_failed(self._session, error)
        self._session.close()


def _report_failed(session: AgentSession, error: BaseException) -> Exception | None:
    """Say why what the agent sent could not be applied; the error its stream ends with: the
    agent's own when it sent something invalid, the database's when it could not apply the
    report now (UNAVAILABLE, logged in one line as the call ends: the agent reconnects and
    re-sends), None for our own failure (the stream just ends)."""
    if isinstance(error, FlowyardError):
        log.warning("agent %s sent an invalid report: %s", session.agent_name, error)
        return error
    if isinstance(error, Exception) and unavailable(error):
        return error
    # The agent reconnects and re-sends its reports; end this session cleanly.
    log.error(
        "agent %s: applying a report failed; ending the session",
        session.agent_name,
        exc_info=error,
    )
    return None


async def _after(previous: asyncio.Future[None] | None, report: Coroutine[Any, Any, None]) -> None:
    try:
        if previous is not None:
            await asyncio.wait([previous])
    except BaseException:
        report.close()
        raise
    await report


def _outgoing(message: Outgoing) -> pb.ConnectResponse:
    if isinstance(message, AssignMessage):
        return pb.ConnectResponse(
            assign=pb.Assign(
                run_id=message.run_id,
                attempt=message.attempt,
                lease_deadline=convert.timestamp(message.lease_deadline),
                deployment_name=message.deployment_name,
                flow_name=message.flow_name,
                base_job_template_json=message.base_job_template_json,
                job_variables_json=compact_json(message.job_variables),
                engine_token=message.engine_token,
                secret_env=[
                    pb.SecretEnv(name=name, secret_name=secret, secret_key=key)
                    for name, secret, key in message.secret_env
                ],
            )
        )
    assert isinstance(message, CancelMessage)
    return pb.ConnectResponse(
        cancel=pb.Cancel(run_id=message.run_id, attempt=message.attempt, reason=message.reason)
    )


def _duration(value: timedelta) -> Duration:
    duration = Duration()
    duration.FromTimedelta(value)
    return duration
