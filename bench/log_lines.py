"""Benchmark: a flow that prints many lines, from its first ``print`` to every line stored and
tailed, then ``flowyard logs RUN > file``.

Starts a control plane (SQLite in a temporary directory, or with ``--store postgresql`` a
database of its own on the local server) and one process agent, deploys a flow that prints
``--lines`` lines (default 100,000) as fast as it can and notes, on the machine's clock, when
it printed the first and the last. A tail (``TailLogs`` with follow) is open from
before the run starts and notes when each line arrives. Printed:

- lines/s from the first ``print`` to the last line arriving at the tail;
- how long after it was printed the last line arrived;
- how long the flow took to print them (the engine's capture, the flow's side of the cost);
- the control plane's CPU time per line, from the run's creation to the last line tailed
  (user + system of the server process: steadier than the rate on a busy machine, where
  the rate and the delay are bounded by it);
- the seconds ``flowyard logs RUN`` takes to write every line to a file.

Usage: python bench/log_lines.py [--lines 100000] [--tries 3] [--store postgresql]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from harness import bench_system
from plane import ADMIN_POSTGRES, postgres_database, process_cpu_seconds

from control_plane.cli.deploy import build_deployment
from control_plane.cli.processes import script
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2

FLOW = """\
import json, os, time

def chatty(lines: int) -> None:
    first = time.time()
    for number in range(lines - 1):
        print(f"line {number} of a chatty flow, with some words to make it look like a log")
    last = time.time()
    print(f"line {lines - 1} of a chatty flow, the last one")
    with open(os.path.join(NOTES, os.environ["FLOWYARD_RUN_ID"] + ".json"), "w") as out:
        json.dump({"first": first, "last": last}, out)
"""


def tail(stub: Any, run_id: str, lines: int, arrived: dict[str, float]) -> None:
    """Follow the run's lines; note when the first and the last arrived."""
    count = 0
    request = pb.TailLogsRequest(run_id=run_id, follow=True)
    for message in stub.TailLogs(request, timeout=600):
        count += len(message.lines)
        arrived.setdefault("first", time.time())
        if count >= lines:
            arrived["last"] = time.time()
            return


def one_try(
    stub: Any, address: str, token: str, server_pid: int, lines: int, notes: Path
) -> dict[str, float]:
    cpu_before = process_cpu_seconds(server_pid)
    run_id = stub.CreateRun(
        pb.CreateRunRequest(deployment_name="chatty", parameters_json=json.dumps({"lines": lines}))
    ).run.id
    arrived: dict[str, float] = {}
    follower = threading.Thread(target=tail, args=(stub, run_id, lines, arrived))
    follower.start()
    follower.join(600)
    cpu_tailed = process_cpu_seconds(server_pid) - cpu_before
    for message in stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=600):
        run = message.run
    if run.state.type != types_pb2.STATE_TYPE_COMPLETED:
        raise SystemExit(f"run {run_id} ended {run.state}")
    printed = json.loads((notes / f"{run_id}.json").read_text())
    with tempfile.TemporaryFile() as out:
        started = time.monotonic()
        subprocess.run(
            [*script("flowyard"), "--server", address, "logs", run_id],
            stdout=out,
            check=True,
            env={**os.environ, "FLOWYARD_TOKEN": token},
        )
        logs_seconds = time.monotonic() - started
        written = out.seek(0, os.SEEK_END)
    return {
        "rate": lines / (arrived["last"] - printed["first"]),
        "last_after_ms": (arrived["last"] - printed["last"]) * 1000,
        "print_seconds": printed["last"] - printed["first"],
        "server_cpu_us": cpu_tailed / lines * 1e6,
        "logs_seconds": logs_seconds,
        "logs_mb": written / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--tries", type=int, default=3)
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--postgres", default=ADMIN_POSTGRES, help="a database on the server to create one from"
    )
    args = parser.parse_args()

    notes = Path(tempfile.mkdtemp(prefix="flowyard-bench-notes-"))
    flows = {"flow.py": f"NOTES = {str(notes)!r}\n{FLOW}"}
    with contextlib.ExitStack() as stack:
        db_url = None
        if args.store == "postgresql":
            db_url = stack.enter_context(postgres_database(args.postgres))
        system = stack.enter_context(bench_system(flows, capacity=1, db_url=db_url))
        deployment = build_deployment(
            "flow.py:chatty", name="chatty", pool="bench", source=system.source, parameters={}
        )
        system.stub.UpsertDeployment(pb.UpsertDeploymentRequest(deployment=deployment))
        results = [
            one_try(system.stub, system.address, system.token, system.server.pid, args.lines, notes)
            for _ in range(args.tries)
        ]
    shutil.rmtree(notes, ignore_errors=True)

    print(f"a flow printing {args.lines:,} lines, {args.tries} tries")
    for label, key, form, unit in (
        ("first print -> last line tailed", "rate", "{:>12,.0f}", "lines/s"),
        ("last print -> last line tailed", "last_after_ms", "{:>12.1f}", "ms"),
        ("the flow printing them", "print_seconds", "{:>12.2f}", "s"),
        ("control plane CPU per line, until tailed", "server_cpu_us", "{:>12.2f}", "us"),
        (
            "flowyard logs RUN > file",
            "logs_seconds",
            "{:>12.2f}",
            f"s ({results[0]['logs_mb']:.1f} MB)",
        ),
    ):
        print(f"{label:<40}" + "".join(form.format(r[key]) for r in results) + f"  {unit}")


if __name__ == "__main__":
    main()
