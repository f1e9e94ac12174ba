"""Benchmark: how soon a run is claimed while hundreds of due runs ahead of it are blocked.

The tests check that such a run is dispatched at all (a dispatcher that only looked at the
oldest due runs never would); how fast is measured here, on a machine of your choosing.
Starts a control plane and one process agent, deploys ``etl`` (concurrency limit 1, a flow
that sleeps) and ``other`` (a flow that returns at once), creates ``--blocked`` + 1 runs of
``etl`` (one runs, the rest wait for its slot), then creates runs of ``other`` one after
another and prints p50, p95 and max of create -> claimed (the server's times).

Usage: python bench/blocked_dispatch.py [--blocked 299] [--runs 20]
"""

from __future__ import annotations

import argparse

from harness import bench_pool

from control_plane.cli.deploy import build_deployment
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2

SLEEPY = "import time\n\n\ndef etl() -> None:\n    time.sleep(600)\n"
NOOP = "def other() -> None:\n    return None\n"


def main() -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocked", type=int, default=299)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    claimed: list[float] = []
    with bench_pool({"etl.py": SLEEPY, "other.py": NOOP}, capacity=2) as (stub, source, _, _):
        for entrypoint, name in (("etl.py:etl", "etl"), ("other.py:other", "other")):
            deployment = build_deployment(
                entrypoint, name=name, pool="bench", source=source, parameters={}
            )
            deployment.concurrency_limit = 1 if name == "etl" else 0
            stub.UpsertDeployment(pb.UpsertDeploymentRequest(deployment=deployment))
        etl = [
            stub.CreateRun(pb.CreateRunRequest(deployment_name="etl")).run.id
            for _ in range(args.blocked + 1)
        ]
        for _ in range(args.runs):
            run_id = stub.CreateRun(pb.CreateRunRequest(deployment_name="other")).run.id
            for message in stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=120):
                run = message.run
            if run.state.type != types_pb2.STATE_TYPE_COMPLETED:
                raise SystemExit(f"run {run_id} ended {run.state}")
            history = stub.GetRun(pb.GetRunRequest(run_id=run_id)).history
            claim = next(h for h in history if h.name == "Assigned")
            claimed.append(
                (claim.timestamp.ToNanoseconds() - run.create_time.ToNanoseconds()) / 1e6
            )
        for run_id in etl:
            stub.CancelRun(pb.CancelRunRequest(run_id=run_id))
        for run_id in etl:
            for _ in stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=120):
                pass

    print(f"{args.runs} runs claimed behind {args.blocked} blocked ones")
    print(f"{'step':<28}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}")
    ordered = sorted(claimed)
    p50, p95 = (ordered[min(len(ordered) - 1, int(p * len(ordered)))] for p in (0.5, 0.95))
    print(f"{'create -> claimed (server)':<28}{p50:>10.1f}{p95:>10.1f}{ordered[-1]:>10.1f}")


if __name__ == "__main__":
    main()
