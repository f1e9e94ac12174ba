"""A flow written with ``@flow`` and ``@task`` runs as a deployment: control plane, process
agent and engine as real processes."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from flowyard.v1 import types_pb2

from .conftest import System, running_system

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
