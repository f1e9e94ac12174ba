"""A real control plane in the test's event loop: grpc.aio on port 0, on each store.

Every test that uses ``plane`` runs twice: on a SQLite file and on PostgreSQL (the ``db_url``
fixture, see ``tests/stores.py``).

The tests talk to it through the generated stubs, playing the agent and the engine where a
test needs to drive the protocol message by message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from control_plane.config import ServerConfig
from control_plane.server import App, build
from flowyard.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    control_plane_pb2,
    control_plane_pb2_grpc,
    engine_pb2,
    engine_pb2_grpc,
    types_pb2,
)
from tests.bearer import admin_token, aio_channel
from tests.hangs import report_hang_after
from tests.stores import count_lines, count_rows
from tests.waiting import eventually

FLOW = """
def hello(name: str, count: int = 1) -> str:
    return name * count
"""
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "count": {"type": "integer", "default": 1}},
    "required": ["name"],
    "additionalProperties": False,
}
RECEIVE_TIMEOUT = 10.0
#: How often a test's agent or engine stream heartbeats when idle: well within the silence
#: the server tolerates (three intervals of the ``plane`` fixture's 1 s).
HEARTBEAT_SECONDS = 0.3
STOP_TIMEOUT = 15.0
#: The ``plane`` fixture's lease: long enough that a busy machine never lets it run out
#: between an assignment and the test's answer to it.
LEASE_SECONDS = 30.0
#: The lease of a test marked ``short_lease``, which lets leases run out on purpose.
SHORT_LEASE_SECONDS = 1.5


@dataclass
class Plane:
    """A running control plane and stubs for its three services."""

    app: App
    address: str
    data_dir: Path
    channel: grpc.aio.Channel
    control: control_plane_pb2_grpc.ControlPlaneServiceStub
    agents: agent_pb2_grpc.AgentServiceStub
    engines: engine_pb2_grpc.EngineServiceStub
    #: The PostgreSQL database the plane runs on; None: SQLite in ``data_dir``.
    db_url: str | None = None

    def count_rows(self, table: str) -> int:
        """How many rows ``table`` holds, read past the server (on either store)."""
        return count_rows(self.data_dir, self.db_url, table)

    def count_lines(self) -> int:
        """How many log lines are stored, read past the server (on either store)."""
        return count_lines(self.data_dir, self.db_url)

    async def pool(self, name: str = "pool-a") -> types_pb2.WorkPool:
        response = await self.control.CreatePool(
            control_plane_pb2.CreatePoolRequest(name=name, type=types_pb2.POOL_TYPE_PROCESS)
        )
        return response.pool

    async def deployment(self, name: str = "hello", pool: str = "pool-a") -> types_pb2.Deployment:
        source = self.data_dir / "src"
        source.mkdir(exist_ok=True)
        (source / "flow.py").write_text(FLOW)
        response = await self.control.UpsertDeployment(
            control_plane_pb2.UpsertDeploymentRequest(
                deployment=types_pb2.Deployment(
                    name=name,
                    entrypoint="flow.py:hello",
                    source=types_pb2.Source(local=types_pb2.LocalSource(path=str(source))),
                    pool=pool,
                    parameter_schema_json=json.dumps(SCHEMA),
                )
            )
        )
        return response.deployment

    async def run(self, deployment: str = "hello", **params: Any) -> types_pb2.FlowRun:
        response = await self.control.CreateRun(
            control_plane_pb2.CreateRunRequest(
                deployment_name=deployment, parameters_json=json.dumps(params or {"name": "x"})
            )
        )
        return response.run

    async def get(self, run_id: str) -> control_plane_pb2.GetRunResponse:
        return await self.control.GetRun(control_plane_pb2.GetRunRequest(run_id=run_id))

    async def wait_state(
        self, run_id: str, state: types_pb2.StateType.ValueType, wait: float = RECEIVE_TIMEOUT
    ) -> types_pb2.FlowRun:
        """Watch the run until it is in ``state`` (fails on timeout or on another terminal state)."""
        return await self._watch(run_id, lambda run: run.state.type == state, str(state), wait)

    async def wait_named(
        self, run_id: str, name: str, wait: float = RECEIVE_TIMEOUT
    ) -> types_pb2.FlowRun:
        """Watch the run until its state has the sub-state ``name``."""
        return await self._watch(run_id, lambda run: run.state.name == name, name, wait)

    async def _watch(
        self,
        run_id: str,
        reached: Callable[[types_pb2.FlowRun], bool],
        what: str,
        wait: float,
    ) -> types_pb2.FlowRun:
        async def watch() -> types_pb2.FlowRun:
            async for message in self.control.WatchRun(
                control_plane_pb2.WatchRunRequest(run_id=run_id)
            ):
                if reached(message.run):
                    return message.run
            raise AssertionError(f"run ended in {message.run.state} before reaching {what}")

        return await asyncio.wait_for(watch(), wait)


class Stream:
    """One bidirectional call driven message by message."""

    def __init__(self, call_factory: Any, metadata: Any = None) -> None:
        self._outgoing: asyncio.Queue[Any] = asyncio.Queue()
        self._incoming: asyncio.Queue[Any] = asyncio.Queue()
        #: Set once the server has answered (or ended the call): heartbeats start then.
        self._answered = asyncio.Event()
        self.call = call_factory(self._requests(), metadata=metadata)
        # A timed-out read must not cancel the call, so one task reads and the test waits on
        # the queue it fills.
        self._reader = asyncio.create_task(self._read(), name="test-stream-reader")

    async def _read(self) -> None:
        try:
            while (message := await self.call.read()) is not grpc.aio.EOF:
                self._answered.set()
                self._incoming.put_nowait(message)
            self._incoming.put_nowait(grpc.aio.EOF)
        except grpc.aio.AioRpcError as error:
            self._incoming.put_nowait(error)
        finally:
            self._answered.set()

    async def _requests(self) -> AsyncIterator[Any]:
        first = await self._outgoing.get()
        if first is None:
            return
        yield first
        # Like a real agent or engine, say "still here" whenever there is nothing else to
        # send: the server ends a session that stays silent for a few heartbeat intervals,
        # which a loaded machine can make a test do between two of its messages. Like a real
        # agent, only once the server has answered (its Welcome gives the interval): a write
        # racing the server's refusal of the first message makes grpc.aio's client report
        # INTERNAL instead of the server's status (grpc/grpc#36066).
        heartbeat = type(first)(heartbeat={})
        while True:
            try:
                message = await asyncio.wait_for(self._outgoing.get(), HEARTBEAT_SECONDS)
            except TimeoutError:
                if self._answered.is_set():
                    yield heartbeat
                continue
            if message is None:
                return
            yield message

    def send(self, message: Any) -> None:
        self._outgoing.put_nowait(message)

    async def receive(self, kind: str, wait: float = RECEIVE_TIMEOUT) -> Any:
        """The next message of ``kind`` (heartbeats are skipped), within ``wait`` seconds."""
        try:
            async with asyncio.timeout(wait):
                return await self._next(kind)
        except TimeoutError:
            raise TimeoutError(f"no {kind} within {wait:g} s (heartbeats only)") from None

    async def _next(self, kind: str) -> Any:
        while True:
            message = await self._incoming.get()
            if isinstance(message, grpc.aio.AioRpcError):
                raise message
            assert message is not grpc.aio.EOF, "the stream ended"
            got = message.WhichOneof("message")
            if got == "heartbeat":
                continue
            assert got == kind, f"expected {kind}, got {message}"
            return getattr(message, kind)

    async def close(self) -> None:
        self._outgoing.put_nowait(None)
        self.call.cancel()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await self._reader


def agent_stream(
    plane: Plane,
    pool: str = "pool-a",
    capacity: int = 1,
    name: str = "agent-1",
    observed: list[agent_pb2.ObservedRun] | None = None,
    instance: str = "",
    runtime: str = "process",
    slots: int = 0,
) -> Stream:
    stream = Stream(plane.agents.Connect)
    stream.send(
        agent_pb2.ConnectRequest(
            hello=agent_pb2.Hello(
                agent_name=name,
                instance_id=instance,
                pool=pool,
                capacity=capacity,
                slots=slots,
                runtime=runtime,
                observed_runs=observed or [],
            )
        )
    )
    return stream


def engine_stream(plane: Plane, run_id: str, attempt: int, token: str) -> Stream:
    stream = Stream(plane.engines.Report, metadata=(("authorization", f"Bearer {token}"),))
    stream.send(engine_pb2.ReportRequest(open=engine_pb2.Open(run_id=run_id, attempt=attempt)))
    return stream


def connect(app: App, data_dir: Path, db_url: str | None = None) -> Plane:
    """A Plane for a started ``app`` whose data (and admin token) is in ``data_dir``."""
    address = f"127.0.0.1:{app.port}"
    # Users' calls carry the admin token; agent and engine streams send their own tokens.
    channel = aio_channel(address, admin_token(data_dir))
    return Plane(
        app,
        address,
        data_dir,
        channel,
        control_plane_pb2_grpc.ControlPlaneServiceStub(channel),
        agent_pb2_grpc.AgentServiceStub(channel),
        engine_pb2_grpc.EngineServiceStub(channel),
        db_url,
    )


@contextlib.asynccontextmanager
async def running_plane(
    data_dir: Path, db_url: str | None, lease_seconds: float = LEASE_SECONDS, http: bool = False
) -> AsyncIterator[Plane]:
    """A started control plane on ``db_url`` (None: SQLite in ``data_dir``), stopped after;
    with ``http``, serving its HTTP port too (``app.http.port``)."""
    config = ServerConfig(
        port=0,
        data_dir=data_dir,
        db_url=db_url,
        lease_seconds=lease_seconds,
        agent_heartbeat_seconds=1.0,
        http_port=0 if http else None,
    )
    app = await build(config)
    await app.start()
    plane = connect(app, data_dir, db_url)
    try:
        with report_hang_after(db_url):
            yield plane
        await plane.channel.close()
        # Every call the test made has ended with its channel: nobody is waiting any more.
        await eventually(
            lambda: len(app.signals) == 0,
            within=STOP_TIMEOUT,
            what="the server to forget the calls that waited for changes",
        )
    finally:
        await plane.channel.close()
        # A stop that hangs is a bug in itself: fail fast and say so.
        await asyncio.wait_for(app.stop(0.5), STOP_TIMEOUT)


@pytest.fixture
async def plane(
    request: pytest.FixtureRequest, tmp_path: Path, db_url: str | None
) -> AsyncIterator[Plane]:
    # Most tests confirm their assignments at once, but on a loaded machine "at once" can take
    # longer than a short lease: only the tests about leases running out ask for one.
    marker = request.node.get_closest_marker("short_lease")
    lease = SHORT_LEASE_SECONDS if marker else LEASE_SECONDS
    async with running_plane(tmp_path, db_url, lease) as plane:
        yield plane


async def make_ready(plane: Plane) -> Plane:
    """``plane`` with pool-a and the hello deployment."""
    await plane.pool()
    await plane.deployment()
    return plane


@pytest.fixture
async def ready(plane: Plane) -> Plane:
    return await make_ready(plane)


async def submitted(plane: Plane, run_id: str) -> bool:
    """Whether the server has recorded the run's infrastructure (PENDING/Submitted)."""
    return (await plane.get(run_id)).run.state.name == "Submitted"


async def assigned(plane: Plane) -> tuple[Stream, types_pb2.FlowRun, agent_pb2.Assign]:
    """An agent of capacity 1 and a new run assigned to it, not confirmed yet."""
    agent = agent_stream(plane, capacity=1)
    await agent.receive("welcome")
    run = await plane.run()
    return agent, run, await agent.receive("assign")


async def accepted(plane: Plane) -> tuple[Stream, types_pb2.FlowRun, agent_pb2.Assign]:
    """An agent of capacity 1, a new run assigned to it, and the agent's Accepted sent."""
    agent, run, assign = await assigned(plane)
    agent.send(agent_pb2.ConnectRequest(accepted=agent_pb2.Accepted(run_id=run.id, attempt=1)))
    return agent, run, assign


def submit(agent: Stream, run_id: str, infrastructure_id: str) -> None:
    """Send the agent's Submitted for attempt 1 of the run."""
    agent.send(
        agent_pb2.ConnectRequest(
            submitted=agent_pb2.Submitted(
                run_id=run_id, attempt=1, infrastructure_id=infrastructure_id
            )
        )
    )


async def drive_to_running(plane: Plane) -> tuple[Stream, Stream, str, str]:
    agent, run, assign = await accepted(plane)
    submit(agent, run.id, "process/h/1")
    # As with a real agent, the engine starts once the server knows the run was submitted.
    await eventually(lambda: submitted(plane, run.id), within=RECEIVE_TIMEOUT, what="Submitted")
    engine = engine_stream(plane, run.id, 1, assign.engine_token)
    opened = await engine.receive("opened")
    assert opened.stored_seq == 0
    engine.send(
        engine_pb2.ReportRequest(
            propose_state=engine_pb2.ProposeState(
                transition_id="t-run", type=types_pb2.STATE_TYPE_RUNNING
            )
        )
    )
    result = await engine.receive("state_result")
    assert result.accepted, result.reason
    return agent, engine, run.id, assign.engine_token
