"""The agent's fork server (``agent.runtimes.forked``) against the real
``flowyard-engine forkserver`` process: what happens to a run when the server has died."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.runtimes.forked import ForkServer
from agent.settings import default_engine_command
from agent.tasks import TaskSet
from engine.runner import ExitCode


@pytest.fixture
async def forks(tmp_path: Path) -> AsyncIterator[ForkServer]:
    tasks = TaskSet("test")
    server = ForkServer(default_engine_command(sys.executable), tmp_path, dict(os.environ), tasks)
    yield server
    await server.close()
    await tasks.stop(5.0)


async def test_a_run_that_finds_the_server_dead_is_forked_by_a_new_one(
    forks: ForkServer, tmp_path: Path
) -> None:
    """Killed just before a run comes (its end not noticed yet), the server is started again
    for that run, which is forked, not started cold."""
    await forks.warm_up()
    [dead] = _server_pids(forks)
    os.kill(dead, signal.SIGKILL)
    # No await in between: the agent cannot have noticed the server's end.
    child = await forks.fork(
        "r1", tmp_path / "missing", {"PATH": os.environ["PATH"]}, tmp_path / "r1.log"
    )
    assert child is not None
    assert _server_pids(forks) != [dead]
    # A directory that does not exist: the child cannot take the run on, and says so.
    assert await child.wait() == ExitCode.COULD_NOT_RUN
    assert forks.available


def _server_pids(forks: ForkServer) -> list[int]:
    server = forks._server
    return [] if server is None else [server.process.pid]
