"""Warm engines on the process runtime: a run handed to an engine started ahead of it gets what
a cold start gives (its own process and group, directory, environment, stdin, output file),
and the guarantees hold with the warm pool on and off."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowyard.v1 import types_pb2

from .conftest import System, engines_under, pid_alive, running_system, wait_for

# What the flow sees of its process: how it was started, where it runs, what it was given.
INTROSPECT = """
import json, os, sys


def main() -> None:
    with open("/proc/self/cmdline", "rb") as cmdline:
        started_as = cmdline.read().split(b"\\0")
    print("seen " + json.dumps({
        "standby": b"standby" in started_as,
        "forked": b"forkserver" in started_as,
        "cwd": os.getcwd(),
        "pid": os.getpid(),
        "group_leader": os.getpgid(0) == os.getpid(),
        "session_leader": os.getsid(0) == os.getpid(),
        "greeting": os.environ.get("GREETING"),
        "run_id": os.environ.get("FLOWYARD_RUN_ID"),
        "token_hidden": "FLOWYARD_TOKEN" not in os.environ,
        "stdin": sys.stdin.read(),
        "argv": sys.argv[1:],
    }), flush=True)
"""

SLEEPY_FAMILY = """
import subprocess, time


def main() -> None:
    child = subprocess.Popen(["sleep", "600"])
    print(f"child {child.pid}", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    with running_system(tmp_path) as system:
        yield system


def introspect(system: System, run_id: str) -> dict[str, object]:
    """What the flow of ``run_id`` saw of its process."""
    run = system.wait_terminal(run_id)
    assert run.state.type == types_pb2.STATE_TYPE_COMPLETED, run.state.message
    line = next(line.text for line in system.logs(run_id) if line.text.startswith("seen "))
    seen: dict[str, object] = json.loads(line.removeprefix("seen "))
    assert int(run.infrastructure_id.rsplit("/", 1)[1]) == seen["pid"]
    return seen


def assert_set_up_for_its_run(system: System, seen: dict[str, object]) -> None:
    """The process a run's flow saw was set up for that run, however its engine started."""
    # A local source runs where it lies.
    assert seen["cwd"] == str(system.root / "flows" / "introspect")
    assert seen["group_leader"] and seen["session_leader"]
    assert seen["greeting"] == "hi"
    assert seen["token_hidden"]
    assert seen["stdin"] == ""
    assert seen["argv"] == ["execute", seen["run_id"]]


@pytest.mark.parametrize("warm", [0, 2])
def test_a_run_gets_the_same_process_setup_warm_or_cold(system: System, warm: int) -> None:
    system.start_agent(extra_args=[f"--warm-engines={warm}"])
    system.deploy("introspect", INTROSPECT, "main", "--job-variable", 'env={"GREETING": "hi"}')
    seen = []
    for _ in range(3):
        # The pool refills behind each run it hands out.
        wait_for(lambda: len(standbys(system.root)) == warm, what=f"{warm} warm engines")
        run_id = system.create_run("introspect")
        seen.append(introspect(system, run_id))
        assert seen[-1]["run_id"] == run_id
    for one in seen:
        assert_set_up_for_its_run(system, one)
        # Warm, each run went to an engine started ahead of it.
        assert one["standby"] is bool(warm)
    # One process per run, never reused.
    assert len({one["pid"] for one in seen}) == 3


def test_a_run_whose_environment_needs_a_fresh_interpreter_starts_cold(system: System) -> None:
    system.start_agent(extra_args=["--warm-engines=2"])
    system.deploy("introspect", INTROSPECT, "main", "--job-variable", 'env={"PYTHONHASHSEED": "7"}')
    seen = introspect(system, system.create_run("introspect"))
    assert seen["standby"] is False


@pytest.mark.parametrize("warm", [0, 2])
def test_cancel_kills_the_whole_process_group_warm_or_cold(system: System, warm: int) -> None:
    system.start_agent(extra_args=[f"--warm-engines={warm}"])
    system.deploy("family", SLEEPY_FAMILY)
    wait_for(lambda: len(standbys(system.root)) == warm, what=f"{warm} warm engines")
    run_id = system.create_run("family")
    cancel_kills_the_group(system, run_id)


def test_warm_engines_without_a_run_stop_with_the_agent(system: System) -> None:
    agent = system.start_agent(extra_args=["--warm-engines=2"])
    wait_for(lambda: len(standbys(system.root)) == 2, what="two warm engines")
    waiting = standbys(system.root)
    agent.stop()
    wait_for(lambda: not any(pid_alive(pid) for pid in waiting), what="warm engines stopped")


def cancel_kills_the_group(system: System, run_id: str) -> None:
    """Cancel a running ``SLEEPY_FAMILY`` run; its engine and the flow's child both end."""
    wait_for(
        lambda: any(line.text.startswith("child ") for line in system.logs(run_id)),
        what="the flow's child started",
    )
    child = int(
        next(line.text for line in system.logs(run_id) if line.text.startswith("child "))[6:]
    )
    engine = int(system.run(run_id).infrastructure_id.rsplit("/", 1)[1])
    assert system.cli("cancel", run_id).returncode == 0
    assert system.wait_terminal(run_id).state.type == types_pb2.STATE_TYPE_CANCELLED
    wait_for(lambda: not pid_alive(engine) and not pid_alive(child), what="the group gone")


def standbys(root: Path) -> list[int]:
    """Warm engines waiting for a run under this test's directory."""
    return engines_under(root, (b"standby",))
