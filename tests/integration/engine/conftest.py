"""A fake control plane for the engine: an ``EngineService`` on a real ``grpc.aio`` server.

The fake keeps just enough state to check the engine's side of the protocol: the run's
state (with the transition rules the engine relies on), log lines stored by seq with the
highest contiguous seq acknowledged, every proposal, and the open Report sessions so that a
test can push ``CancelFlow`` or break a stream.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.duration_pb2 import Duration

from flowyard.v1 import engine_pb2, engine_pb2_grpc, types_pb2

RUN_ID = "0123456789abcdef0123456789abcdef"
TOKEN = "engine-token-for-tests"
REPO_ROOT = Path(__file__).resolve().parents[3]

_ALLOWED_FROM: dict[int, set[int]] = {
    types_pb2.STATE_TYPE_RUNNING: {types_pb2.STATE_TYPE_PENDING},
    types_pb2.STATE_TYPE_COMPLETED: {types_pb2.STATE_TYPE_PENDING, types_pb2.STATE_TYPE_RUNNING},
    types_pb2.STATE_TYPE_FAILED: {types_pb2.STATE_TYPE_PENDING, types_pb2.STATE_TYPE_RUNNING},
    types_pb2.STATE_TYPE_CANCELLED: {types_pb2.STATE_TYPE_CANCELLING},
}

_ABORT = object()


@dataclass
class _Session:
    outbox: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)


class FakeEngineService(engine_pb2_grpc.EngineServiceServicer):
    """The control plane's side of the engine protocol, in memory."""

    def __init__(self, source_dir: Path) -> None:
        self.source_dir = source_dir
        self.entrypoint = "flow.py:main"
        self.parameters_json = "{}"
        self.attempt = 1
        self.heartbeat_interval = 0.2
        self.start_run_error: grpc.StatusCode | None = None
        self.state = types_pb2.STATE_TYPE_PENDING
        self.lines: dict[int, types_pb2.LogLine] = {}
        self.duplicates = 0
        self.acked = 0
        self.proposals: list[engine_pb2.ProposeState] = []
        self.results: dict[str, engine_pb2.StateResult] = {}
        self.lines_at_proposal: dict[str, int] = {}
        self.heartbeats = 0
        self.opens = 0
        self.break_after_lines: int | None = None
        self.broken = False
        self.sessions: list[_Session] = []
        self._changed = asyncio.Condition()

    # -- test helpers --------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], bool], within: float = 30.0) -> None:
        """Wait until ``predicate()`` holds, re-checked whenever the fake's state changes.

        A predicate that raises (it indexes what is not there yet) is asked again on the next
        change; at the deadline its last error is raised again.
        """
        raised: list[Exception] = []

        def holds() -> bool:
            raised.clear()
            try:
                return bool(predicate())
            except Exception as error:
                raised.append(error)
                return False

        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(holds), within)
        except TimeoutError:
            if raised:
                raised[0].add_note(f"(still raised after {within} s of waiting)")
                raise raised[0] from None
            raise

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def texts(self, stream: int | None = None) -> list[str]:
        """Stored line texts in seq order, optionally of one stream."""
        return [
            line.text
            for _, line in sorted(self.lines.items())
            if stream is None or line.stream == stream
        ]

    def proposed_types(self) -> list[int]:
        """The proposed state types, in arrival order, without repeats of one transition."""
        seen: set[str] = set()
        types: list[int] = []
        for proposal in self.proposals:
            if proposal.transition_id not in seen:
                seen.add(proposal.transition_id)
                types.append(proposal.type)
        return types

    def last_proposal(self, state_type: int) -> engine_pb2.ProposeState:
        """The last proposal of ``state_type``."""
        return [p for p in self.proposals if p.type == state_type][-1]

    async def cancel(self, reason: str = "cancelled by a test") -> None:
        """Move the run to CANCELLING and push CancelFlow on the open session."""
        self.state = types_pb2.STATE_TYPE_CANCELLING
        message = engine_pb2.ReportResponse(cancel=engine_pb2.CancelFlow(reason=reason))
        for session in self.sessions:
            await session.outbox.put(message)

    # -- EngineService -------------------------------------------------------------------

    def _check_token(self, context: grpc.aio.ServicerContext[Any, Any]) -> bool:
        metadata = dict(context.invocation_metadata() or ())
        return metadata.get("authorization") == f"Bearer {TOKEN}"

    async def StartRun(
        self,
        request: engine_pb2.StartRunRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> engine_pb2.StartRunResponse:
        if not self._check_token(context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad token")
        if self.start_run_error is not None:
            await context.abort(self.start_run_error, "the attempt is not the run's current one")
        interval = Duration()
        interval.FromNanoseconds(int(self.heartbeat_interval * 1e9))
        return engine_pb2.StartRunResponse(
            run=types_pb2.FlowRun(
                id=request.run_id,
                attempt=request.attempt,
                flow_name=self.entrypoint.rpartition(":")[2],
                parameters_json=self.parameters_json,
                state=types_pb2.RunState(type=self.state),
            ),
            entrypoint=self.entrypoint,
            source=types_pb2.Source(local=types_pb2.LocalSource(path=str(self.source_dir))),
            heartbeat_interval=interval,
        )

    async def Report(
        self,
        request_iterator: Any,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[engine_pb2.ReportResponse]:
        if not self._check_token(context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad token")
        first = await request_iterator.__anext__()
        assert first.WhichOneof("message") == "open", first
        assert first.open.run_id == RUN_ID and first.open.attempt == self.attempt
        self.opens += 1
        session = _Session()
        self.sessions.append(session)
        reader = asyncio.create_task(self._read(request_iterator, session), name="fake-reader")
        try:
            yield engine_pb2.ReportResponse(
                opened=engine_pb2.Opened(
                    stored_seq=self.acked, state=types_pb2.RunState(type=self.state)
                )
            )
            await self._notify()
            while True:
                message = await session.outbox.get()
                if message is None:
                    return
                if message is _ABORT:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "injected stream failure")
                yield message
        finally:
            self.sessions.remove(session)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _read(self, request_iterator: Any, session: _Session) -> None:
        async for request in request_iterator:
            kind = request.WhichOneof("message")
            if kind == "log_batch":
                if (
                    self.break_after_lines is not None
                    and not self.broken
                    and len(self.lines) + len(request.log_batch.lines) > self.break_after_lines
                ):
                    # Lose this batch and break the stream: the engine must resend it.
                    self.broken = True
                    await session.outbox.put(_ABORT)
                    await self._notify()
                    return
                for line in request.log_batch.lines:
                    if line.seq in self.lines:
                        self.duplicates += 1
                    else:
                        self.lines[line.seq] = line
                while self.acked + 1 in self.lines:
                    self.acked += 1
                await session.outbox.put(
                    engine_pb2.ReportResponse(log_ack=engine_pb2.LogAck(stored_seq=self.acked))
                )
            elif kind == "propose_state":
                await session.outbox.put(
                    engine_pb2.ReportResponse(state_result=self._propose(request.propose_state))
                )
            elif kind == "heartbeat":
                self.heartbeats += 1
            await self._notify()
        await session.outbox.put(None)
        await self._notify()

    def _propose(self, proposal: engine_pb2.ProposeState) -> engine_pb2.StateResult:
        self.proposals.append(proposal)
        known = self.results.get(proposal.transition_id)
        if known is not None:
            return known
        accepted = self.state in _ALLOWED_FROM.get(proposal.type, set())
        reason = ""
        if accepted:
            self.state = proposal.type
        else:
            reason = (
                f"cannot go from {types_pb2.StateType.Name(self.state)} "
                f"to {types_pb2.StateType.Name(proposal.type)}"
            )
        self.lines_at_proposal[proposal.transition_id] = len(self.lines)
        result = engine_pb2.StateResult(
            transition_id=proposal.transition_id,
            accepted=accepted,
            state=types_pb2.RunState(type=self.state, message=proposal.message),
            reason=reason,
        )
        self.results[proposal.transition_id] = result
        return result


@dataclass
class EngineProcess:
    """A finished engine subprocess."""

    returncode: int
    stdout: str
    stderr: str


class EngineHarness:
    """Starts the real engine as a subprocess against the fake."""

    def __init__(self, fake: FakeEngineService, address: str) -> None:
        self.fake = fake
        self.address = address
        self.processes: list[asyncio.subprocess.Process] = []

    def env(self, **overrides: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            FLOWYARD_SERVER=self.address,
            FLOWYARD_RUN_ID=RUN_ID,
            FLOWYARD_RUN_ATTEMPT=str(self.fake.attempt),
            FLOWYARD_RUN_TOKEN=TOKEN,
            PYTHONUNBUFFERED="1",
        )
        env.update(overrides)
        return env

    async def start(self, **env: str) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "engine.main",
            "execute",
            RUN_ID,
            env=self.env(**env),
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self.processes.append(process)
        return process

    async def finish(
        self, process: asyncio.subprocess.Process, within: float = 60.0
    ) -> EngineProcess:
        stdout, stderr = await asyncio.wait_for(process.communicate(), within)
        assert process.returncode is not None
        return EngineProcess(process.returncode, stdout.decode(), stderr.decode())

    async def run(self, within: float = 60.0, **env: str) -> EngineProcess:
        return await self.finish(await self.start(**env), within)


@pytest.fixture
def flow_dir(tmp_path: Path) -> Path:
    """The source directory the fake's runs point at."""
    directory = tmp_path / "src"
    directory.mkdir()
    return directory


@pytest.fixture
async def engine(flow_dir: Path) -> AsyncIterator[EngineHarness]:
    """A fake EngineService on a real grpc.aio server, and a way to start engines on it."""
    fake = FakeEngineService(flow_dir)
    server = grpc.aio.server()
    engine_pb2_grpc.add_EngineServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    harness = EngineHarness(fake, f"127.0.0.1:{port}")
    try:
        yield harness
    finally:
        leaked = [p for p in harness.processes if p.returncode is None]
        for process in leaked:
            process.send_signal(signal.SIGKILL)
            await process.wait()
        await server.stop(grace=None)
        assert not leaked, "an engine process outlived its test"
