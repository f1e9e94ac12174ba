"""A flow written with ``@flow`` and ``@task`` runs as a deployment: control plane, process
agent and engine as real processes."""

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2

from .conftest import System, running_system, wait_for

ETL = """
import logging

from flowyard import flow, runtime, task

log = logging.getLogger("etl")
calls = []


@task(retries=3, retry_delay_seconds=0.01)
def extract(rows: int) -> list[int]:
    calls.append(runtime.task_run.attempt)
    if len(calls) < 3:
        raise ConnectionError(f"the source is busy ({len(calls)})")
    return list(range(rows))


@task
def transform(row: int) -> int:
    return row * 10


@flow(name="etl", max_workers=4)
def main(rows: int = 3) -> int:
    run = runtime.flow_run
    log.info(
        "run %s attempt %s of %s, rows=%s", run.id, run.attempt, run.deployment_name,
        run.parameters["rows"],
    )
    return sum(transform.map(extract(rows)).result())
"""


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    with running_system(tmp_path) as system:
        yield system


def test_a_flow_with_a_retried_task_and_a_map_completes(system: System) -> None:
    system.start_agent()
    system.deploy("etl", ETL)
    run_id = system.create_run("etl", rows=5)
    run = system.wait_terminal(run_id)
    assert run.state.type == types_pb2.STATE_TYPE_COMPLETED, run.state.message
    assert run.result_summary == "100"
    texts = [line.text for line in system.logs(run_id)]
    assert f"run {run_id} attempt 1 of etl, rows=5" in texts
    retries = [t for t in texts if t.startswith("Task run extract-0 failed")]
    assert retries == [
        "Task run extract-0 failed (attempt 1 of 4): ConnectionError: the source is busy (1); "
        "retrying in 0.01 s",
        "Task run extract-0 failed (attempt 2 of 4): ConnectionError: the source is busy (2); "
        "retrying in 0.01 s",
    ]


FLAKY = """
import logging

from flowyard import flow, runtime, task

log = logging.getLogger("flaky")


@task(retries=3, retry_delay_seconds=0.01)
def flaky() -> str:
    attempt = runtime.task_run.attempt
    log.info("flaky attempt %s", attempt)
    if attempt < 3:
        raise ConnectionError(f"refused on attempt {attempt}")
    return "ok"


@task
def steady(x: int) -> int:
    log.info("steady %s", x)
    return x


@flow
def main() -> str:
    log.info("outside any task")
    steady(1)
    return flaky()
"""


def test_a_task_retried_twice_shows_its_attempts_and_errors(system: System) -> None:
    system.start_agent()
    system.deploy("flaky", FLAKY)
    run_id = system.create_run("flaky")
    run = system.wait_terminal(run_id)
    assert run.state.type == types_pb2.STATE_TYPE_COMPLETED, run.state.message

    listed = system.cli("runs", "tasks", run_id, "-o", "json")
    assert listed.returncode == 0, listed.stderr
    task_runs = {t["name"]: t for t in json.loads(listed.stdout)["task_runs"]}
    assert set(task_runs) == {"steady-0", "flaky-0"}
    flaky = task_runs["flaky-0"]
    assert (flaky["state"], flaky["attempts"]) == ("COMPLETED", 3)
    assert flaky["attempt_errors"] == {
        "1": "ConnectionError: refused on attempt 1",
        "2": "ConnectionError: refused on attempt 2",
    }
    assert flaky["start_time"] <= flaky["end_time"]

    shown = system.cli("runs", "show", run_id)
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if line.startswith("flaky-0"))
    assert "COMPLETED" in row and " 3 " in f" {row} ", row
    assert "Task runs (2 completed)" in shown.stdout

    only_flaky = system.cli("logs", run_id, "--task", "flaky")
    assert only_flaky.returncode == 0, only_flaky.stderr
    texts = only_flaky.stdout
    assert all(f"flaky attempt {n}" in texts for n in (1, 2, 3)), texts
    assert "refused on attempt 2" in texts
    assert "steady" not in texts and "outside any task" not in texts


MAPPED = """
import time

from flowyard import flow, task


@task
def work(item: int) -> int:
    time.sleep(0.02)
    return item


@flow(max_workers=4)
def main(n: int = 100) -> int:
    return len(work.map(range(n)).result())
"""


def test_a_map_runs_four_at_a_time_and_stores_each_task_run_once(system: System) -> None:
    system.start_agent()
    system.deploy("mapped", MAPPED)
    run_id = system.create_run("mapped", n=100)
    run = system.wait_terminal(run_id)
    assert run.state.type == types_pb2.STATE_TYPE_COMPLETED, run.state.message
    task_runs = list_task_runs(system, run_id, page_size=30)
    assert sorted(t.name for t in task_runs) == sorted(f"work-{i}" for i in range(100))
    assert {t.state for t in task_runs} == {types_pb2.TASK_RUN_STATE_COMPLETED}
    # From the recorded times: how many ran at once, at the busiest moment.
    edges = sorted(
        [(t.start_time.ToNanoseconds(), 1) for t in task_runs]
        + [(t.end_time.ToNanoseconds(), -1) for t in task_runs]
    )
    running, busiest = 0, 0
    for _, change in edges:
        running += change
        busiest = max(busiest, running)
    assert 2 <= busiest <= 4, busiest
    counts = system.stub.GetRun(pb.GetRunRequest(run_id=run_id)).task_run_counts
    assert dict(counts) == {"TASK_RUN_STATE_COMPLETED": 100}


STUCK = """
import time

from flowyard import flow, task


@task
def stuck() -> None:
    print("stuck started", flush=True)
    time.sleep(600)


@flow
def main() -> None:
    stuck.submit().result()
"""


@pytest.mark.parametrize("end", ["killed", "cancelled"])
def test_an_attempt_that_ends_leaves_no_task_run_running(system: System, end: str) -> None:
    system.start_agent()
    system.deploy("stuck", STUCK)
    run_id = system.create_run("stuck")
    wait_for(
        lambda: (
            [t.state for t in list_task_runs(system, run_id)] == [types_pb2.TASK_RUN_STATE_RUNNING]
        ),
        what="the task run RUNNING",
    )
    if end == "killed":
        pid = int(system.run(run_id).infrastructure_id.rsplit("/", 1)[1])
        os.kill(pid, signal.SIGKILL)
        expected = (types_pb2.STATE_TYPE_CRASHED, types_pb2.TASK_RUN_STATE_CRASHED)
    else:
        system.stub.CancelRun(pb.CancelRunRequest(run_id=run_id))
        expected = (types_pb2.STATE_TYPE_CANCELLED, types_pb2.TASK_RUN_STATE_CANCELLED)
    run = system.wait_terminal(run_id)
    assert run.state.type == expected[0], run.state.message
    (task_run,) = list_task_runs(system, run_id)
    assert task_run.state == expected[1]
    assert task_run.HasField("end_time")


def list_task_runs(system: System, run_id: str, page_size: int = 0) -> list[types_pb2.TaskRun]:
    found: list[types_pb2.TaskRun] = []
    token = ""
    while True:
        page = system.stub.ListTaskRuns(
            pb.ListTaskRunsRequest(run_id=run_id, page_size=page_size, page_token=token)
        )
        found.extend(page.task_runs)
        token = page.next_page_token
        if not token:
            return found
