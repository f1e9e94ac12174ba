"""Benchmark: do open web pages slow the gRPC hot paths? CreateRun and log ingest, without and
with a browser following a running flow.

Each side starts its own control plane (SQLite in a temporary directory, HTTP on a free port)
and one process agent with two slots, starts a flow that prints a line every 100 ms for the
whole time, then measures, as the other benchmarks do (their code, not a copy):

- CreateRun: ``--callers`` concurrent gRPC callers (default 16) creating runs back to back for
  ``--seconds`` (default 10), after a second of warm-up (``bench/create_runs.py``): creates/s
  and p50 / p99 per call. The runs go to a pool without an agent, so they stay SCHEDULED;
- log ingest: a flow printing ``--lines`` lines as fast as it can (default 100,000), with a
  ``TailLogs`` open (``bench/log_lines.py``): lines/s from its first ``print`` to the last line
  at the tail, and how late the last line arrives.

Without a browser, then with headless Chromium (the system's ``/usr/bin/chromium``) logged in
and two tabs open through both measurements: the ticking flow's run page (its logs following
over Server-Sent Events) and the runs list (which re-reads its rows whenever runs change, so
every create reaches it). Printed side by side.

Usage: python bench/web_overhead.py [--callers 16] [--seconds 10] [--lines 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

import grpc
from create_runs import steady
from harness import BenchSystem, bench_system
from log_lines import FLOW as CHATTY
from log_lines import one_try
from plane import CHANNEL_OPTIONS, DEPLOYMENT, Plane, percentile
from playwright.async_api import async_playwright

from control_plane.cli.deploy import build_deployment
from flowyard.v1 import agent_pb2_grpc, control_plane_pb2_grpc, engine_pb2_grpc, types_pb2
from flowyard.v1 import control_plane_pb2 as pb

CHROMIUM = "/usr/bin/chromium"
#: A pool no agent serves: the created runs stay SCHEDULED.
IDLE_POOL = "idle"

TICKER = """\
import time


def ticker() -> None:
    for number in range(36_000):
        print(f"tick {number}", flush=True)
        time.sleep(0.1)
"""
NOOP = "def bench() -> None:\n    return None\n"


def prepare(system: BenchSystem) -> str:
    """The deployments; the ticking flow's run, once RUNNING."""
    stub = system.stub
    stub.CreatePool(pb.CreatePoolRequest(name=IDLE_POOL, type=types_pb2.POOL_TYPE_PROCESS))
    for entrypoint, name, pool in (
        ("flow.py:chatty", "chatty", "bench"),
        ("ticker.py:ticker", "ticker", "bench"),
        ("noop.py:bench", DEPLOYMENT, IDLE_POOL),
    ):
        deployment = build_deployment(
            entrypoint, name=name, pool=pool, source=system.source, parameters={}
        )
        stub.UpsertDeployment(pb.UpsertDeploymentRequest(deployment=deployment))
    run_id = str(stub.CreateRun(pb.CreateRunRequest(deployment_name="ticker")).run.id)
    stream = stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=120)
    for message in stream:
        if message.run.state.type == types_pb2.STATE_TYPE_RUNNING:
            stream.cancel()
            return run_id
        if message.run.state.type in (types_pb2.STATE_TYPE_FAILED, types_pb2.STATE_TYPE_CRASHED):
            break
    raise SystemExit(f"the ticking flow's run {run_id} did not start")


async def open_pages(stack: contextlib.AsyncExitStack, system: BenchSystem, run_id: str) -> None:
    """A logged-in browser with the run's page and the runs list open, until ``stack`` closes."""
    driver = await stack.enter_async_context(async_playwright())
    browser = await driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    stack.push_async_callback(browser.close)
    context = await browser.new_context()
    run_page = await context.new_page()
    await run_page.goto(f"{system.http_url}/login?next=/runs/{run_id}")
    await run_page.fill("#token", system.token)
    await run_page.click("button[type=submit]")
    await run_page.wait_for_url(f"**/runs/{run_id}")
    await run_page.wait_for_selector("#logs .line", timeout=60_000)
    runs_page = await context.new_page()
    await runs_page.goto(f"{system.http_url}/runs")
    await runs_page.wait_for_selector("#run-rows tr")


async def one_side(args: argparse.Namespace, with_browser: bool) -> dict[str, Any]:
    notes = Path(tempfile.mkdtemp(prefix="flowyard-bench-notes-"))
    flows = {"flow.py": f"NOTES = {str(notes)!r}\n{CHATTY}", "ticker.py": TICKER, "noop.py": NOOP}
    try:
        with bench_system(flows, capacity=2) as system:
            ticking = prepare(system)
            async with contextlib.AsyncExitStack() as stack:
                if with_browser:
                    await open_pages(stack, system, ticking)
                async with grpc.aio.insecure_channel(
                    system.address, options=CHANNEL_OPTIONS
                ) as channel:
                    plane = Plane(
                        system.address,
                        system.token,
                        "",
                        channel,
                        control_plane_pb2_grpc.ControlPlaneServiceStub(channel),
                        agent_pb2_grpc.AgentServiceStub(channel),
                        engine_pb2_grpc.EngineServiceStub(channel),
                        system.http_url,
                    )
                    await steady(plane, args.callers, 1.0)  # warm up connections and caches
                    latencies = await steady(plane, args.callers, args.seconds)
                ingest = await asyncio.to_thread(
                    one_try,
                    system.stub,
                    system.address,
                    system.token,
                    system.server.pid,
                    args.lines,
                    notes,
                )
            system.stub.CancelRun(pb.CancelRunRequest(run_id=ticking))
    finally:
        shutil.rmtree(notes, ignore_errors=True)
    return {
        "creates": len(latencies) / args.seconds,
        "p50": percentile(latencies, 0.5) * 1000,
        "p99": percentile(latencies, 0.99) * 1000,
        "rate": ingest["rate"],
        "last_after_ms": ingest["last_after_ms"],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--lines", type=int, default=100_000)
    args = parser.parse_args()

    without = await one_side(args, with_browser=False)
    with_pages = await one_side(args, with_browser=True)
    print(
        f"CreateRun: {args.callers} callers for {args.seconds:g} s; log ingest: a flow printing "
        f"{args.lines:,} lines; a flow printing a line every 100 ms runs throughout"
    )
    print(f"{'':<44}{'no browser':>12}{'browser open':>14}")
    for label, key, form in (
        ("CreateRun creates/s", "creates", "{:>12,.0f}"),
        ("CreateRun p50 ms", "p50", "{:>12.1f}"),
        ("CreateRun p99 ms", "p99", "{:>12.1f}"),
        ("ingest lines/s (first print -> last tailed)", "rate", "{:>12,.0f}"),
        ("last print -> last line tailed, ms", "last_after_ms", "{:>12.1f}"),
    ):
        print(f"{label:<44}{form.format(without[key])}  {form.format(with_pages[key])}")


if __name__ == "__main__":
    asyncio.run(main())
