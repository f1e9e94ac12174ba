"""Subflows and ``run_deployment``: child runs recorded under the parent, through the real
control plane (on each store), process agent and engines."""

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2

from .conftest import System, running_system, wait_for

PARENT = """
import logging

from flowyard import flow, run_deployment, runtime, task

log = logging.getLogger("parent")


@task
def double(x: int) -> int:
    log.info("doubling %s", x)
    return 2 * x


@flow(name="transform")
def transform(rows: list[int]) -> int:
    log.info("transform in run %s", runtime.flow_run.id)
    return sum(double.map(rows).result())


@flow(name="broken")
def broken() -> None:
    raise ValueError("bad row")


@flow
def main(child_deployment: str = "child") -> str:
    log.info("parent starts")
    total = transform([1, 2, 3])
    try:
        broken()
    except ValueError:
        log.info("the broken subflow failed, as planned")
    child = run_deployment(child_deployment, {"n": total}, wait=True, timeout=60)
    log.info("child %s ended %s", child.id, child.state)
    return f"{total}/{child.state}/{child.result_summary}"
"""

CHILD = """
import time

from flowyard import flow


@flow
def main(n: int = 0, sleep: float = 0.0) -> int:
    print(f"child got {n}", flush=True)
    time.sleep(sleep)
    return n + 1
"""


@pytest.fixture
def system(tmp_path: Path, db_url: str | None) -> Iterator[System]:
    with running_system(tmp_path, db_url=db_url) as system:
        yield system


def test_subflows_and_a_waited_deployment_run_are_children_of_the_parent(
    system: System,
) -> None:
    system.start_agent()
    system.deploy("child", CHILD)
    system.deploy("parent", PARENT)
    parent_id = system.create_run("parent")
    parent = system.wait_terminal(parent_id)
    assert parent.state.type == types_pb2.STATE_TYPE_COMPLETED, parent.state.message
    assert parent.result_summary == "'12/COMPLETED/13'"

    children = system.stub.GetRun(pb.GetRunRequest(run_id=parent_id)).children
    assert [(c.flow_name, c.subflow, c.state.type) for c in children] == [
        ("transform", True, types_pb2.STATE_TYPE_COMPLETED),
        ("broken", True, types_pb2.STATE_TYPE_FAILED),
        ("main", False, types_pb2.STATE_TYPE_COMPLETED),
    ]
    assert all(c.parent_run_id == parent_id for c in children)
    transform, broken, child = children
    assert transform.result_summary == "12"
    assert "ValueError: bad row" in broken.state.message
    assert (child.deployment_name, json.loads(child.parameters_json)) == ("child", {"n": 12})
    assert child.cancel_with_parent

    # A subflow's logs and task runs are its own; the parent's logs show everything.
    sub_texts = [line.text for line in system.logs(transform.id)]
    assert f"transform in run {transform.id}" in sub_texts
    assert {"doubling 1", "doubling 2", "doubling 3"} <= set(sub_texts)
    assert "parent starts" not in sub_texts
    parent_texts = [line.text for line in system.logs(parent_id)]
    assert "parent starts" in parent_texts and "doubling 2" in parent_texts
    sub_tasks = system.stub.ListTaskRuns(pb.ListTaskRunsRequest(run_id=transform.id)).task_runs
    assert sorted(t.name for t in sub_tasks) == ["double-0", "double-1", "double-2"]
    assert not system.stub.ListTaskRuns(pb.ListTaskRunsRequest(run_id=parent_id)).task_runs
    assert "child got 12" in [line.text for line in system.logs(child.id)]

    shown = system.cli("runs", "show", parent_id)
    assert shown.returncode == 0, shown.stderr
    assert transform.id in shown.stdout and child.id in shown.stdout
    shown_child = system.cli("runs", "show", transform.id)
    assert shown_child.returncode == 0, shown_child.stderr
    assert parent_id in shown_child.stdout and "(subflow)" in shown_child.stdout


WAITER = """
from flowyard import flow, run_deployment


@flow
def main() -> str:
    return run_deployment("child", {"sleep": 600}).state
"""


def test_cancelling_the_parent_cancels_the_child_it_waits_on(system: System) -> None:
    system.start_agent()
    system.deploy("child", CHILD)
    system.deploy("waiter", WAITER)
    parent_id = system.create_run("waiter")

    def running_child() -> types_pb2.FlowRun | None:
        children = system.stub.GetRun(pb.GetRunRequest(run_id=parent_id)).children
        if children and children[0].state.type == types_pb2.STATE_TYPE_RUNNING:
            return children[0]
        return None

    child = wait_for(running_child, what="the child run RUNNING")
    system.stub.CancelRun(pb.CancelRunRequest(run_id=parent_id))
    assert system.wait_terminal(parent_id).state.type == types_pb2.STATE_TYPE_CANCELLED
    child = system.wait_terminal(child.id)
    assert child.state.type == types_pb2.STATE_TYPE_CANCELLED, child.state.message
    assert parent_id in child.state.message


SLOW_SUBFLOW = """
import time

from flowyard import flow


@flow(name="slow")
def slow() -> None:
    print("slow subflow started", flush=True)
    time.sleep(600)


@flow
def main() -> None:
    slow()
"""


def test_a_killed_engine_leaves_no_subflow_running(system: System) -> None:
    system.start_agent()
    system.deploy("slow", SLOW_SUBFLOW)
    parent_id = system.create_run("slow")

    def subflow_running() -> types_pb2.FlowRun | None:
        children = system.stub.GetRun(pb.GetRunRequest(run_id=parent_id)).children
        texts = [line.text for line in system.logs(children[0].id)] if children else []
        return children[0] if "slow subflow started" in texts else None

    subflow = wait_for(subflow_running, what="the subflow RUNNING")
    with pytest.raises(grpc.RpcError) as refused:
        system.stub.CancelRun(pb.CancelRunRequest(run_id=subflow.id))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cancel that run" in (refused.value.details() or "")
    pid = int(system.run(parent_id).infrastructure_id.rsplit("/", 1)[1])
    os.kill(pid, signal.SIGKILL)
    assert system.wait_terminal(parent_id).state.type == types_pb2.STATE_TYPE_CRASHED
    subflow = system.wait_terminal(subflow.id)
    assert subflow.state.type == types_pb2.STATE_TYPE_CRASHED


ASYNC_SUBFLOWS = """
import asyncio

from flowyard import flow, runtime


@flow(name="inner")
async def inner(x: int) -> int:
    print(f"inner {x} in run {runtime.flow_run.id}", flush=True)
    await asyncio.sleep(0.05)
    return 2 * x


@flow
async def main() -> int:
    return sum(await asyncio.gather(inner(1), inner(2)))
"""


def test_async_subflows_running_together_are_each_their_own_run(system: System) -> None:
    system.start_agent()
    system.deploy("async-subflows", ASYNC_SUBFLOWS)
    parent_id = system.create_run("async-subflows")
    parent = system.wait_terminal(parent_id)
    assert parent.state.type == types_pb2.STATE_TYPE_COMPLETED, parent.state.message
    assert parent.result_summary == "6"
    children = system.stub.GetRun(pb.GetRunRequest(run_id=parent_id)).children
    assert sorted(c.result_summary for c in children) == ["2", "4"]
    for child in children:
        assert child.state.type == types_pb2.STATE_TYPE_COMPLETED
        x = json.loads(child.parameters_json)["x"]
        texts = [line.text for line in system.logs(child.id)]
        assert f"inner {x} in run {child.id}" in texts
        assert not any(t.startswith(f"inner {3 - x} ") for t in texts)


RECURSIVE = """
from flowyard import ChildRunError, flow


@flow(name="deeper")
def deeper(n: int) -> int:
    return deeper(n + 1)


@flow
def main() -> str:
    try:
        deeper(1)
    except ChildRunError as exc:
        print(f"refused: {exc}", flush=True)
        return "stopped"
    return "never"
"""


def test_runs_started_by_flows_nest_only_so_deep(system: System) -> None:
    system.start_agent()
    system.deploy("recursive", RECURSIVE)
    run_id = system.create_run("recursive")
    run = system.wait_terminal(run_id)
    assert run.state.type == types_pb2.STATE_TYPE_COMPLETED, run.state.message
    assert run.result_summary == "'stopped'"
    refused = [line.text for line in system.logs(run_id) if line.text.startswith("refused: ")]
    assert refused and "20 levels deep" in refused[0], refused
    (child,) = system.stub.GetRun(pb.GetRunRequest(run_id=run_id)).children
    assert child.state.type == types_pb2.STATE_TYPE_FAILED


NESTED = """
from flowyard import flow, run_deployment


@flow(name="inner")
def inner() -> str:
    print("inner line", flush=True)
    return run_deployment("child", {"n": 1}).state


@flow(name="outer")
def outer() -> str:
    print("outer line", flush=True)
    return inner()


@flow
def main() -> str:
    return outer()
"""


def test_a_run_started_inside_a_subflow_is_that_subflows_child(system: System) -> None:
    system.start_agent()
    system.deploy("child", CHILD)
    system.deploy("nested", NESTED)
    run_id = system.create_run("nested")
    run = system.wait_terminal(run_id)
    assert run.state.type == types_pb2.STATE_TYPE_COMPLETED, run.state.message
    assert run.result_summary == "'COMPLETED'"

    def children(of: str) -> list[types_pb2.FlowRun]:
        return list(system.stub.GetRun(pb.GetRunRequest(run_id=of)).children)

    (outer,) = children(run_id)
    (inner,) = children(outer.id)
    (deployed,) = children(inner.id)
    assert (outer.flow_name, inner.flow_name) == ("outer", "inner")
    assert (inner.subflow, deployed.subflow, deployed.deployment_name) == (True, False, "child")
    assert deployed.state.type == types_pb2.STATE_TYPE_COMPLETED
    texts = {r.id: [line.text for line in system.logs(r.id)] for r in (run, outer, inner)}
    assert "outer line" in texts[outer.id] and "inner line" not in texts[outer.id]
    assert "inner line" in texts[inner.id] and "outer line" not in texts[inner.id]
    assert {"outer line", "inner line"} <= set(texts[run_id])
