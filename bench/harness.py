"""What the benchmarks share: a throw-away control plane with one process pool and its agent."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control_plane.cli.client import open_channel
from control_plane.cli.processes import Child, start_agent, start_server
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import control_plane_pb2_grpc, types_pb2

POOL = "bench"


@dataclass
class BenchSystem:
    """A started control plane and agent: a blocking stub, the flows' directory, the server."""

    stub: Any
    source: Path
    server: Child

    @property
    def address(self) -> str:
        """The server's gRPC address."""
        return self.server.extra["address"]

    @property
    def token(self) -> str:
        """The admin token."""
        return self.server.extra["token"]

    @property
    def http_url(self) -> str:
        """The web UI's address, without the trailing slash: ``http://127.0.0.1:PORT``."""
        return self.server.extra["http_url"].rstrip("/")


@contextlib.contextmanager
def bench_system(
    flows: dict[str, str],
    capacity: int,
    agent_options: list[str] | None = None,
    db_url: str | None = None,
) -> Iterator[BenchSystem]:
    """A control plane (on ``db_url``, SQLite in its directory if None) and an agent of pool
    ``bench`` with ``capacity`` slots (and ``agent_options`` on its command line), holding
    ``flows`` (file name → code) in a directory of their own; stops both processes and removes
    every file afterwards."""
    root = Path(tempfile.mkdtemp(prefix="flowyard-bench-"))
    source = root / "flow"
    source.mkdir()
    for name, code in flows.items():
        (source / name).write_text(code)
    server = start_server(root / "server", db_url=db_url)
    agent = None
    try:
        with open_channel(server.extra["address"], server.extra["token"]) as channel:
            stub = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
            stub.CreatePool(pb.CreatePoolRequest(name=POOL, type=types_pb2.POOL_TYPE_PROCESS))
            agent_token = stub.CreateToken(
                pb.CreateTokenRequest(kind=pb.TOKEN_KIND_AGENT, pool=POOL, description=POOL)
            ).token
            agent = start_agent(
                server.extra["address"],
                POOL,
                root / "agent",
                capacity=capacity,
                token=agent_token,
                extra_args=agent_options,
            )
            yield BenchSystem(stub, source, server)
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def bench_pool(
    flows: dict[str, str], capacity: int, agent_options: list[str] | None = None
) -> Iterator[tuple[Any, Path, str, str]]:
    """``bench_system`` as the ControlPlaneService stub, the directory holding ``flows``, the
    server's address and its admin token."""
    with bench_system(flows, capacity, agent_options) as system:
        yield system.stub, system.source, system.address, system.token
