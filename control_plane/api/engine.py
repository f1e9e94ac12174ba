"""The ``EngineService`` servicer: the engine of one run attempt, authenticated by its token
(verified by ``control_plane.api.authentication``; the servicer checks the attempt it names).

``Report`` handles one engine stream with a reader task (state proposals, log batches,
heartbeats) and a watcher task that pushes ``CancelFlow`` as soon as the run is CANCELLING
and ends the stream when the attempt ends under it; both feed one queue that the handler
drains onto the wire, in order.

What a stream writes is a unit of a group commit (``Database.unit``, ``GroupCommit``), which
is stored even when the stream ends while it waits: a message's work needs no task of its
own to survive its stream (``Database.shielded``), and its reads may stop half-way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from typing import Any

from google.protobuf.duration_pb2 import Duration

from control_plane import metrics
from control_plane.api import convert
from control_plane.api.errors import streaming, unary
from control_plane.auth.principals import caller
from control_plane.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from control_plane.models import LogRecord, LogStream, Run, WireBatch
from control_plane.orchestration import attempts, clock, validation
from control_plane.orchestration.catalog import Catalog
from control_plane.orchestration.children import ChildRuns
from control_plane.orchestration.reports import EngineReports, Proposal
from control_plane.orchestration.signals import Signals, Tap, run_key, wait_or_recheck
from control_plane.states import StateType
from control_plane.store import catalog as catalog_repo
from control_plane.store import line_messages
from control_plane.store.db import Database
from control_plane.store.runs import AttemptWatch
from flowyard.v1 import engine_pb2 as pb
from flowyard.v1 import engine_pb2_grpc as pb_grpc
from flowyard_common.aiotasks import cancel_and_wait
from flowyard_common.loglines import MAX_LINE_BYTES, truncate_line

Context = Any
OPEN_TIMEOUT_SECONDS = 30.0
MAX_BATCH_LINES = 10_000
#: Sizes of the columns that proposals and log lines are stored in.
MAX_TRANSITION_ID_CHARS = 64
MAX_STATE_NAME_CHARS = 64
MAX_SOURCE_REVISION_CHARS = 128
MAX_STATE_MESSAGE_CHARS = 100_000
MAX_LOGGER_CHARS = 200

#: What the reader and the watcher hand the stream: an answer, the error that ends the stream
#: (a domain error's status; UNAVAILABLE for a database that could not do the work now, so the
#: engine reconnects and resends; INTERNAL for a bug: ``api.errors.streaming``), or its end.
Outgoing = pb.ReportResponse | Exception | None


class EngineServicer(pb_grpc.EngineServiceServicer):
    """Engines of running attempts."""

    def __init__(
        self,
        db: Database,
        catalog: Catalog,
        reports: EngineReports,
        signals: Signals,
        heartbeat: timedelta,
        children: ChildRuns,
    ) -> None:
        self._db = db
        self._catalog = catalog
        self._reports = reports
        self._children = children
        self._signals = signals
        self._heartbeat = heartbeat

    async def _authorize(self, run_id: str, attempt: int, field: str) -> Run:
        """The run, if the caller's engine token is that of this run's current attempt.

        The token itself was verified by the auth interceptor before anything else, so a
        caller without a valid token never learns whether a run exists.
        """
        principal = caller()
        validation.run_id(run_id, f"{field}run_id")
        if attempt < 1:
            raise InvalidArgument(f"{field}attempt: must be 1 or more, got {attempt}")
        if (run_id, attempt) != (principal.run_id, principal.attempt):
            raise PermissionDenied(
                f"{field}run_id: {principal.describe()} may not report for run {run_id} "
                f"attempt {attempt}"
            )
        # The token's check read the run, and found its attempt current and not ended.
        assert principal.run is not None
        return principal.run

    @unary
    async def StartRun(self, request: pb.StartRunRequest, context: Context) -> pb.StartRunResponse:
        run = await self._authorize(request.run_id, request.attempt, "")
        async with self._db.read() as conn:
            deployment = await catalog_repo.get_deployment(conn, id=run.deployment_id)
        if deployment is None:
            raise NotFound(f"the deployment of run {run.id} no longer exists")
        heartbeat = Duration()
        heartbeat.FromTimedelta(self._heartbeat)
        return pb.StartRunResponse(
            run=convert.run_to_proto(run),
            entrypoint=deployment.entrypoint,
            source=convert.source_to_proto(deployment.source),
            heartbeat_interval=heartbeat,
        )

    @unary
    async def StartChildRun(
        self, request: pb.StartChildRunRequest, context: Context
    ) -> pb.StartChildRunResponse:
        parent = await self._authorize(request.run_id, request.attempt, "")
        kind = request.WhichOneof("child")
        if kind == "subflow_name":
            run = await self._children.start_subflow(
                parent,
                request.within_run_id,
                request.key,
                request.subflow_name,
                request.parameters_json,
            )
        elif kind == "deployment_name":
            run = await self._children.start_deployment_run(
                parent,
                request.within_run_id,
                request.key,
                request.deployment_name,
                request.parameters_json,
                request.cancel_with_parent,
            )
        else:
            raise InvalidArgument("child: give subflow_name or deployment_name")
        return pb.StartChildRunResponse(run=convert.run_to_proto(run))

    @unary
    async def EndSubflow(
        self, request: pb.EndSubflowRequest, context: Context
    ) -> pb.EndSubflowResponse:
        parent = await self._authorize(request.run_id, request.attempt, "")
        run = await self._children.end_subflow(
            parent,
            request.subflow_run_id,
            convert.state_type(request.type, "type"),
            convert.storable(request.message),
            convert.storable(request.result_summary),
        )
        return pb.EndSubflowResponse(run=convert.run_to_proto(run))

    @streaming
    async def WatchChildRun(
        self, request: pb.WatchChildRunRequest, context: Context
    ) -> AsyncIterator[pb.WatchChildRunResponse]:
        parent = await self._authorize(request.run_id, request.attempt, "")
        child = await self._children.child(parent, request.child_run_id)
        last_version = -1
        while True:
            with self._signals.waiting(run_key(child.id)) as changed:
                child = await self._db.shielded(self._children.child(parent, child.id))
                if child.version == last_version:
                    await wait_or_recheck(changed)
                    continue
            last_version = child.version
            yield pb.WatchChildRunResponse(run=convert.run_to_proto(child))
            if child.is_terminal:
                return

    @streaming
    async def Report(
        self, request_iterator: AsyncIterator[pb.ReportRequest], context: Context
    ) -> AsyncIterator[pb.ReportResponse]:
        try:
            async with asyncio.timeout(OPEN_TIMEOUT_SECONDS):
                first = await anext(request_iterator)
        except (StopAsyncIteration, TimeoutError):
            raise InvalidArgument("the first message of Report must be Open") from None
        if first.WhichOneof("message") != "open":
            raise InvalidArgument("the first message of Report must be Open")
        run = await self._authorize(first.open.run_id, first.open.attempt, "open.")
        # Tapped before the open reads what the watch starts from: no change after it is
        # missed.
        with self._signals.tapping(run_key(run.id)) as tap:
            stored, current = await self._reports.open(run)
            metrics.ENGINE_STREAMS.inc()
            try:
                yield pb.ReportResponse(
                    opened=pb.Opened(stored_seq=stored, state=convert.current_state(run))
                )
                out: asyncio.Queue[Outgoing] = asyncio.Queue()
                # Transition ids this stream proposed: the end they bring is the engine's own doing.
                own: set[str] = set()
                known = _Known(run)
                tasks = [
                    asyncio.create_task(
                        self._read(request_iterator, run, stored, own, known, out),
                        name=f"engine-reader-{run.id}",
                    ),
                    asyncio.create_task(
                        _ending_with(out, self._watch(run, own, known, out, tap, current)),
                        name=f"engine-watch-{run.id}",
                    ),
                ]
                try:
                    while (message := await out.get()) is not None:
                        if isinstance(message, Exception):
                            raise message
                        yield message
                finally:
                    await cancel_and_wait(tasks)
                    for task in tasks:
                        if not task.cancelled():
                            task.result()  # what made a helper end early is this call's failure
            finally:
                metrics.ENGINE_STREAMS.dec()

    async def _read(
        self,
        requests: AsyncIterator[pb.ReportRequest],
        run: Run,
        stored: int,
        own: set[str],
        known: _Known,
        out: asyncio.Queue[Outgoing],
    ) -> None:
        subflows: set[str] = set()  # subflow runs of this attempt, checked once each
        try:
            async for request in requests:
                kind = request.WhichOneof("message")
                if kind == "log_batch":
                    stored = await self._store(run, request.log_batch, stored, subflows)
                    out.put_nowait(pb.ReportResponse(log_ack=pb.LogAck(stored_seq=stored)))
                elif kind == "propose_state":
                    own.add(request.propose_state.transition_id)
                    answer, committed = await self._propose(run, known.run, request.propose_state)
                    if committed is not None:
                        known.saw(committed)
                    out.put_nowait(answer)
                elif kind == "heartbeat":
                    self._reports.heartbeat(run)
        except Unauthenticated as exc:
            # The attempt ended under the stream (a refused log batch or heartbeat): as when
            # the watcher sees the end first, the engine is told to stop, then refused.
            out.put_nowait(pb.ReportResponse(cancel=pb.CancelFlow(reason=str(exc))))
            out.put_nowait(exc)
        except Exception as exc:
            # Ends the stream with the error's status once what was answered before is sent.
            out.put_nowait(exc)
        finally:
            out.put_nowait(None)

    async def _store(self, run: Run, batch: pb.LogBatch, stored: int, subflows: set[str]) -> int:
        records = _new_lines(run, batch, stored)
        named = {record.subflow_run for record in records if record.subflow_run}
        if not named <= subflows:
            await self._children.check_subflows(run, named - subflows)
            subflows |= named
        if records:
            await self._reports.store_logs(run, records)
            stored = records[-1].seq
        return stored

    async def _propose(
        self, run: Run, known: Run, message: pb.ProposeState
    ) -> tuple[pb.ReportResponse, Run | None]:
        """The answer to a proposal, and the run it committed if it was accepted."""
        try:
            proposed = convert.state_type(message.type, "propose_state.type")
        except InvalidArgument as exc:
            return pb.ReportResponse(
                state_result=pb.StateResult(
                    transition_id=message.transition_id, accepted=False, reason=str(exc)
                )
            ), None
        problem = None
        if len(message.transition_id) > MAX_TRANSITION_ID_CHARS:
            problem = f"transition_id: longer than {MAX_TRANSITION_ID_CHARS} characters"
        elif len(message.name) > MAX_STATE_NAME_CHARS:
            problem = f"name: longer than {MAX_STATE_NAME_CHARS} characters"
        elif len(message.source_revision) > MAX_SOURCE_REVISION_CHARS:
            problem = f"source_revision: longer than {MAX_SOURCE_REVISION_CHARS} characters"
        if problem is not None:
            current = await self._reports.current(run.id)
            return pb.ReportResponse(
                state_result=pb.StateResult(
                    # The engine matches answers to its proposals by this id: echo it whole.
                    transition_id=message.transition_id,
                    accepted=False,
                    state=convert.current_state(current or run),
                    reason=f"propose_state.{problem}",
                )
            ), None
        result = await self._reports.propose(
            run.id,
            run.attempt,
            Proposal(
                transition_id=convert.storable(message.transition_id),
                type=proposed,
                name=convert.storable(message.name),
                message=convert.storable(message.message[:MAX_STATE_MESSAGE_CHARS]),
                result_summary=convert.storable(message.result_summary),
                source_revision=convert.storable(message.source_revision),
            ),
            known,
        )
        answer = pb.ReportResponse(
            state_result=pb.StateResult(
                transition_id=message.transition_id,
                accepted=result.accepted,
                state=convert.current_state(result.run),
                reason=result.reason,
            )
        )
        return answer, result.run if result.accepted else None

    async def _watch(
        self,
        run: Run,
        own: set[str],
        known: _Known,
        out: asyncio.Queue[Outgoing],
        tap: Tap,
        current: AttemptWatch | None,
    ) -> None:
        """Push CancelFlow once the run is CANCELLING; end the stream once its attempt ends.

        An attempt that ends while its engine's stream is open (the run CRASHED because its
        infrastructure was deleted, a cancel was forced, the attempt was handed back) is
        treated like any later call with its token: the engine gets ``CancelFlow`` with the
        reason, so the flow stops, and then the stream ends ``UNAUTHENTICATED``; its log
        batches are refused from then on (``EngineReports.store_logs``). An end the engine
        proposed itself is its answer, not a refusal: it closes the stream on its own.
        """
        cancel_sent = False
        while True:
            why = (
                "the run no longer exists"
                if current is None
                else attempts.ended_at(run.id, run.attempt, current.attempt, current.state_type)
            )
            if why:
                if current is not None and current.last_transition_id in own:
                    return
                out.put_nowait(pb.ReportResponse(cancel=pb.CancelFlow(reason=why)))
                out.put_nowait(Unauthenticated(why))
                return
            assert current is not None
            if current.state_type is StateType.CANCELLING and not cancel_sent:
                cancel_sent = True
                out.put_nowait(
                    pb.ReportResponse(cancel=pb.CancelFlow(reason=current.state_message))
                )
            await tap.event.wait()
            notified, news = tap.taken()
            if notified == 1 and isinstance(news, Run) and news.version == current.version + 1:
                # One change since the last look, made here, and the very next version
                # (a compare-and-set on this one): the run is what it committed.
                current = AttemptWatch.of(news)
                known.saw(news)
            else:
                current = await self._reports.watched(run.id)


async def _ending_with(out: asyncio.Queue[Outgoing], work: Awaitable[None]) -> None:
    """Do ``work``; should it fail, the stream ends with its error."""
    try:
        await work
    except Exception as exc:
        out.put_nowait(exc)


class _Known:
    """The run as an engine's stream last saw it committed: what its token check read, then
    the results of its accepted proposals and the changes its watch took from their commits
    (an agent's Submitted, say). Its proposals are applied to it while its version proves it
    current (``EngineReports.propose``)."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def saw(self, run: Run) -> None:
        """``run`` was committed: keep it if it is newer than what is known."""
        if run.version > self.run.version:
            self.run = run


def _where(index: int) -> str:
    return f"log_batch.lines[{index}]"


#: A text of at most this many characters fits in MAX_LINE_BYTES, whatever its characters.
_NEVER_CUT_CHARS = MAX_LINE_BYTES // 4


def _new_lines(run: Run, batch: pb.LogBatch, stored: int) -> list[LogRecord]:
    """The lines of a batch that are not stored yet, checked as a whole before any is stored.

    Lines up to ``stored`` are resends and are dropped; the rest must continue the attempt's
    seqs without a gap, so that the acknowledged seq always means "every line up to here".
    """
    lines = batch.lines
    # What is stored and sent on is what this server knows of a batch: fields of a later
    # version (or of a hostile engine) would be kept in the lines' stored bytes and handed to
    # every reader, and a field 2 of the batch would read as the run's state in a tail's
    # message (0.09 us a line).
    batch.DiscardUnknownFields()
    if len(lines) > MAX_BATCH_LINES:
        raise InvalidArgument(
            f"log_batch.lines: at most {MAX_BATCH_LINES} lines per batch ({len(lines)})"
        )
    run_id, attempt = run.id, run.attempt
    records: list[LogRecord] = []
    append = records.append
    previous = 0
    expected = stored + 1
    wired = 0
    for index, line in enumerate(lines):
        if line.run_id and line.run_id != run_id:
            raise InvalidArgument(
                f"{_where(index)}.run_id: this stream reports run {run_id}; leave run_id empty"
            )
        if line.attempt and line.attempt != attempt:
            raise InvalidArgument(
                f"{_where(index)}.attempt: this stream reports attempt {attempt}; leave attempt 0"
            )
        seq = line.seq
        if seq <= previous:
            if seq < 1:
                raise InvalidArgument(f"{_where(index)}.seq: must be 1 or more, got {seq}")
            raise InvalidArgument(
                f"{_where(index)}.seq: {seq} after {previous}: send lines in seq order"
            )
        previous = seq
        # Resent lines are checked too: a batch is taken or refused as a whole.
        named = line.task_run
        task_run = convert.task_run_name(named, f"{_where(index)}.task_run") if named else ""
        event = (
            convert.task_run_event(line.task_run_event, f"{_where(index)}.task_run_event")
            if line.HasField("task_run_event")
            else None
        )
        if seq <= stored:
            continue
        if seq != expected:
            raise InvalidArgument(
                f"{_where(index)}.seq: expected {expected}, the next after the stored "
                f"{expected - 1}: seqs have no gaps"
            )
        expected += 1
        # A line is stored with what storing changes (rarely anything; each rule checked
        # before the call that applies it, as every line of a chatty run passes here).
        stamped = line.HasField("timestamp")
        if stamped:
            stamp = line.timestamp
            whole_micros = stamp.nanos % 1_000 == 0
            timestamp = line_messages.timestamp_or_none(stamp) or convert.from_timestamp(
                stamp, f"{_where(index)}.timestamp"
            )
        else:
            whole_micros = False
            timestamp = clock.now()
        level, stream, logger, text = line.level, line.stream, line.logger, line.text
        # The engine's own rule: a line stored is never longer than one it sends.
        kept_text = (
            text
            if len(text) <= _NEVER_CUT_CHARS and "\x00" not in text
            else convert.storable(truncate_line(text))
        )
        kept_logger = (
            logger
            if len(logger) <= MAX_LOGGER_CHARS and "\x00" not in logger
            else convert.storable(logger[:MAX_LOGGER_CHARS])
        )
        known_stream = line_messages.LOG_STREAMS_BY_WIRE.get(stream)
        # Levels are informational: an odd number is kept within logging's range.
        in_range = 0 <= level <= 100
        record = LogRecord(
            run_id,
            attempt,
            seq,
            timestamp,
            level if in_range else min(max(level, 0), 100),
            known_stream or LogStream.UNSPECIFIED,
            kept_logger,
            kept_text,
            task_run,
            line.subflow_run,
            event,
        )
        # The message as it came says what a tail sends for the record (nothing changed
        # by storing, a time in whole microseconds, no task-run event): tails send it as
        # it is, once it names its run and attempt.
        if (
            whole_micros
            and event is None
            and in_range
            and known_stream is not None
            and kept_text is text
            and kept_logger is logger
            and task_run is named
        ):
            line.run_id = run_id
            line.attempt = attempt
            record.wire = line
            wired += 1
        append(record)
    if wired == len(lines) and records:
        # Every line is new and kept its message: the batch is stored, and sent, whole.
        whole = WireBatch(batch, records[0].seq, wired)
        for record in records:
            record.batch = whole
    return records
