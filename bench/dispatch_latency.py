"""Benchmark: sequential trivial runs on the process runtime, timed at each step.

Starts a control plane (SQLite in a temporary directory) and one process agent, deploys a flow
that returns at once, then creates N runs one after another, each after the previous one
finished. For every run it reads the times the control plane recorded and prints p50, p95
and max of:

- create -> claimed              (the dispatcher's compare-and-set committed)
- create -> assigned at the agent (the agent's receive time of the Assign)
- create -> RUNNING                (the engine has started, fetched and loaded the flow)
- create -> COMPLETED              (the flow returned and every log line was stored)

Usage: python bench/dispatch_latency.py [--runs 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

from google.protobuf.timestamp_pb2 import Timestamp
from harness import bench_pool

from control_plane.cli.deploy import build_deployment
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2

FLOW = "def noop() -> None:\n    return None\n"


def millis(start: Timestamp, end: Timestamp) -> float:
    """Milliseconds between two timestamps."""
    return (end.ToNanoseconds() - start.ToNanoseconds()) / 1e6


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def main() -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()

    with bench_pool({"flow.py": FLOW}, capacity=4) as (stub, source, _, _):
        deployment = build_deployment(
            "flow.py:noop", name="noop", pool="bench", source=source, parameters={}
        )
        stub.UpsertDeployment(pb.UpsertDeploymentRequest(deployment=deployment))

        claimed, assigned, running, completed = [], [], [], []
        wall = time.monotonic()
        for _ in range(args.runs):
            run_id = stub.CreateRun(pb.CreateRunRequest(deployment_name="noop")).run.id
            for message in stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=60):
                run = message.run
            if run.state.type != types_pb2.STATE_TYPE_COMPLETED:
                raise SystemExit(f"run {run_id} ended {run.state}")
            history = stub.GetRun(pb.GetRunRequest(run_id=run_id)).history
            claim = next(h for h in history if h.name == "Assigned")
            claimed.append(millis(run.create_time, claim.timestamp))
            assigned.append(millis(run.create_time, run.accept_time))
            running.append(millis(run.create_time, run.start_time))
            completed.append(millis(run.create_time, run.end_time))
        wall = time.monotonic() - wall

    print(f"{args.runs} sequential runs on the process runtime in {wall:.1f} s")
    print(f"{'step':<28}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}{'mean ms':>10}")
    for label, values in (
        ("create -> claimed (server)", claimed),
        ("create -> assigned at agent", assigned),
        ("create -> RUNNING", running),
        ("create -> COMPLETED", completed),
    ):
        print(
            f"{label:<28}{percentile(values, 50):>10.1f}{percentile(values, 95):>10.1f}"
            f"{max(values):>10.1f}{statistics.fmean(values):>10.1f}"
        )


if __name__ == "__main__":
    main()
