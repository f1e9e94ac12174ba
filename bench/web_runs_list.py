"""Benchmark: the runs list over HTTP with 10,000 stored runs (target: at most 200 ms).

Starts a control plane (no agent: every run stays SCHEDULED), stores ``--runs`` runs (default
10,000) with concurrent CreateRun calls, then times ``--requests`` requests (default 100, after
a few untimed ones) of each of:

- ``GET /runs``: the runs page (HTML), first page of 50;
- ``GET /runs?page_token=...``: its second page;
- ``GET /api/v1/runs``: the JSON list, first page;
- ``GET /api/v1/runs?page_token=...``: its second page;
- ``GET /api/v1/runs?state=SCHEDULED&pool=bench``: filtered (every stored run matches);
- ``GET /api/v1/runs?state=RUNNING``: filtered, no stored run matches (the whole table is
  looked at, unless an index answers).

One client on loopback, one request at a time: the time measured is the server's plus a
loopback round trip and the client's parsing of the headers (well under a millisecond), so it
stands for the server time. Each request is timed twice: on a new connection each time
(``Connection: close``) and on one kept-alive connection, which shows what TCP adds when the
server's sockets leave Nagle's algorithm on (a response written in two parts then waits for
the client's delayed ACK, about 40 ms on Linux). Printed: p50 / p99 / max per request.

Usage: python bench/web_runs_list.py [--store sqlite|postgresql] [--runs 10000]
       [--requests 100]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx
from plane import DEPLOYMENT, Plane, add_server_arguments, bench_plane, print_latencies

from flowyard.v1 import control_plane_pb2 as pb

#: CreateRun calls in flight at once while storing the runs.
CREATE_CONCURRENCY = 32
WARM_UP_REQUESTS = 5


async def store_runs(plane: Plane, runs: int) -> float:
    """Create ``runs`` runs; the seconds it took."""
    started = time.perf_counter()
    remaining = iter(range(runs))

    async def creator() -> None:
        for _ in remaining:
            await plane.control.CreateRun(
                pb.CreateRunRequest(deployment_name=DEPLOYMENT, parameters_json="{}"),
                metadata=plane.admin,
                timeout=60,
            )

    await asyncio.gather(*(creator() for _ in range(CREATE_CONCURRENCY)))
    return time.perf_counter() - started


async def timed(
    client: httpx.AsyncClient, path: str, requests: int, keep_alive: bool
) -> list[float]:
    """Seconds of each of ``requests`` GETs of ``path`` (after a few untimed ones), each on a
    new connection unless ``keep_alive``."""
    headers = {} if keep_alive else {"Connection": "close"}
    for _ in range(WARM_UP_REQUESTS):
        (await client.get(path, headers=headers)).raise_for_status()
    seconds = []
    for _ in range(requests):
        started = time.perf_counter()
        response = await client.get(path, headers=headers)
        await response.aread()
        seconds.append(time.perf_counter() - started)
        response.raise_for_status()
    return seconds


async def main() -> None:
    """Store the runs, time each request, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_arguments(parser)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()

    async with bench_plane(args) as plane:
        stored = await store_runs(plane, args.runs)
        print(f"{args.runs:,} runs stored on {args.store} in {stored:.1f} s")
        headers = {"Authorization": f"Bearer {plane.token}"}
        async with httpx.AsyncClient(base_url=plane.http_url, headers=headers) as client:
            first = (await client.get("/api/v1/runs")).json()
            token = first["next_page_token"]
            matching = len(
                (await client.get("/api/v1/runs?state=SCHEDULED&pool=bench")).json()["runs"]
            )
            print(f"first page: {len(first['runs'])} runs; filtered SCHEDULED: {matching} runs")
            paths = [
                ("GET /runs (HTML)", "/runs"),
                ("GET /runs, 2nd page (HTML)", f"/runs?page_token={token}"),
                ("GET /api/v1/runs", "/api/v1/runs"),
                ("GET /api/v1/runs, 2nd page", f"/api/v1/runs?page_token={token}"),
                ("GET ...?state=SCHEDULED&pool=bench", "/api/v1/runs?state=SCHEDULED&pool=bench"),
                ("GET ...?state=RUNNING (none)", "/api/v1/runs?state=RUNNING"),
            ]
            fresh = [
                (label, await timed(client, path, args.requests, False)) for label, path in paths
            ]
            kept = [
                (label, await timed(client, path, args.requests, True)) for label, path in paths
            ]
    print(f"one client on loopback, {args.requests} requests each (client time ~ server time)")
    print("a new connection per request:")
    print_latencies(fresh)
    print("one kept-alive connection:")
    print_latencies(kept)


if __name__ == "__main__":
    asyncio.run(main())
