"""Fault-injection harness: real processes, killed with SIGKILL at chosen moments."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import System, running_system


def free_port() -> int:
    """A port nothing listens on right now (for a server that must come back on it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[System]:
    """Like the end-to-end ``system``, on a fixed port so the control plane can be restarted."""
    with running_system(tmp_path, port=free_port()) as system:
        yield system
