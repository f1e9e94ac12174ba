"""Engines forked from a warm interpreter (the process runtime's default): a run gets what a
cold start gives (its own process and group, directory, environment, stdin, output file),
the guarantees hold, and losing the fork server loses no run."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowyard.v1 import types_pb2

from .conftest import System, engines_under, pid_alive, running_system, wait_for
from .test_warm_engines import (
    INTROSPECT,
    SLEEPY_FAMILY,
    assert_set_up_for_its_run,
    cancel_kills_the_group,
    introspect,
)

SLEEPY = """
import time


def main() -> None:
    print("sleeping", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    with running_system(tmp_path) as system:
        yield system


def fork_servers(root: Path) -> list[int]:
    """Fork servers under this test's directory (not the engines they forked)."""
    return [
        pid
        for pid in engines_under(root, (b"forkserver",))
        if os.getsid(pid) == pid and _is_server(pid)
    ]


def _is_server(pid: int) -> bool:
    # A forked engine runs ``execute``'s threads and has the fork server as its parent.
    with open(f"/proc/{pid}/stat") as stat:
        parent = int(stat.read().rpartition(")")[2].split()[1])
    with open(f"/proc/{parent}/cmdline", "rb") as cmdline:
        return b"forkserver" not in cmdline.read()


@pytest.mark.parametrize("start", ["fork", "cold"])
def test_a_run_gets_the_same_process_setup_forked_or_cold(system: System, start: str) -> None:
    system.start_agent(extra_args=[f"--engine-start={start}"])
    system.deploy("introspect", INTROSPECT, "main", "--job-variable", 'env={"GREETING": "hi"}')
    seen = [introspect(system, system.create_run("introspect")) for _ in range(3)]
    for one in seen:
        assert_set_up_for_its_run(system, one)
        assert one["forked"] is (start == "fork")
    # One process per run, never reused.
    assert len({one["pid"] for one in seen}) == 3


def test_the_default_is_forked_and_a_run_that_needs_a_fresh_interpreter_starts_cold(
    system: System,
) -> None:
    system.start_agent()
    system.deploy("plain", INTROSPECT)
    assert introspect(system, system.create_run("plain"))["forked"] is True
    system.deploy("seeded", INTROSPECT, "main", "--job-variable", 'env={"PYTHONHASHSEED": "7"}')
    assert introspect(system, system.create_run("seeded"))["forked"] is False


def test_cancel_kills_a_forked_engines_whole_process_group(system: System) -> None:
    system.start_agent(extra_args=["--engine-start=fork"])
    system.deploy("family", SLEEPY_FAMILY)
    run_id = system.create_run("family")
    cancel_kills_the_group(system, run_id)


def test_a_dead_fork_server_loses_no_run_and_is_started_again(system: System) -> None:
    system.start_agent(extra_args=["--engine-start=fork"])
    system.deploy("sleepy", SLEEPY)
    system.deploy("plain", INTROSPECT)
    running = system.create_run("sleepy")
    wait_for(lambda: any(line.text == "sleeping" for line in system.logs(running)), what="sleeping")
    [server] = wait_for(lambda: fork_servers(system.root), what="the fork server")
    os.kill(server, signal.SIGKILL)
    # The engine it forked carries on; a new run is forked by a new server.
    seen = introspect(system, system.create_run("plain"))
    assert seen["forked"] is True
    assert fork_servers(system.root) and fork_servers(system.root) != [server]
    # The orphaned engine's end is still noticed: cancelling it completes.
    assert system.cli("cancel", running).returncode == 0
    assert system.wait_terminal(running).state.type == types_pb2.STATE_TYPE_CANCELLED


def test_the_fork_server_stops_with_the_agent_and_its_engines_run_on(system: System) -> None:
    agent = system.start_agent(extra_args=["--engine-start=fork"])
    system.deploy("sleepy", SLEEPY)
    run_id = system.create_run("sleepy")
    wait_for(lambda: any(line.text == "sleeping" for line in system.logs(run_id)), what="sleeping")
    [server] = fork_servers(system.root)
    engine = int(system.run(run_id).infrastructure_id.rsplit("/", 1)[1])
    agent.stop()
    wait_for(lambda: not pid_alive(server), what="the fork server stopped")
    assert pid_alive(engine)
    assert system.cli("cancel", run_id).returncode == 0
    wait_for(lambda: not pid_alive(engine), what="the engine stopped by its own cancel")
