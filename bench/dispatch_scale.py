"""Benchmark: does a dispatch pass cost the same with 100,000 stored runs as with 100?

For each ``--stored`` size (default 100 and 100,000), starts a control plane, writes that
many runs straight into its database (a tenth of them RUNNING, the rest COMPLETED, as a
busy installation's table would be), connects one synthetic agent (bench/lifecycle.py), and
creates ``--runs`` runs one at a time: p50 / p99 of create -> assignment, which is a whole
dispatch pass. The figure to look at is the ratio of the two p50s.

With ``--pool-limit N`` the pool has a concurrency limit, so every pass counts the pool's
active runs (by deployment and queue, from an index); without one it counts nothing.

Usage: python bench/dispatch_scale.py [--store sqlite|postgresql] [--stored 100 100000]
       [--runs 200] [--pool-limit N] [--flowyard PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import uuid
from typing import Any

from lifecycle import Clock, agent, create
from plane import POOL, add_server_arguments, bench_plane, percentile, print_latencies
from sqlalchemy import create_engine, insert, select

from control_plane.store.tables import deployments, flow_runs, work_queues
from flowyard.v1 import control_plane_pb2 as pb

#: Rows written per INSERT while filling the table.
FILL_BATCH = 5_000


def fill(db_url: str, count: int) -> None:
    """Write ``count`` runs of the bench deployment: a tenth RUNNING, the rest COMPLETED."""
    engine = create_engine(db_url)
    now = dt.datetime.now(dt.UTC)
    try:
        with engine.begin() as conn:
            deployment = conn.execute(select(deployments)).one()
            queue_id = conn.execute(
                select(work_queues.c.id).where(work_queues.c.pool_id == deployment.pool_id)
            ).scalar_one()
            rows: list[dict[str, Any]] = []
            for index in range(count):
                running = index % 10 == 0
                created = now - dt.timedelta(seconds=count - index)
                rows.append(
                    {
                        "id": uuid.uuid4().hex,
                        "deployment_id": deployment.id,
                        "pool_id": deployment.pool_id,
                        "flow_name": deployment.flow_name,
                        "parameters": {},
                        "job_variables": {},
                        "idempotency_key": None,
                        "state_type": "RUNNING" if running else "COMPLETED",
                        "state_name": "Running" if running else "Completed",
                        "state_message": "",
                        "state_time": created,
                        "version": 3,
                        "last_transition_id": None,
                        "attempt": 1,
                        "scheduled_at": created,
                        "created_at": created,
                        "started_at": created,
                        "ended_at": None if running else created,
                        "agent_session_id": None,
                        "agent_name": "elsewhere",
                        "infrastructure_id": "elsewhere",
                        # Alive for the benchmark's length: the reaper leaves them RUNNING.
                        "last_heartbeat_at": now + dt.timedelta(days=1) if running else None,
                        "result_summary": "",
                        "queue_id": queue_id,
                    }
                )
                if len(rows) == FILL_BATCH:
                    conn.execute(insert(flow_runs), rows)
                    rows.clear()
            if rows:
                conn.execute(insert(flow_runs), rows)
    finally:
        engine.dispose()


async def measure(args: argparse.Namespace, stored: int) -> list[float]:
    """create -> assignment of ``args.runs`` runs, one at a time, over ``stored`` runs."""
    clock = Clock()
    async with bench_plane(args) as plane:
        await asyncio.to_thread(fill, plane.db_url, stored)
        if args.pool_limit:
            # A limit no run reaches, so that every pass counts the active runs.
            await plane.control.UpdatePool(
                pb.UpdatePoolRequest(name=POOL, concurrency_limit=args.pool_limit),
                metadata=plane.admin,
            )
        token = await plane.agent_token("bench")
        async with agent(plane, plane, token, "bench/agent", 1, clock):
            run_ids = []
            for _ in range(args.runs):
                run_id = await create(plane, clock)
                run_ids.append(run_id)
                await asyncio.wait_for(clock.done(run_id).wait(), 60)
    return clock.create_to_assign(run_ids)


async def main() -> None:
    """Measure each size and print the figures and the ratio of the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_arguments(parser)
    parser.add_argument("--stored", type=int, nargs="+", default=[100, 100_000])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument(
        "--pool-limit",
        type=int,
        default=0,
        help="give the pool this concurrency limit (its passes then count the active runs)",
    )
    args = parser.parse_args()

    rows = [(f"{n:,} stored: create -> assignment", await measure(args, n)) for n in args.stored]
    limit = f", pool limit {args.pool_limit:,}" if args.pool_limit else ""
    print(f"Dispatch over stored runs on {args.store} (a tenth of them RUNNING{limit})")
    print_latencies(rows)
    medians = [percentile(seconds, 0.5) for _, seconds in rows]
    print(f"p50 ratio, largest / smallest: {medians[-1] / medians[0]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
