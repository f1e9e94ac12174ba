"""Benchmark: CreateRun throughput and latency, from steady callers and from a burst.

Starts a control plane (no agent: runs stay queued), then
1. ``--callers`` concurrent callers (default 16) each create runs back to back for
   ``--seconds`` (default 20): creates/s and p50 / p99 / max latency per call;
2. ``--burst`` callers (default 1,000) each send one CreateRun at the same moment: how many
   were answered OK, how many RESOURCE_EXHAUSTED (and the hint they carried), how many
   otherwise, and the latest answer.

Usage: python bench/create_runs.py [--store sqlite|postgresql] [--callers 16] [--seconds 20]
       [--burst 1000] [--flowyard PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time

import grpc
from plane import DEPLOYMENT, Plane, add_server_arguments, bench_plane, print_latencies

from flowyard.v1 import control_plane_pb2 as pb

PARAMETERS = "{}"


async def create(plane: Plane) -> float:
    """One CreateRun; its latency in seconds."""
    started = time.perf_counter()
    await plane.control.CreateRun(
        pb.CreateRunRequest(deployment_name=DEPLOYMENT, parameters_json=PARAMETERS),
        metadata=plane.admin,
    )
    return time.perf_counter() - started


async def steady(plane: Plane, callers: int, seconds: float) -> list[float]:
    """Latencies of every create made by ``callers`` callers in a loop for ``seconds``."""
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []

    async def caller() -> None:
        while time.perf_counter() < deadline:
            latencies.append(await create(plane))

    await asyncio.gather(*(caller() for _ in range(callers)))
    return latencies


async def burst(plane: Plane, size: int) -> None:
    """``size`` creates at once; prints how they were answered and how late."""
    answers: collections.Counter[str] = collections.Counter()
    hints: list[str] = []
    latencies: list[float] = []
    start = asyncio.Event()

    async def caller() -> None:
        await start.wait()
        started = time.perf_counter()
        try:
            await plane.control.CreateRun(
                pb.CreateRunRequest(deployment_name=DEPLOYMENT, parameters_json=PARAMETERS),
                metadata=plane.admin,
                timeout=30,
            )
            answers["OK"] += 1
        except grpc.aio.AioRpcError as error:
            answers[error.code().name] += 1
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                hints.append(error.details() or "")
        latencies.append(time.perf_counter() - started)

    tasks = [asyncio.create_task(caller()) for _ in range(size)]
    await asyncio.sleep(0)  # every caller is waiting on the start
    start.set()
    await asyncio.gather(*tasks)
    print(f"\n{size} creates at once: " + ", ".join(f"{n} {k}" for k, n in answers.most_common()))
    if hints:
        print(f"  the first RESOURCE_EXHAUSTED said: {hints[0]}")
    print_latencies([("answer (any status)", latencies)])


async def main() -> None:
    """Run both phases and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_arguments(parser)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--burst", type=int, default=1000)
    args = parser.parse_args()

    async with bench_plane(args) as plane:
        await steady(plane, args.callers, 1.0)  # warm up connections and caches
        latencies = await steady(plane, args.callers, args.seconds)
        rate = len(latencies) / args.seconds
        print(f"CreateRun on {args.store}, {args.callers} callers for {args.seconds:g} s: ")
        print(f"{rate:.0f} creates/s")
        print_latencies([("CreateRun", latencies)])
        if args.burst:
            await burst(plane, args.burst)


if __name__ == "__main__":
    asyncio.run(main())
