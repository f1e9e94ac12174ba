"""Fault-injection harness: real processes, killed with SIGKILL at chosen moments."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from control_plane.cli.processes import start_server
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import control_plane_pb2_grpc, types_pb2
from tests.e2e.conftest import POOL, System, _engines_under


def free_port() -> int:
    """A port nothing listens on right now (for a server that must come back on it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[System]:
    """Like the end-to-end ``system``, on a fixed port so the control plane can be restarted."""

    port = free_port()
    server = start_server(tmp_path / "server", port=port)
    channel = grpc.insecure_channel(server.extra["address"])
    stub = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
    stub.CreatePool(pb.CreatePoolRequest(name=POOL, type=types_pb2.POOL_TYPE_PROCESS))
    system = System(tmp_path, server, channel, stub)
    try:
        yield system
    finally:
        channel.close()
        for agent in system.agents:
            agent.stop()
        system.server.stop()
        for pid in _engines_under(tmp_path):
            os.kill(pid, signal.SIGKILL)
