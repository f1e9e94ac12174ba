"""Benchmark: a run's log lines on the web: how late they reach a browser tab, and what 200
followers cost the control plane.

Starts a control plane (SQLite in a temporary directory, HTTP on a free port) and one process
agent, and deploys two flows that print ``ready``, wait for a file to appear (so every reader
is following before the first timed line), then print:

1. ``browser``: ``--lines`` lines (default 200), each ``--gap-ms`` apart (default 20 to 50 ms,
   at random), each carrying the flow's ``time.time()`` when printed. Headless Chromium (the
   system's ``/usr/bin/chromium``) logs in and opens the run page; a ``MutationObserver``
   installed before the page's own script notes ``Date.now()`` whenever a line is appended to
   ``#logs``. Printed: p50 / p95 / p99 / max of (appended - printed) in ms, and the count (the
   target is 100 ms at p99). Flow, server and browser share the machine's clock.
2. ``followers``: ``--rate`` lines/s (default 1,000) for ``--seconds`` (default 10), with no
   follower, then with each number of ``--followers`` clients (default 200) following
   ``GET /api/v1/runs/{id}/logs`` (raw sockets on one event loop: chunked SSE framing and the
   line count of each event, without decoding its JSON). For each, the control plane
   process's CPU time (``utime + stime`` of ``/proc/<pid>/stat``, every thread) as % of one
   core over the ``--seconds`` of printing, and from opening the gate until the run ended and
   every follower read ``end`` (or ``--patience`` seconds more went by); the followers' cost
   is the difference from no follower while printing (the target is below 10% of one core).
   A follower counts as served when it got every line exactly once: the same count and last
   position as the stored lines, each event exactly as many lines as its position advanced,
   then ``end``.

Usage: python bench/web_logs.py [browser|followers|both] [--lines 200] [--gap-ms 20 50]
       [--rate 1000] [--seconds 10] [--followers 200 [50 ...]] [--patience 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

import grpc
from harness import BenchSystem, bench_system
from plane import percentile
from playwright.async_api import async_playwright

from control_plane.cli.deploy import build_deployment
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import control_plane_pb2_grpc, types_pb2

CHROMIUM = "/usr/bin/chromium"

FLOW = """\
import os, random, sys, time


def wait_for(gate: str) -> None:
    print("ready", flush=True)
    while not os.path.exists(gate):
        time.sleep(0.005)


def paced(gate: str, lines: int, low_ms: float, high_ms: float) -> None:
    wait_for(gate)
    for _ in range(lines):
        time.sleep(random.uniform(low_ms, high_ms) / 1000)
        print(f"t={time.time():.6f}", flush=True)


def steady(gate: str, rate: int, seconds: float) -> None:
    wait_for(gate)
    step = 0.01
    per_step = max(1, round(rate * step))
    start = time.monotonic()
    for number in range(round(seconds / step)):
        delay = start + number * step - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        for index in range(per_step):
            print(f"line {number * per_step + index} of a steady flow, a few words long")
        sys.stdout.flush()
"""

# Notes, in the page, how late each timed line was appended to #logs (ms).
OBSERVER = """
window.lineLags = [];
new MutationObserver((records) => {
  const now = Date.now() / 1000;
  for (const record of records) {
    for (const node of record.addedNodes) {
      if (node.nodeType !== 1 || !node.classList.contains("line")) continue;
      const match = /t=(\\d+\\.\\d+)/.exec(node.textContent);
      if (match) window.lineLags.push((now - Number(match[1])) * 1000);
    }
  }
}).observe(document, { childList: true, subtree: true });
"""


def deploy(system: BenchSystem) -> None:
    for name in ("paced", "steady"):
        deployment = build_deployment(
            f"flow.py:{name}", name=name, pool="bench", source=system.source, parameters={}
        )
        system.stub.UpsertDeployment(pb.UpsertDeploymentRequest(deployment=deployment))


def create(system: BenchSystem, deployment: str, parameters: dict[str, Any]) -> str:
    request = pb.CreateRunRequest(
        deployment_name=deployment, parameters_json=json.dumps(parameters)
    )
    return str(system.stub.CreateRun(request).run.id)


async def ended(system: BenchSystem, run_id: str) -> str:
    """The run's state once it has ended (COMPLETED, or what went wrong)."""
    metadata = (("authorization", f"Bearer {system.token}"),)
    async with grpc.aio.insecure_channel(system.address) as channel:
        stub: Any = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        async for message in stub.WatchRun(
            pb.WatchRunRequest(run_id=run_id), metadata=metadata, timeout=600
        ):
            run = message.run
    if run.state.type == types_pb2.STATE_TYPE_COMPLETED:
        return "COMPLETED"
    return f"{types_pb2.StateType.Name(run.state.type)}: {run.state.message}"


async def browser_latency(system: BenchSystem, lines: int, gap_ms: list[float]) -> list[float]:
    """Milliseconds from each line's print to its row in an open run page."""
    gate = system.source / "gate-browser"
    run_id = create(
        system,
        "paced",
        {"gate": str(gate), "lines": lines, "low_ms": gap_ms[0], "high_ms": gap_ms[1]},
    )
    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            # The page's policy allows no string evaluation; the measuring script needs it.
            page = await browser.new_page(bypass_csp=True)
            await page.add_init_script(OBSERVER)
            await page.goto(f"{system.http_url}/login?next=/runs/{run_id}")
            await page.fill("#token", system.token)
            await page.click("button[type=submit]")
            await page.wait_for_url(f"**/runs/{run_id}")
            await page.wait_for_selector("#logs .line", timeout=60_000)  # "ready": following
            gate.touch()
            await page.wait_for_function(
                f"window.lineLags.length >= {lines}",
                timeout=lines * gap_ms[1] + 60_000,
                polling=100,
            )
            lags: list[float] = await page.evaluate("window.lineLags")
        finally:
            await browser.close()
    state = await ended(system, run_id)
    if state != "COMPLETED":
        raise SystemExit(f"run {run_id} ended {state}")
    return lags


class Follower(asyncio.Protocol):
    """One client of the logs stream: counts the lines of each event from the chunked SSE
    framing (the JSON of a line holds ``"seq":`` once) and checks them against the event ids."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.buffer = bytearray()
        self.head = True
        self.lines = 0
        self.last = (0, 0)
        self.mismatched = 0
        loop = asyncio.get_running_loop()
        self.following: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        assert isinstance(transport, asyncio.Transport)
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.head:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            if not head.startswith(b"http/1.1 200") or b"transfer-encoding: chunked" not in head:
                self._finish(RuntimeError(f"unexpected answer: {head[:200]!r}"))
                return
            del self.buffer[: end + 4]
            self.head = False
        while True:
            eol = self.buffer.find(b"\r\n")
            if eol < 0:
                return
            size = int(self.buffer[:eol], 16)
            if size == 0:
                self._finish(None)
                return
            if len(self.buffer) < eol + size + 4:
                return
            self._chunk(bytes(self.buffer[eol + 2 : eol + 2 + size]))
            del self.buffer[: eol + size + 4]

    def _chunk(self, chunk: bytes) -> None:
        for block in chunk.split(b"\n\n"):
            if block.startswith(b"id: "):
                attempt, _, seq = block[4 : block.index(b"\n")].partition(b":")
                position = (int(attempt), int(seq))
                count = block.count(b'"seq":')
                if position[0] == self.last[0] and count != position[1] - self.last[1]:
                    self.mismatched += 1
                self.lines += count
                self.last = position
                if not self.following.done():
                    self.following.set_result(None)
            elif block.startswith(b"event: end"):
                self._finish(None)

    def _finish(self, error: Exception | None) -> None:
        if not self.done.done():
            if error is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(error)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc or RuntimeError("the stream closed before its end event"))

    def close(self) -> None:
        """Stop following (a follower that has not read its end yet)."""
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_exception(RuntimeError("still following when the benchmark stopped"))
        self.done.exception()  # retrieved: an unfinished follower is counted, not raised


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, every thread, in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def stored_lines(system: BenchSystem, run_id: str) -> tuple[int, tuple[int, int]]:
    """How many lines the run has stored and the last one's position (one follower that
    reads what is stored and stops)."""
    follower = await follow(system, run_id, "?follow=false")
    await follower.done
    return follower.lines, follower.last


async def follow(system: BenchSystem, run_id: str, query: str = "") -> Follower:
    host, _, port = system.http_url.removeprefix("http://").partition(":")
    request = (
        f"GET /api/v1/runs/{run_id}/logs{query} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {system.token}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    _, follower = await loop.create_connection(lambda: Follower(request), host, int(port))
    return follower


async def followers_cost(
    system: BenchSystem, clients: int, rate: int, seconds: float, patience: float
) -> dict[str, Any]:
    """The server's CPU while a run prints ``rate`` lines/s for ``seconds`` with ``clients``
    followers, and until the run ended and every follower read its end (or ``patience``
    seconds more went by); which followers got every line exactly once."""
    gate = system.source / f"gate-{clients}"
    run_id = create(system, "steady", {"gate": str(gate), "rate": rate, "seconds": seconds})
    followers = [await follow(system, run_id) for _ in range(clients)]
    await asyncio.wait_for(asyncio.gather(*(f.following for f in followers)), 120)
    pid = system.server.process.pid
    before, started = cpu_seconds(pid), time.monotonic()
    gate.touch()
    state = asyncio.ensure_future(ended(system, run_id))
    await asyncio.sleep(seconds)
    printing = cpu_seconds(pid) - before
    waits: list[asyncio.Future[Any]] = [state, *(f.done for f in followers)]
    await asyncio.wait(waits, timeout=patience)
    window, cpu = time.monotonic() - started, cpu_seconds(pid) - before
    for follower in followers:
        follower.close()
    if not state.done():
        state.cancel()
    count, last = await stored_lines(system, run_id)
    whole = [
        f
        for f in followers
        if f.done.done() and not f.done.exception() and (f.lines, f.last) == (count, last)
    ]
    incomplete = [f for f in followers if f not in whole]
    return {
        "printing": printing,
        "cpu": cpu,
        "window": window,
        "lines": count,
        "state": state.result() if not state.cancelled() else f"not ended after {window:.0f} s",
        "whole": len(whole),
        "worst": min((f.lines for f in incomplete), default=count),
        "mismatched": sum(f.mismatched for f in followers),
    }


def print_latency(lags: list[float]) -> None:
    print(f"{'':<34}{'count':>8}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    p50, p95, p99 = (percentile(lags, f) for f in (0.5, 0.95, 0.99))
    label = "print -> row in the run page"
    print(f"{label:<34}{len(lags):>8}{p50:>10.1f}{p95:>10.1f}{p99:>10.1f}{max(lags):>10.1f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("figure", nargs="?", choices=("browser", "followers", "both"))
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--gap-ms", type=float, nargs=2, default=[20.0, 50.0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--followers", type=int, nargs="+", default=[200], help="one row per number"
    )
    parser.add_argument(
        "--patience", type=float, default=40.0, help="seconds to wait after the printing"
    )
    args = parser.parse_args()
    figure = args.figure or "both"

    with bench_system({"flow.py": FLOW}, capacity=1) as system:
        deploy(system)
        if figure in ("browser", "both"):
            lags = await browser_latency(system, args.lines, args.gap_ms)
            gaps = f"{args.gap_ms[0]:g}-{args.gap_ms[1]:g} ms"
            print(f"a flow printing {args.lines} lines {gaps} apart, one browser tab open")
            print_latency(lags)
        if figure in ("followers", "both"):
            rows = [(f"{n} followers", n) for n in sorted({0, *args.followers})]
            results = [
                await followers_cost(system, n, args.rate, args.seconds, args.patience)
                for _, n in rows
            ]
            print(
                f"a flow printing {args.rate:,} lines/s for {args.seconds:g} s "
                f"({results[0]['lines']:,} lines); control plane CPU as % of one core "
                f"while it prints, and until the run ended and every follower read its end"
            )
            print(
                f"{'':<16}{'printing':>10}{'until all':>11}{'window s':>10}"
                f"{'extra vs 0':>12}  followers with every line once; run"
            )
            for (label, clients), row in zip(rows, results, strict=True):
                printing = row["printing"] / args.seconds * 100
                extra = (row["printing"] - results[0]["printing"]) / args.seconds * 100
                whole = f"{row['whole']}/{clients}" if clients else "-"
                if row["whole"] < clients:
                    whole += f" (the worst got {row['worst']:,} lines)"
                if row["mismatched"]:
                    whole += f", {row['mismatched']} events with repeated or missing lines"
                print(
                    f"{label:<16}{printing:>9.1f}%"
                    f"{row['cpu'] / row['window'] * 100:>10.1f}%{row['window']:>10.1f}"
                    f"{extra:>11.1f}%  {whole}; {row['state']}"
                )


if __name__ == "__main__":
    asyncio.run(main())
