"""Benchmark: whole run lifecycles with synthetic agents and engines over real gRPC.

No process is spawned: each synthetic agent holds a real Connect stream and, for every
assignment, confirms it (Accepted, Submitted) and, once its Submitted is on the stream (a real
engine starts after its infrastructure), plays the engine on a real Report stream with the
assignment's token (Open, RUNNING, one log batch, COMPLETED), then gives its credit back. So the figures are the control plane's: dispatch, state reports, log ingest.

1. Idle: ``--probe`` runs (default 200), one at a time: create -> assignment at the agent.
2. Load: ``--runs`` runs (default 3,000) created by ``--callers`` concurrent callers while
   ``--agents`` agents of ``--capacity`` each run them: completed runs/s (first create to last
   COMPLETED), create -> assignment under that load, and the control plane's CPU time per
   completed run (steadier than the rate on a busy machine: the rate is bounded by it).

With ``--replicas N`` (PostgreSQL) the work is spread over N control planes: agent ``i``
connects to replica ``i mod N`` and its engines stream to the next replica, and callers
create runs through each replica in turn. Afterwards the database is checked: every run
COMPLETED exactly once, with each of its lines stored once.

Usage: python bench/lifecycle.py [--store sqlite|postgresql] [--replicas 1] [--runs 3000]
       [--agents 4] [--capacity 64] [--callers 16] [--probe 200] [--flowyard PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from plane import DEPLOYMENT, POOL, Plane, add_server_arguments, bench_planes, print_latencies
from sqlalchemy import create_engine, inspect, text

from flowyard.v1 import agent_pb2, engine_pb2, types_pb2
from flowyard.v1 import control_plane_pb2 as pb

LOG_LINES = 5


class Clock:
    """When each run was asked for, assigned and completed (``time.perf_counter``)."""

    def __init__(self) -> None:
        self.asked: dict[str, float] = {}
        self.assigned: dict[str, float] = {}
        self.completed: dict[str, float] = {}
        self.failures: list[str] = []
        self._done: dict[str, asyncio.Event] = {}

    def done(self, run_id: str) -> asyncio.Event:
        """Set when ``run_id`` is COMPLETED."""
        return self._done.setdefault(run_id, asyncio.Event())

    def complete(self, run_id: str) -> None:
        self.completed[run_id] = time.perf_counter()
        self.done(run_id).set()

    def create_to_assign(self, run_ids: list[str]) -> list[float]:
        return [self.assigned[r] - self.asked[r] for r in run_ids if r in self.assigned]


async def create(plane: Plane, clock: Clock) -> str:
    asked = time.perf_counter()
    run = (
        await plane.control.CreateRun(
            pb.CreateRunRequest(deployment_name=DEPLOYMENT), metadata=plane.admin
        )
    ).run
    clock.asked[run.id] = asked
    return str(run.id)


async def engine(plane: Plane, assign: agent_pb2.Assign, clock: Clock) -> None:
    """Play the engine of one attempt: Open, RUNNING, one log batch, COMPLETED."""
    call = plane.engines.Report(metadata=(("authorization", f"Bearer {assign.engine_token}"),))
    try:
        await call.write(
            engine_pb2.ReportRequest(
                open=engine_pb2.Open(run_id=assign.run_id, attempt=assign.attempt)
            )
        )
        await expect(call, "opened")
        await propose(call, types_pb2.STATE_TYPE_RUNNING)
        now = Timestamp()
        now.GetCurrentTime()
        lines = [
            types_pb2.LogLine(
                seq=seq,
                timestamp=now,
                level=20,
                stream=types_pb2.LOG_STREAM_STDOUT,
                text=f"line {seq} of a synthetic flow",
            )
            for seq in range(1, LOG_LINES + 1)
        ]
        await call.write(engine_pb2.ReportRequest(log_batch=engine_pb2.LogBatch(lines=lines)))
        ack = await expect(call, "log_ack")
        if ack.stored_seq != LOG_LINES:
            clock.failures.append(f"{assign.run_id}: stored_seq {ack.stored_seq}")
        await propose(call, types_pb2.STATE_TYPE_COMPLETED)
        await call.done_writing()
        clock.complete(assign.run_id)
    finally:
        call.cancel()


async def expect(call: Any, kind: str) -> Any:
    """The next message of ``kind`` on an engine stream (anything else is a failure)."""
    message = await call.read()
    got = message.WhichOneof("message")
    if got != kind:
        raise RuntimeError(f"expected {kind}, got {message}")
    return getattr(message, kind)


async def propose(call: Any, state: types_pb2.StateType.ValueType) -> None:
    await call.write(
        engine_pb2.ReportRequest(
            propose_state=engine_pb2.ProposeState(transition_id=uuid.uuid4().hex, type=state)
        )
    )
    result = await expect(call, "state_result")
    if not result.accepted:
        raise RuntimeError(f"state {state} refused: {result.reason}")


@contextlib.asynccontextmanager
async def agent(
    plane: Plane, engines_to: Plane, token: str, name: str, capacity: int, clock: Clock
) -> AsyncIterator[None]:
    """A synthetic agent of pool ``bench`` connected to ``plane`` for the duration of the
    block; its engines stream to ``engines_to``."""
    # Each message with what to set once it is handed to the stream.
    outbox: asyncio.Queue[tuple[agent_pb2.ConnectRequest, asyncio.Event | None]] = asyncio.Queue()
    hello = agent_pb2.Hello(
        agent_name=name,
        pool=POOL,
        capacity=capacity,
        runtime="process",
        instance_id=uuid.uuid4().hex,
    )
    outbox.put_nowait((agent_pb2.ConnectRequest(hello=hello), None))

    async def requests() -> AsyncIterator[agent_pb2.ConnectRequest]:
        while True:
            try:
                message, sent = await asyncio.wait_for(outbox.get(), 1.0)
            except TimeoutError:
                yield agent_pb2.ConnectRequest(heartbeat=agent_pb2.Heartbeat())
                continue
            if sent is not None:
                sent.set()
            yield message

    engines: set[asyncio.Task[None]] = set()

    async def run(assign: agent_pb2.Assign, submitted: asyncio.Event) -> None:
        try:
            # As with a real agent, the engine starts once its infrastructure was reported.
            await submitted.wait()
            await engine(engines_to, assign, clock)
        except Exception as error:
            clock.failures.append(f"{assign.run_id}: {error}")
        outbox.put_nowait((agent_pb2.ConnectRequest(credit=agent_pb2.CreditGrant(credits=1)), None))

    async def receive() -> None:
        async for message in call:
            if message.WhichOneof("message") != "assign":
                continue
            assign = message.assign
            clock.assigned.setdefault(assign.run_id, time.perf_counter())
            outbox.put_nowait(
                (
                    agent_pb2.ConnectRequest(
                        accepted=agent_pb2.Accepted(run_id=assign.run_id, attempt=assign.attempt)
                    ),
                    None,
                )
            )
            submitted = asyncio.Event()
            outbox.put_nowait(
                (
                    agent_pb2.ConnectRequest(
                        submitted=agent_pb2.Submitted(
                            run_id=assign.run_id,
                            attempt=assign.attempt,
                            infrastructure_id=f"synthetic/{assign.run_id}",
                        )
                    ),
                    submitted,
                )
            )
            task = asyncio.create_task(run(assign, submitted))
            engines.add(task)
            task.add_done_callback(engines.discard)

    call = plane.agents.Connect(requests(), metadata=(("authorization", f"Bearer {token}"),))
    reader = asyncio.create_task(receive())
    try:
        yield
    finally:
        reader.cancel()
        call.cancel()
        for task in list(engines):
            task.cancel()
        await asyncio.gather(reader, *engines, return_exceptions=True)


async def main() -> None:
    """Run both phases and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_arguments(parser)
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--capacity", type=int, default=64)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--probe", type=int, default=200)
    args = parser.parse_args()

    clock = Clock()
    async with bench_planes(args) as planes, contextlib.AsyncExitStack() as agents:
        for index in range(args.agents):
            plane = planes[index % len(planes)]
            token = await plane.agent_token(f"agent {index}")
            await agents.enter_async_context(
                agent(
                    plane,
                    planes[(index + 1) % len(planes)],
                    token,
                    f"bench/agent-{index}",
                    args.capacity,
                    clock,
                )
            )

        idle: list[str] = []
        for number in range(args.probe):
            run_id = await create(planes[number % len(planes)], clock)
            idle.append(run_id)
            await asyncio.wait_for(clock.done(run_id).wait(), 30)

        counter = itertools.count()
        loaded: list[str] = []

        async def caller(plane: Plane) -> None:
            while next(counter) < args.runs:
                loaded.append(await create(plane, clock))

        cpu_before = sum(plane.cpu_seconds() for plane in planes)
        started = time.perf_counter()
        await asyncio.gather(
            *(caller(planes[index % len(planes)]) for index in range(args.callers))
        )
        created = time.perf_counter()
        waiting = [clock.done(r).wait() for r in loaded]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waiting), 300)
        cpu = sum(plane.cpu_seconds() for plane in planes) - cpu_before
        finished = [r for r in loaded if r in clock.completed]
        last = max((clock.completed[r] for r in finished), default=started)
        stored = stored_outcome(planes[0].db_url)

    replicas = f", {len(planes)} replicas" if len(planes) > 1 else ""
    print(f"Lifecycle on {args.store}{replicas}: {args.agents} agents x {args.capacity} slots")
    print(f"load: {len(finished)} of {len(loaded)} runs COMPLETED")
    print(f"  created at {len(loaded) / (created - started):.0f} runs/s")
    print(
        f"  completed at {len(finished) / (last - started):.0f} runs/s (first create to last COMPLETED)"
    )
    if finished:
        print(
            f"  server CPU: {1000 * cpu / len(finished):.1f} ms per completed run "
            f"({cpu:.1f} s in all{', every replica' if len(planes) > 1 else ''})"
        )
    print(
        f"  stored: {stored['runs']} runs, {stored['completed_once']} COMPLETED exactly once, "
        f"{stored['completed_twice']} more than once, {stored['lines']} log lines "
        f"({stored['lines_expected']} expected)"
    )
    if clock.failures:
        print(f"  {len(clock.failures)} failures, first: {clock.failures[0]}")
    print_latencies(
        [
            ("idle: create -> assignment", clock.create_to_assign(idle)),
            ("load: create -> assignment", clock.create_to_assign(loaded)),
            (
                "load: create -> COMPLETED",
                [clock.completed[r] - clock.asked[r] for r in finished],
            ),
        ]
    )


def stored_outcome(db_url: str) -> dict[str, int]:
    """What the database holds once the runs ended: runs, how often each COMPLETED, lines."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            runs = conn.execute(text("SELECT count(*) FROM flow_runs")).scalar_one()
            counts = conn.execute(
                text("SELECT count(*) FROM run_states WHERE type = 'COMPLETED' GROUP BY run_id")
            ).scalars()
            completions = list(counts)
            # Each row holds consecutive lines, first_seq to last_seq (a line a row in the
            # schema before log batches, which a release measured with --flowyard may have).
            tables = inspect(conn).get_table_names()
            lines = conn.execute(
                text("SELECT coalesce(sum(last_seq - first_seq + 1), 0) FROM log_batches")
                if "log_batches" in tables
                else text("SELECT count(*) FROM log_lines")
            ).scalar_one()
    finally:
        engine.dispose()
    return {
        "runs": runs,
        "completed_once": sum(1 for c in completions if c == 1),
        "completed_twice": sum(1 for c in completions if c > 1),
        "lines": lines,
        "lines_expected": runs * LOG_LINES,
    }


if __name__ == "__main__":
    asyncio.run(main())
