"""End-to-end harness: the real control plane, agent and engine as processes on loopback.

Every process a test starts is registered with ``System`` and stopped at teardown; a test that
leaves an engine process behind fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from control_plane.cli.client import open_channel
from control_plane.cli.processes import Child, script, start_agent, start_server
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import control_plane_pb2_grpc, types_pb2
from tests import waiting

POOL = "e2e"
DEADLINE = 60.0
#: How long an engine whose run has ended may take to exit before it counts as left running.
ENGINE_EXIT_SECONDS = 10.0


def wait_for(
    condition: Callable[[], Any], timeout: float = DEADLINE, what: str = "condition"
) -> Any:
    """Poll ``condition`` until it returns something truthy, asking again when it raises;
    fail after ``timeout`` seconds (see ``tests.waiting``)."""
    return waiting.wait_for(condition, timeout, what, interval=0.05)


def pid_alive(pid: int) -> bool:
    """Whether a process exists (and is not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@dataclass
class System:
    """A control plane and agents started for one test, plus a CLI bound to them."""

    root: Path
    server: Child
    channel: grpc.Channel
    stub: control_plane_pb2_grpc.ControlPlaneServiceStub
    agents: list[Child] = field(default_factory=list)
    #: An agent token of POOL, which the agents the system starts connect with.
    agent_token: str = ""
    #: The CA the server's certificate is signed by, when it speaks TLS.
    tls_ca: Path | None = None

    @property
    def address(self) -> str:
        return self.server.extra["address"]

    @property
    def admin_token(self) -> str:
        """The admin token the server created on its first start."""
        return self.server.extra["token"]

    def cli(
        self, *args: str, timeout: float = DEADLINE, token: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the ``flowyard`` CLI against this control plane (with the admin token)."""
        tls = ["--tls-ca", str(self.tls_ca)] if self.tls_ca else []
        return subprocess.run(
            [*script("flowyard"), "--server", self.address, *tls, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={
                **os.environ,
                "COLUMNS": "200",
                "FLOWYARD_TOKEN": self.admin_token if token is None else token,
            },
        )

    def start_agent(
        self,
        name: str = "agent-1",
        capacity: int = 4,
        extra_args: list[str] | None = None,
        token: str | None = None,
        server: str | None = None,
    ) -> Child:
        """Start a process agent and wait until it is connected (through ``server``, e.g. a
        relay, instead of the control plane's own address if given)."""
        tls = ["--tls-ca", str(self.tls_ca)] if self.tls_ca else []
        agent = start_agent(
            server or self.address,
            POOL,
            self.root / name,
            name=name,
            capacity=capacity,
            extra_args=[*tls, *(extra_args or [])],
            token=self.agent_token if token is None else token,
        )
        self.agents.append(agent)
        wait_for(
            lambda: self.pool().connected_agents > 0 or not agent.alive(), what="agent connected"
        )
        assert agent.alive(), agent.log_tail()
        return agent

    def pool(self) -> types_pb2.WorkPool:
        return self.stub.GetPool(pb.GetPoolRequest(name=POOL)).pool

    def write_flow(self, name: str, code: str) -> Path:
        source = self.root / "flows" / name
        source.mkdir(parents=True, exist_ok=True)
        (source / "flow.py").write_text(code)
        return source

    def deploy(self, name: str, code: str, function: str = "main", *params: str) -> None:
        source = self.write_flow(name, code)
        result = self.cli(
            "deploy",
            f"flow.py:{function}",
            "--name",
            name,
            "--pool",
            POOL,
            "--source",
            str(source),
            *params,
        )
        assert result.returncode == 0, result.stderr

    def create_run(self, deployment: str, **params: Any) -> str:
        response = self.stub.CreateRun(
            pb.CreateRunRequest(deployment_name=deployment, parameters_json=json.dumps(params))
        )
        return response.run.id

    def run(self, run_id: str) -> types_pb2.FlowRun:
        return self.stub.GetRun(pb.GetRunRequest(run_id=run_id)).run

    def wait_terminal(self, run_id: str, timeout: float = DEADLINE) -> types_pb2.FlowRun:
        """Block on WatchRun until the run is terminal."""
        last = None
        for message in self.stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=timeout):
            last = message.run
        assert last is not None
        return last

    def logs(self, run_id: str) -> list[types_pb2.LogLine]:
        return [
            line for m in self.stub.TailLogs(pb.TailLogsRequest(run_id=run_id)) for line in m.lines
        ]


@contextlib.contextmanager
def running_system(
    root: Path,
    port: int = 0,
    *,
    server_args: list[str] | None = None,
    tls_ca: Path | None = None,
    db_url: str | None = None,
) -> Iterator[System]:
    """A control plane (on ``port``, 0 for any) with the process pool, stopped afterwards.

    The harness talks to it with the admin token the server created; agents connect with an
    agent token of the pool. ``server_args`` and ``tls_ca`` set the server up for TLS;
    ``db_url`` puts it on that database instead of SQLite in its data directory.
    Agents the test started are stopped too; an engine left running fails the test.
    """
    server = start_server(root / "server", port=port, db_url=db_url, extra_args=server_args)
    channel = open_channel(server.extra["address"], server.extra["token"], tls_ca)
    stub = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
    stub.CreatePool(pb.CreatePoolRequest(name=POOL, type=types_pb2.POOL_TYPE_PROCESS))
    agent_token = stub.CreateToken(
        pb.CreateTokenRequest(kind=pb.TOKEN_KIND_AGENT, pool=POOL, description="e2e agents")
    ).token
    system = System(root, server, channel, stub, agent_token=agent_token, tls_ca=tls_ca)
    try:
        yield system
    finally:
        channel.close()
        for agent in system.agents:
            agent.stop()
        system.server.stop()  # the test may have replaced the server it started with
    assert_no_engines_left(root)


def assert_no_engines_left(root: Path) -> None:
    """Fail if an engine whose working directory is under ``root`` still runs (it is killed).

    An engine whose run just ended may still be closing its channel: it has a moment to exit
    on its own; one still there after that was left running.
    """
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not engines_under(root), ENGINE_EXIT_SECONDS, "engines to exit")
    leaked = engines_under(root)
    for pid in leaked:
        os.kill(pid, 9)
    assert not leaked, f"engine processes left running: {leaked}"


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    with running_system(tmp_path) as system:
        yield system


def engines_under(
    root: Path, commands: tuple[bytes, ...] = (b"execute", b"standby", b"forkserver")
) -> list[int]:
    """Engine processes started with one of ``commands`` (by default running ones, warm ones,
    fork servers and the engines they forked, which share their command line) whose working
    directory is inside this test's directory."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        engine = any(command in cmdline for command in commands)
        if cwd.startswith(str(root)) and engine and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found
