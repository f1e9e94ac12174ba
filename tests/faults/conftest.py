"""Fault-injection harness: real processes, killed with SIGKILL at chosen moments."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import System, running_system
from tests.ports import free_port


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[System]:
    """Like the end-to-end ``system``, on a fixed port so the control plane can be restarted."""
    with running_system(tmp_path, port=free_port()) as system:
        yield system
