"""What the benchmarks share: a throw-away control plane with one process pool and its agent."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from control_plane.cli.client import open_channel
from control_plane.cli.processes import start_agent, start_server
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import control_plane_pb2_grpc, types_pb2

POOL = "bench"


@contextlib.contextmanager
def bench_pool(
    flows: dict[str, str], capacity: int, agent_options: list[str] | None = None
) -> Iterator[tuple[Any, Path, str, str]]:
    """A control plane and an agent of pool ``bench`` with ``capacity`` slots (and
    ``agent_options`` on its command line).

    Yields the ControlPlaneService stub, the directory holding ``flows`` (file name → code),
    the server's address and its admin token;
    stops both processes and removes every file afterwards.
    """
    root = Path(tempfile.mkdtemp(prefix="flowyard-bench-"))
    source = root / "flow"
    source.mkdir()
    for name, code in flows.items():
        (source / name).write_text(code)
    server = start_server(root / "server")
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
            yield stub, source, server.extra["address"], server.extra["token"]
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
