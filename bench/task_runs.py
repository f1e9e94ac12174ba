"""Benchmark: the cost of tasks inside a real run, and a map of 10,000 no-op tasks.

Starts a control plane (SQLite in a temporary directory) and one process agent, and runs two
flows as deployments:

- ``calls``: times N direct calls of a sync no-op ``@task`` one by one inside the flow (each
  call reports its start and end on the engine's stream, asynchronously) and prints p50, p95
  and max per call, beside the same loop over the undecorated function;
- ``fan_out``: maps a no-op task over M items; prints the time from the flow's first line of
  code to the moment every task run is stored and readable through ``ListTaskRuns`` (all M
  COMPLETED in ``GetRun``'s counts), and to the flow's return.

Usage: python bench/task_runs.py [--calls 2000] [--items 10000]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from harness import bench_pool

from control_plane.cli.deploy import build_deployment
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2

FLOWS = """
import time

from flowyard import flow, task


def plain() -> None:
    return None


noop = task(plain)


@flow
def calls(n: int) -> dict:
    def timed(function) -> list[float]:
        spent = []
        for _ in range(n):
            start = time.perf_counter()
            function()
            spent.append(time.perf_counter() - start)
        return sorted(spent)

    plain_times, task_times = timed(plain), timed(noop)
    pick = lambda values, p: values[min(len(values) - 1, int(p / 100 * len(values)))]
    return {
        name: [round(pick(values, p) * 1e6, 1) for p in (50, 95, 100)]
        for name, values in (("plain", plain_times), ("task", task_times))
    }


@task
def item(x: int) -> int:
    return x


@flow(max_workers=8)
def fan_out(n: int) -> float:
    print(f"started at {time.time()!r}", flush=True)
    item.map(range(n)).result()
    return time.time()
"""


def run_flow(stub: Any, name: str, parameters: dict[str, int]) -> types_pb2.FlowRun:
    """Create a run of deployment ``name`` and wait for it to end."""
    run_id = stub.CreateRun(
        pb.CreateRunRequest(deployment_name=name, parameters_json=json.dumps(parameters))
    ).run.id
    last: types_pb2.FlowRun | None = None
    for message in stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=300):
        last = message.run
    assert last is not None and last.state.type == types_pb2.STATE_TYPE_COMPLETED, last
    return last


def main() -> None:
    """Run both flows and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--items", type=int, default=10_000)
    args = parser.parse_args()

    with bench_pool({"flow.py": FLOWS}, capacity=2) as (stub, source, _, _):
        for name in ("calls", "fan_out"):
            deployment = build_deployment(
                f"flow.py:{name}", name=name, pool="bench", source=source, parameters={}
            )
            stub.UpsertDeployment(pb.UpsertDeploymentRequest(deployment=deployment))

        run = run_flow(stub, "calls", {"n": args.calls})
        figures = json.loads(run.result_summary.replace("'", '"'))
        print(f"{args.calls} direct calls inside a run, µs per call (p50 / p95 / max):")
        for label, (p50, p95, most) in figures.items():
            print(f"  {label:<6} {p50:8.1f} {p95:8.1f} {most:10.1f}")

        run_id = stub.CreateRun(
            pb.CreateRunRequest(
                deployment_name="fan_out", parameters_json=json.dumps({"n": args.items})
            )
        ).run.id
        stored_at = None
        while stored_at is None:
            counts = stub.GetRun(pb.GetRunRequest(run_id=run_id)).task_run_counts
            if counts.get("TASK_RUN_STATE_COMPLETED", 0) == args.items:
                stored_at = time.time()
            else:
                time.sleep(0.01)
        lines = [
            line.text
            for m in stub.TailLogs(pb.TailLogsRequest(run_id=run_id))
            for line in m.lines
            if line.text.startswith("started at ")
        ]
        started = float(lines[0].removeprefix("started at "))
        listed = sum(1 for _ in _all_task_runs(stub, run_id))
        finished = stub.GetRun(pb.GetRunRequest(run_id=run_id)).run
        returned = float(finished.result_summary)
        print(f"map over {args.items} no-op tasks (8 workers):")
        print(f"  flow start -> flow returned           {returned - started:6.2f} s")
        print(f"  flow start -> every task run stored   {stored_at - started:6.2f} s")
        print(f"  task runs listed by ListTaskRuns      {listed}")
        state = types_pb2.StateType.Name(finished.state.type)
        print(f"  run state                             {state}")


def _all_task_runs(stub: Any, run_id: str) -> list[types_pb2.TaskRun]:
    found: list[types_pb2.TaskRun] = []
    token = ""
    while True:
        page = stub.ListTaskRuns(
            pb.ListTaskRunsRequest(run_id=run_id, page_size=10_000, page_token=token)
        )
        found.extend(page.task_runs)
        token = page.next_page_token
        if not token:
            return found


if __name__ == "__main__":
    main()
