"""A fake control plane (AgentService on a real grpc.aio server) and the real agent process.

The fake records every message an agent sends, answers Hello with Welcome, sends heartbeats
and lets a test push Assign and Cancel. The agent runs as ``python -m agent.main`` with a
fake engine script, so these tests exercise the real command line, stream and runtime.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.duration_pb2 import Duration

from flowyard.v1 import agent_pb2, agent_pb2_grpc

REPO = Path(__file__).resolve().parents[3]

# Behaviour by the run id's first word: exit<N> (print, exit N), sleep (sleep long),
# gate (exit 0 once a file named "release" appears in the working directory).
FAKE_ENGINE = textwrap.dedent(
    """
    import os, sys, time

    assert sys.argv[-2] == "execute", sys.argv
    mode = sys.argv[-1].split("-")[0]
    with open("engine.pid", "w") as f:
        f.write(str(os.getpid()))
    for name in sorted(os.environ):
        if name.startswith("FLOWYARD_"):
            print(f"{name}={os.environ[name]}")
    sys.stdout.flush()
    if mode.startswith("exit"):
        print("engine output", flush=True)
        sys.exit(int(mode[4:]))
    elif mode == "sleep":
        time.sleep(300)
    elif mode == "gate":
        while not os.path.exists("release"):
            time.sleep(0.02)
    else:
        sys.exit(f"unknown mode {mode!r}")
    """
)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (zombies count as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


@dataclass
class FakeSession:
    """One Connect stream as the fake server saw it."""

    index: int
    hello: agent_pb2.Hello
    received: list[agent_pb2.ConnectRequest] = field(default_factory=list)
    outgoing: asyncio.Queue[agent_pb2.ConnectResponse | None] = field(default_factory=asyncio.Queue)
    client_done: bool = False
    ended: bool = False

    def send(self, **message: Any) -> None:
        """Push one ConnectResponse, e.g. ``send(assign=agent_pb2.Assign(...))``."""
        self.outgoing.put_nowait(agent_pb2.ConnectResponse(**message))

    def of_kind(self, kind: str) -> list[Any]:
        """The payloads of every received message of one kind, in order."""
        return [getattr(m, kind) for m in self.received if m.WhichOneof("message") == kind]

    def kinds(self, run_id: str | None = None) -> list[str]:
        """Received message kinds in order, without heartbeats; credits always included."""
        result = []
        for message in self.received:
            kind = message.WhichOneof("message")
            if kind in ("heartbeat", "hello"):
                continue
            payload = getattr(message, kind)
            if run_id is None or kind == "credit" or payload.run_id == run_id:
                result.append(kind)
        return result


class FakeAgentService(agent_pb2_grpc.AgentServiceServicer):
    """The server side of AgentService.Connect, scripted by tests."""

    def __init__(
        self,
        heartbeat_interval: float = 0.5,
        send_heartbeats: bool = True,
        reject: tuple[grpc.StatusCode, str] | None = None,
    ) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.send_heartbeats = send_heartbeats
        self.reject = reject
        self.sessions: list[FakeSession] = []
        #: Every Hello received, refused ones included.
        self.hellos: list[agent_pb2.Hello] = []

    async def Connect(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        first = await context.read()
        assert first.WhichOneof("message") == "hello", first
        self.hellos.append(first.hello)
        if self.reject is not None:
            await context.abort(*self.reject)
        session = FakeSession(index=len(self.sessions), hello=first.hello, received=[first])
        self.sessions.append(session)
        interval = Duration()
        interval.FromTimedelta(timedelta(seconds=self.heartbeat_interval))
        await context.write(
            agent_pb2.ConnectResponse(
                welcome=agent_pb2.Welcome(
                    session_id=f"session-{session.index}",
                    heartbeat_interval=interval,
                    lease_duration=Duration(seconds=30),
                    server_version="fake",
                )
            )
        )
        helpers = [asyncio.create_task(self._read(context, session), name="fake:read")]
        if self.send_heartbeats:
            helpers.append(asyncio.create_task(self._beat(session), name="fake:beat"))
        try:
            while (message := await session.outgoing.get()) is not None:
                await context.write(message)
        finally:
            session.ended = True
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def _read(self, context: grpc.aio.ServicerContext, session: FakeSession) -> None:
        while True:
            message = await context.read()
            if message is grpc.aio.EOF:
                session.client_done = True
                return
            session.received.append(message)

    async def _beat(self, session: FakeSession) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            session.send(heartbeat=agent_pb2.Heartbeat())


class FakeServer:
    """A grpc.aio server hosting one FakeAgentService; can be stopped and restarted."""

    def __init__(self) -> None:
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self, service: FakeAgentService) -> None:
        server = grpc.aio.server()
        agent_pb2_grpc.add_AgentServiceServicer_to_server(service, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=None)
            self.server = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class AgentProcess:
    """The agent under test, running as a separate process."""

    process: asyncio.subprocess.Process
    log_path: Path
    work_dir: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def stop(self, within: float = 15.0) -> int:
        """SIGTERM, then wait for the exit status."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(within):
            return await self.process.wait()


Eventually = Callable[..., Awaitable[None]]


@pytest.fixture
async def fake_server() -> AsyncIterator[FakeServer]:
    server = FakeServer()
    yield server
    await server.stop()


@pytest.fixture
def make_service() -> Callable[..., FakeAgentService]:
    """Build a FakeAgentService (heartbeat_interval=, send_heartbeats=, reject=)."""
    return FakeAgentService


@pytest.fixture
def is_alive() -> Callable[[int], bool]:
    """Whether a pid is a live process."""
    return alive


@pytest.fixture
def fake_engine(tmp_path: Path) -> str:
    """The --engine-command value: this Python running the fake engine script."""
    script = tmp_path / "fake_engine.py"
    script.write_text(FAKE_ENGINE)
    return f"{sys.executable} {script}"


@pytest.fixture
async def start_agent(
    tmp_path: Path, fake_engine: str
) -> AsyncIterator[Callable[..., Awaitable[AgentProcess]]]:
    """Start ``python -m agent.main`` against a server; stop it and its engines afterwards."""
    agents: list[AgentProcess] = []

    async def start(server: str, *extra: str, pool: str = "test-pool") -> AgentProcess:
        work_dir = tmp_path / f"work-{len(agents)}"
        log_path = tmp_path / f"agent-{len(agents)}.log"
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "agent.main",
                "--pool",
                pool,
                "--server",
                server,
                "--name",
                "agent-1",
                "--capacity",
                "3",
                "--work-dir",
                str(work_dir),
                "--engine-command",
                fake_engine,
                "--cancel-grace-seconds",
                "5",
                *extra,
                cwd=REPO,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        agent = AgentProcess(process, log_path, work_dir)
        agents.append(agent)
        return agent

    yield start

    leaked = []
    for agent in agents:
        if agent.process.returncode is None:
            try:
                await agent.stop()
            except TimeoutError:
                agent.process.kill()
                await agent.process.wait()
                leaked.append(f"agent pid {agent.process.pid} ignored SIGTERM")
        # Engines outlive the agent by design; the test owns them, so end them here.
        for pid_file in agent.work_dir.glob("*/engine.pid"):
            pid = int(pid_file.read_text())
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)
    assert not leaked, leaked


@pytest.fixture
def eventually() -> Eventually:
    """``await eventually(condition, agent=..., within=..., message=...)``.

    Fails early, with the agent's log, if the agent process exits while waiting.
    """

    async def wait(
        condition: Callable[[], bool],
        agent: AgentProcess | None = None,
        within: float = 20.0,
        message: str = "condition",
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            if agent is not None and agent.process.returncode is not None:
                raise AssertionError(
                    f"the agent exited ({agent.process.returncode}) while waiting for "
                    f"{message}; its log:\n{agent.log()}"
                )
            try:
                if condition():
                    return
            except Exception as error:
                # What the check reads may not be there yet: ask again, until the deadline.
                if loop.time() > deadline:
                    error.add_note(f"(still raised after {within} s waiting for {message})")
                    raise
            if loop.time() > deadline:
                log = agent.log() if agent is not None else ""
                raise AssertionError(f"timed out waiting for {message}\n{log}")
            await asyncio.sleep(0.02)

    return wait
