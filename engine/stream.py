"""The Report stream across reconnects: one reconnect loop around one session at a time.

Everything here runs on the reporter thread's event loop (see :mod:`engine.reporter`), so
its state needs no locks. A session is one ``EngineService.Report`` call: Open, wait for
Opened, then a reader task (acknowledgements, state results, cancel) and a writer task (the
outbox of proposals, log batches, heartbeats) until one of them ends the call. After a break
the loop waits a jittered exponential delay and opens a new session, which resends the
unacknowledged lines after ``Opened.stored_seq`` and every unanswered proposal with its
original transition id.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import grpc.aio

from engine.errors import ControlPlaneRejected, ReportError, RunNotStartable
from engine.logbuffer import LogBuffer
from engine.model import OpenedInfo, StateResult, StateType
from engine.settings import EngineSettings
from engine.wire import log_batch_to_proto, opened_from_proto, state_result_from_proto
from flowyard.v1 import engine_pb2, engine_pb2_grpc

__all__ = ["FATAL_CODES", "Proposal", "ReportStream", "backoff_delay"]

logger = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str], ...]
_Call = grpc.aio.StreamStreamCall[engine_pb2.ReportRequest, engine_pb2.ReportResponse]

FATAL_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)
"""Status codes no retry can fix: the token, the request or the server's API is wrong."""


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**(failures-1))]."""
    bound = min(cap, base * 2 ** max(0, failures - 1))
    return random.uniform(0, bound)


def refusal(code: grpc.StatusCode, details: str | None, what: str) -> ReportError:
    """The error for a fatal status: a stale attempt is :class:`RunNotStartable`."""
    error_type = (
        RunNotStartable if code is grpc.StatusCode.FAILED_PRECONDITION else ControlPlaneRejected
    )
    return error_type(f"{what} was refused: {code.name}: {details}")


class _StreamBroken(Exception):
    """The Report stream ended or failed in a way a reconnect may fix."""


@dataclass
class Proposal:
    """A state proposal waiting for its StateResult."""

    request: engine_pb2.ReportRequest
    future: concurrent.futures.Future[StateResult]


class ReportStream:
    """Keeps a Report session open until stopped or refused for good."""

    def __init__(
        self,
        stub: engine_pb2_grpc.EngineServiceAsyncStub,
        settings: EngineSettings,
        buffer: LogBuffer,
        *,
        metadata: Metadata,
        on_opened: Callable[[OpenedInfo], None],
        on_cancel: Callable[[str], None],
    ) -> None:
        self._stub = stub
        self._settings = settings
        self._timeouts = settings.timeouts
        self._buffer = buffer
        self._metadata = metadata
        self._on_opened = on_opened
        self._on_cancel = on_cancel
        self.wake = asyncio.Event()
        """Set to make the writer look at the buffer, the outbox and its timers now."""
        self.stopping = asyncio.Event()
        self.last_error = "no connection attempt yet"
        self._proposals: dict[str, Proposal] = {}
        self._outbox: deque[engine_pb2.ReportRequest] | None = None
        self._heartbeat_interval: float | None = None

    def add_proposal(self, transition_id: str, proposal: Proposal) -> None:
        """Send ``proposal`` now if a session is open, else on the next one."""
        self._proposals[transition_id] = proposal
        if self._outbox is not None:
            self._outbox.append(proposal.request)
            self.wake.set()

    def set_heartbeat_interval(self, seconds: float) -> None:
        """Heartbeat every ``seconds`` from now on."""
        self._heartbeat_interval = seconds
        self.wake.set()

    def fail_proposals(self, error: ReportError) -> None:
        """Answer every waiting proposal with ``error``."""
        for proposal in self._proposals.values():
            if not proposal.future.done():
                proposal.future.set_exception(error)
        self._proposals.clear()

    async def run(self) -> None:
        """The reconnect loop. Returns when stopped.

        Raises:
            ReportError: the stream was refused for good (auth, stale attempt, protocol).
        """
        failures = 0
        while not self.stopping.is_set():
            opened = False
            try:
                opened = await self._session()
            except grpc.aio.AioRpcError as exc:
                if exc.code() in FATAL_CODES:
                    raise refusal(exc.code(), exc.details(), "the Report stream") from None
                self.last_error = f"{exc.code().name}: {exc.details()}"
            except _StreamBroken as exc:
                self.last_error = str(exc)
            if self.stopping.is_set():
                return
            failures = 1 if opened else failures + 1
            delay = backoff_delay(failures, self._timeouts.backoff_base, self._timeouts.backoff_cap)
            logger.warning(
                "Report stream to %s broken (%s); reconnecting in %.2f s",
                self._settings.server,
                self.last_error,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.stopping.wait()

    async def _session(self) -> bool:
        """One Report call, from Open to its end. Returns whether it was opened."""
        call: _Call = self._stub.Report(None, metadata=self._metadata)
        opened = False
        tasks: list[asyncio.Task[object]] = []
        try:
            await call.write(
                engine_pb2.ReportRequest(
                    open=engine_pb2.Open(
                        run_id=self._settings.run_id, attempt=self._settings.attempt
                    )
                )
            )
            await self._wait_opened(call)
            opened = True
            tasks = [
                asyncio.create_task(self._read(call), name="flowyard-report-reader"),
                asyncio.create_task(self._write(call), name="flowyard-report-writer"),
                asyncio.create_task(self.stopping.wait(), name="flowyard-report-stop"),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if tasks[2] in done:
                await self._close(call, tasks[0])
                return opened
            for task in done:
                task.result()  # raises what ended the session
            raise _StreamBroken("the Report stream ended")
        except (grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
            # Writing to a call that already ended: its status says why.
            raise _StreamBroken(f"{await _status_text(call)} ({exc})") from None
        finally:
            self._outbox = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            call.cancel()

    async def _wait_opened(self, call: _Call) -> None:
        try:
            # A server that accepts the stream but never answers must not hang us.
            async with asyncio.timeout(self._timeouts.connect):
                first = await call.read()
        except TimeoutError:
            raise _StreamBroken(
                f"no Opened within {self._timeouts.connect:g} s of opening the stream"
            ) from None
        if not isinstance(first, engine_pb2.ReportResponse):
            raise _StreamBroken(f"the stream ended before Opened ({await _status_text(call)})")
        kind = first.WhichOneof("message")
        if kind != "opened":
            raise ControlPlaneRejected(f"protocol error: expected Opened, got {kind}")
        info = opened_from_proto(first.opened)
        self._buffer.opened(info.stored_seq)
        # Unanswered proposals go first: they were made before anything written since.
        self._outbox = deque(proposal.request for proposal in self._proposals.values())
        self._on_opened(info)
        if info.state is StateType.CANCELLING:
            self._on_cancel("the run is being cancelled")

    async def _close(self, call: _Call, reader: asyncio.Task[object]) -> None:
        """Half-close the stream and give the server the grace period to end it."""
        with contextlib.suppress(
            grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError
        ):
            await call.done_writing()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self._timeouts.stop_grace):
                await asyncio.shield(reader)

    async def _read(self, call: _Call) -> object:
        while True:
            response = await call.read()
            if not isinstance(response, engine_pb2.ReportResponse):
                raise _StreamBroken(f"the stream ended ({await _status_text(call)})")
            kind = response.WhichOneof("message")
            if kind == "log_ack":
                self._buffer.ack(response.log_ack.stored_seq)
                self.wake.set()  # the in-flight window may have room again
            elif kind == "state_result":
                proposal = self._proposals.pop(response.state_result.transition_id, None)
                if proposal is not None and not proposal.future.done():
                    proposal.future.set_result(state_result_from_proto(response.state_result))
            elif kind == "cancel":
                self._on_cancel(response.cancel.reason or "the run was cancelled")

    async def _write(self, call: _Call) -> object:
        assert self._outbox is not None
        outbox = self._outbox
        next_heartbeat = time.monotonic()
        while True:
            self.wake.clear()
            while outbox:
                await call.write(outbox.popleft())
            interval = self._heartbeat_interval
            now = time.monotonic()
            if interval is not None and now >= next_heartbeat:
                await call.write(engine_pb2.ReportRequest(heartbeat=engine_pb2.EngineHeartbeat()))
                next_heartbeat = now + interval
            delay = self._buffer.batch_delay()
            if delay == 0:
                batch = self._buffer.next_batch()
                if batch:
                    await call.write(log_batch_to_proto(batch))
                    continue
            waits = [t for t in (delay, interval and next_heartbeat - now) if t]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(waits) if waits else None):
                    await self.wake.wait()


async def _status_text(call: _Call) -> str:
    try:
        async with asyncio.timeout(1.0):
            code = await call.code()
        async with asyncio.timeout(1.0):
            details = await call.details()
    except Exception:
        return "status unknown"
    return f"{code.name}: {details}"
