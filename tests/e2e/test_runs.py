"""Flows run end to end: control plane, process agent and engine as real processes, with the
control plane on each store (SQLite, PostgreSQL)."""

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from control_plane.cli.processes import script
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2

from .conftest import POOL, System, pid_alive, running_system, wait_for


@pytest.fixture
def system(tmp_path: Path, db_url: str | None) -> Iterator[System]:
    with running_system(tmp_path, db_url=db_url) as system:
        yield system


CHATTY = """
import logging
import sys

log = logging.getLogger("chatty")


def main(n: int = 10) -> int:
    for i in range(n):
        if i % 3 == 0:
            print(f"line {i}")
        elif i % 3 == 1:
            log.info("line %d", i)
        else:
            print(f"line {i}", file=sys.stderr)
    return n
"""

FAILING = """
def main() -> None:
    raise ValueError("the answer is not 42")
"""

SLEEPY = """
import time


def main() -> None:
    print("going to sleep", flush=True)
    time.sleep(600)
    print("woke up")
"""


@pytest.mark.parametrize("start", ["fork", "warm", "cold"])
def test_logs_arrive_complete_in_order_without_duplicates(system: System, start: str) -> None:
    system.start_agent(extra_args=[f"--engine-start={start}"])
    system.deploy("chatty", CHATTY)
    n = 600
    result = system.cli("run", "chatty", "--param", f"n={n}", "--watch")
    assert result.returncode == 0, result.stderr
    printed = [line.split()[-2:] for line in result.stdout.splitlines() if " line " in f" {line}"]
    assert [int(number) for _, number in printed] == list(range(n))
    assert result.stdout.rstrip().endswith("COMPLETED")

    # Stored lines: numbered 1..N without gaps, the flow's lines in order among the engine's own.
    run_id = result.stderr.split()[2]
    lines = system.logs(run_id)
    assert [line.seq for line in lines] == list(range(1, len(lines) + 1))
    flow_lines = [line for line in lines if line.text.startswith("line ")]
    assert [line.text for line in flow_lines] == [f"line {i}" for i in range(n)]
    streams = {line.text: line.stream for line in flow_lines[:3]}
    assert streams == {
        "line 0": types_pb2.LOG_STREAM_STDOUT,
        "line 1": types_pb2.LOG_STREAM_LOGGER,
        "line 2": types_pb2.LOG_STREAM_STDERR,
    }
    run = system.run(run_id)
    assert run.state.type == types_pb2.STATE_TYPE_COMPLETED
    assert run.result_summary == str(n)


def test_logs_follow_prints_history_then_live_lines_and_ends_with_the_run(system: System) -> None:
    system.start_agent()
    system.deploy("sleepy", SLEEPY)
    run_id = system.create_run("sleepy")
    wait_for(
        lambda: any("going to sleep" in line.text for line in system.logs(run_id)),
        what="first line",
    )
    follower = subprocess.Popen(
        [*script("flowyard"), "--server", system.address, "logs", run_id, "--follow"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "FLOWYARD_TOKEN": system.admin_token},
    )
    assert follower.stdout is not None
    history = [follower.stdout.readline() for _ in range(3)]  # written before we followed
    assert "going to sleep" in history[-1], history
    assert follower.poll() is None, "a follower must keep waiting while the run is live"
    assert system.cli("cancel", run_id).returncode == 0
    rest, _ = follower.communicate(timeout=30)  # ends by itself once the run is terminal
    assert follower.returncode == 1  # like `run --watch`: 0 only for COMPLETED
    live = [line for line in rest.splitlines() if line.strip()]
    assert live and live[-1].startswith("CANCELLED")  # the final state, last
    assert "cancel" in live[-2].lower()  # the engine's last line, printed live
    assert "going to sleep" not in rest  # nothing printed twice


def test_raising_flow_ends_failed_with_its_exception(system: System) -> None:
    system.start_agent()
    system.deploy("failing", FAILING)
    result = system.cli("run", "failing", "--watch")
    assert result.returncode == 1
    assert "FAILED" in result.stdout and "ValueError: the answer is not 42" in result.stdout
    run_id = result.stderr.split()[2]
    run = system.run(run_id)
    assert run.state.type == types_pb2.STATE_TYPE_FAILED
    assert run.state.message.startswith("ValueError: the answer is not 42")
    assert "Traceback" in run.state.message and 'flow.py", line 3, in main' in run.state.message
    assert any("ValueError: the answer is not 42" in line.text for line in system.logs(run_id))


def test_cancelled_sleeping_flow_ends_cancelled_and_its_process_is_gone(system: System) -> None:
    system.start_agent()
    system.deploy("sleepy", SLEEPY)
    run_id = system.create_run("sleepy")
    wait_for(lambda: system.run(run_id).state.type == types_pb2.STATE_TYPE_RUNNING, what="RUNNING")
    pid = int(system.run(run_id).infrastructure_id.rsplit("/", 1)[1])
    assert pid_alive(pid)
    result = system.cli("cancel", run_id, "--reason", "test over")
    assert result.returncode == 0, result.stderr
    run = system.wait_terminal(run_id, timeout=30)
    assert run.state.type == types_pb2.STATE_TYPE_CANCELLED
    assert "test over" in run.state.message
    wait_for(lambda: not pid_alive(pid), timeout=15, what="engine process gone")
    assert not any("woke up" in line.text for line in system.logs(run_id))


def test_agent_killed_and_restarted_runs_the_next_flow(system: System) -> None:
    agent = system.start_agent(name="phoenix")
    system.deploy("chatty", CHATTY)
    first = system.create_run("chatty", n=3)
    assert system.wait_terminal(first).state.type == types_pb2.STATE_TYPE_COMPLETED
    os.kill(agent.pid, signal.SIGKILL)
    agent.process.wait()
    wait_for(lambda: system.pool().connected_agents == 0, what="agent gone")
    queued = system.create_run("chatty", n=4)
    system.start_agent(name="phoenix")
    run = system.wait_terminal(queued)
    assert run.state.type == types_pb2.STATE_TYPE_COMPLETED
    assert run.result_summary == "4"


def test_bad_requests_get_one_clear_line_and_store_nothing(system: System) -> None:
    system.deploy("chatty", CHATTY)
    missing = system.cli("run", "nope")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: deployment 'nope' not found (NOT_FOUND)"
    unknown = system.cli("run", "chatty", "--param", "colour=red")
    assert unknown.returncode == 1
    assert "unknown parameter 'colour'" in unknown.stderr and "(INVALID_ARGUMENT)" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
    listed = system.cli("runs", "ls")
    assert listed.returncode == 0 and "chatty" not in listed.stdout


ENVY = """
import os


def main() -> str:
    return os.environ["GREETING"] + " " + os.environ["TARGET"]
"""


def test_env_job_variable_reaches_the_engine_merged_over_the_deployments(system: System) -> None:
    system.start_agent()
    system.deploy(
        "envy", ENVY, "main", "--job-variable", 'env={"GREETING": "hi", "TARGET": "nobody"}'
    )
    result = system.cli("run", "envy", "--job-variable", 'env={"TARGET": "there"}', "--watch")
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = result.stderr.split()[2]
    assert system.run(run_id).result_summary == "'hi there'"


TYPED = """
from dataclasses import dataclass
from typing import Optional, TypedDict


@dataclass
class Window:
    size: int
    steps: list[int]


class Limits(TypedDict):
    most: int


def main(
    n: int,
    items: list[int],
    pair: tuple[int, float],
    opt: Optional[int] = None,
    named: dict[str, int] | None = None,
    window: Window | None = None,
    limits: Limits | None = None,
) -> str:
    seen = [n, items[0], pair[0], pair[1], opt, named["a"], window.size, window.steps[0],
            limits["most"]]
    return " ".join(type(value).__name__ for value in seen)
"""
WHOLE = {
    "n": 7.0,
    "items": [1.0, 2],
    "pair": [1.0, 2.0],
    "opt": 3.0,
    "named": {"a": 4.0},
    "window": {"size": 5.0, "steps": [6.0]},
    "limits": {"most": 8.0},
}


def test_int_parameters_reach_the_flow_as_ints_at_every_depth(system: System) -> None:
    system.start_agent()
    system.deploy("typed", TYPED)  # with the schema derived from the signature
    unchecked = types_pb2.Deployment(
        name="unchecked",
        entrypoint="flow.py:main",
        source=types_pb2.Source(
            local=types_pb2.LocalSource(path=str(system.write_flow("u", TYPED)))
        ),
        pool=POOL,
    )
    system.stub.UpsertDeployment(pb.UpsertDeploymentRequest(deployment=unchecked))
    expected = "'int int int float int int int int int'"
    for deployment in ("typed", "unchecked"):
        run = system.wait_terminal(system.create_run(deployment, **WHOLE))
        assert run.state.type == types_pb2.STATE_TYPE_COMPLETED, run.state.message
        assert run.result_summary == expected, deployment
    # A fraction where an int is wanted: refused by the schema, or by the engine without one.
    with pytest.raises(grpc.RpcError) as refused:
        system.create_run("typed", **{**WHOLE, "n": 7.5})
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert refused.value.details() == "parameters: n: 7.5 is not of type 'integer'"  # type: ignore[attr-defined]
    run = system.wait_terminal(system.create_run("unchecked", **{**WHOLE, "n": 7.5}))
    assert run.state.type == types_pb2.STATE_TYPE_FAILED
    assert "parameter 'n' of main(): 7.5 is not an integer" in run.state.message


FORKING = """
import logging
import subprocess

log = logging.getLogger("forking")


def main(n: int = 100) -> int:
    # A preexec_fn makes subprocess fork (not vfork) while the engine's gRPC threads run;
    # with gRPC's fork handlers on, a child could die before exec.
    failed = 0
    for i in range(n):
        log.info("child %s", i)
        failed += subprocess.run(["true"], preexec_fn=lambda: None).returncode != 0
    return failed
"""


def test_a_flow_that_forks_subprocesses_while_the_engine_reports(system: System) -> None:
    system.start_agent()
    system.deploy("forking", FORKING)
    run_id = system.create_run("forking")
    run = system.wait_terminal(run_id)
    assert run.state.type == types_pb2.STATE_TYPE_COMPLETED, run.state.message
    assert run.result_summary == "0"
    assert not [line.text for line in system.logs(run_id) if "Bad file descriptor" in line.text]
