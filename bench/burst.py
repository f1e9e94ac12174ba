"""Benchmark: a burst of trivial runs on the process runtime, and how fast an engine starts.

Starts a control plane (SQLite in a temporary directory) and one process agent with
``--capacity`` slots (default 10), deploys a flow that notes when its first line ran and how
much memory its process holds, then

1. creates ``--probe`` runs one after another, each after the previous one finished (default
   20): create -> RUNNING, and engine process start -> first line of user code;
2. creates ``--runs`` runs at once (default 200): completed runs/s (first create to last
   terminal state), how many did not complete, and create -> RUNNING under that load.

Every figure is read from what the runs themselves recorded (the control plane's state
times, and the flow's own clock), so it measures the real agent, engine and server.

Usage: python bench/burst.py [--runs 200] [--capacity 10] [--probe 20]
       [--agent-option=--engine-start=cold ...]  (fork, the default; warm; cold)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from dispatch_latency import millis, percentile
from harness import bench_pool

from control_plane.cli.deploy import build_deployment
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2

# Notes how long after its process started (/proc, in clock ticks since boot) its first line
# ran, in a file named after the run.
FLOW = """\
import json, os, time

def noop() -> None:
    since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    with open("/proc/self/stat") as stat:
        started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/self/status") as status:
        rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
    note = {"after": since_boot - started_ticks / os.sysconf("SC_CLK_TCK"), "rss_kb": rss_kb}
    with open(os.path.join(NOTES, os.environ["FLOWYARD_RUN_ID"] + ".json"), "w") as out:
        json.dump(note, out)
"""


def table(rows: list[tuple[str, list[float]]]) -> None:
    print(f"{'':<40}{'count':>7}{'p50':>9}{'p95':>9}{'max':>9}{'mean':>9}")
    for label, values in rows:
        if not values:
            print(f"{label:<40}{0:>7}")
            continue
        print(
            f"{label:<40}{len(values):>7}{percentile(values, 50):>9.1f}"
            f"{percentile(values, 95):>9.1f}{max(values):>9.1f}{statistics.fmean(values):>9.1f}"
        )


def finished(stub: Any, run_id: str) -> Any:
    """The run once it ended."""
    for message in stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=300):
        run = message.run
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--capacity", type=int, default=10)
    parser.add_argument("--probe", type=int, default=20)
    parser.add_argument(
        "--agent-option", action="append", default=[], help="an extra option for the agent"
    )
    args = parser.parse_args()

    notes = Path(tempfile.mkdtemp(prefix="flowyard-bench-notes-"))
    flow = f"NOTES = {str(notes)!r}\n{FLOW}"
    with bench_pool({"flow.py": flow}, capacity=args.capacity, agent_options=args.agent_option) as (
        stub,
        source,
        _,
        _,
    ):
        deployment = build_deployment(
            "flow.py:noop", name="noop", pool="bench", source=source, parameters={}
        )
        stub.UpsertDeployment(pb.UpsertDeploymentRequest(deployment=deployment))

        to_running, to_first_line, rss = [], [], []
        for _ in range(args.probe):
            run = finished(stub, stub.CreateRun(pb.CreateRunRequest(deployment_name="noop")).run.id)
            if run.state.type != types_pb2.STATE_TYPE_COMPLETED:
                raise SystemExit(f"run {run.id} ended {run.state}")
            to_running.append(millis(run.create_time, run.start_time))
            noted = json.loads((notes / f"{run.id}.json").read_text())
            to_first_line.append(noted["after"] * 1000)
            rss.append(noted["rss_kb"] / 1024)

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            ids = list(
                pool.map(
                    lambda _: stub.CreateRun(pb.CreateRunRequest(deployment_name="noop")).run.id,
                    range(args.runs),
                )
            )
            runs = list(pool.map(lambda run_id: finished(stub, run_id), ids))
        wall = time.monotonic() - started
    shutil.rmtree(notes, ignore_errors=True)

    print(f"idle: {args.probe} runs one after another")
    table(
        [
            ("create -> RUNNING (ms)", to_running),
            ("engine process start -> first line (ms)", to_first_line),
            ("engine RSS at the first line (MB)", rss),
        ]
    )
    completed = [r for r in runs if r.state.type == types_pb2.STATE_TYPE_COMPLETED]
    print(
        f"burst: {args.runs} runs at once, capacity {args.capacity}: "
        f"{len(completed)} COMPLETED, {args.runs - len(completed)} not, "
        f"{len(completed) / wall:.1f} runs/s ({wall:.1f} s)"
    )
    table([("create -> RUNNING (ms)", [millis(r.create_time, r.start_time) for r in completed])])


if __name__ == "__main__":
    main()
