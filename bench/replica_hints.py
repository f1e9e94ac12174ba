"""Benchmark: how fast a change made on one replica reaches a stream held by another.

Three control planes on one PostgreSQL database (``--replicas``, default 3). A synthetic
agent holds its stream to replica A, and the engine of each run streams to A too. For each of
``--probes`` runs (default 100), one at a time:

1. create on replica B -> the assignment arrives at the agent on A (B's hint wakes A's
   dispatcher);
2. a log line written through A -> a follower tailing on replica C receives it;
3. a cancel made on C -> the engine on A is told to stop (``CancelFlow``), and the agent on
   A to tear the run down (``Cancel``).

Each is measured from the call on one replica to the message on another; p50 / p99 / max.

Usage: python bench/replica_hints.py [--replicas 3] [--probes 100] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from lifecycle import expect, propose
from plane import DEPLOYMENT, POOL, Plane, add_server_arguments, bench_planes, print_latencies

from flowyard.v1 import agent_pb2, engine_pb2, types_pb2
from flowyard.v1 import control_plane_pb2 as pb


async def next_of(call: Any, kind: str) -> Any:
    """The next message of ``kind`` on a stream, skipping heartbeats."""
    while True:
        message = await call.read()
        got = message.WhichOneof("message")
        if got == kind:
            return getattr(message, kind)
        if got != "heartbeat":
            raise RuntimeError(f"expected {kind}, got {message}")


async def probe(a: Plane, b: Plane, c: Plane, agent: Any, figures: dict[str, list[float]]) -> None:
    """One run through the three measurements."""
    asked = time.perf_counter()
    run = (
        await b.control.CreateRun(pb.CreateRunRequest(deployment_name=DEPLOYMENT), metadata=b.admin)
    ).run
    assign = await next_of(agent, "assign")
    figures["create on B -> assignment on A"].append(time.perf_counter() - asked)
    for confirm in (
        agent_pb2.ConnectRequest(accepted=agent_pb2.Accepted(run_id=run.id, attempt=1)),
        agent_pb2.ConnectRequest(
            submitted=agent_pb2.Submitted(run_id=run.id, attempt=1, infrastructure_id="bench/1")
        ),
    ):
        await agent.write(confirm)
    # The follower on C starts now: by the time the line is written (after the engine's
    # Open and RUNNING), it waits for lines, so the line reaches it by a hint, not history.
    tail = c.control.TailLogs(pb.TailLogsRequest(run_id=run.id, follow=True), metadata=c.admin)
    arrived = asyncio.get_running_loop().create_future()

    async def follow() -> None:
        async for message in tail:
            if message.lines and not arrived.done():
                arrived.set_result(time.perf_counter())

    follower = asyncio.create_task(follow())
    engine = a.engines.Report(metadata=(("authorization", f"Bearer {assign.engine_token}"),))
    try:
        await engine.write(engine_pb2.ReportRequest(open=engine_pb2.Open(run_id=run.id, attempt=1)))
        await expect(engine, "opened")
        await propose(engine, types_pb2.STATE_TYPE_RUNNING)
        written = time.perf_counter()
        line = types_pb2.LogLine(seq=1, level=20, text="from A")
        await engine.write(engine_pb2.ReportRequest(log_batch=engine_pb2.LogBatch(lines=[line])))
        figures["line via A -> tail on C"].append(await arrived - written)
        await next_of(engine, "log_ack")
        cancelled = time.perf_counter()
        await c.control.CancelRun(pb.CancelRunRequest(run_id=run.id), metadata=c.admin)
        await next_of(engine, "cancel")
        figures["cancel on C -> engine on A"].append(time.perf_counter() - cancelled)
        await next_of(agent, "cancel")
        figures["cancel on C -> agent on A"].append(time.perf_counter() - cancelled)
        await propose(engine, types_pb2.STATE_TYPE_CANCELLED)
        await agent.write(agent_pb2.ConnectRequest(credit=agent_pb2.CreditGrant(credits=1)))
    finally:
        engine.cancel()
        tail.cancel()
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_arguments(parser)
    parser.add_argument("--probes", type=int, default=100)
    parser.set_defaults(store="postgresql", replicas=3)
    args = parser.parse_args()
    if args.replicas < 3 or args.store != "postgresql":
        raise SystemExit("this benchmark needs --store postgresql and 3 or more replicas")

    figures: dict[str, list[float]] = {
        "create on B -> assignment on A": [],
        "line via A -> tail on C": [],
        "cancel on C -> engine on A": [],
        "cancel on C -> agent on A": [],
    }
    async with bench_planes(args) as planes:
        a, b, c = planes[:3]
        token = await a.agent_token("hints")
        agent = a.agents.Connect(metadata=(("authorization", f"Bearer {token}"),))
        await agent.write(
            agent_pb2.ConnectRequest(
                hello=agent_pb2.Hello(
                    agent_name="bench/hints",
                    pool=POOL,
                    capacity=1,
                    runtime="process",
                    instance_id=uuid.uuid4().hex,
                )
            )
        )
        await next_of(agent, "welcome")
        try:
            for _ in range(args.probes):
                await asyncio.wait_for(probe(a, b, c, agent, figures), 30)
        finally:
            agent.cancel()
    print(f"Hints across {args.replicas} replicas on PostgreSQL, {args.probes} runs one at a time")
    print_latencies(list(figures.items()))


if __name__ == "__main__":
    asyncio.run(main())
