"""Benchmark: one scrape of the control plane's ``/metrics`` (``scrape(db, agents)``).

A scrape reads the gauges of stored state from the database (the queues, and the due runs
grouped by pool and queue) and renders the whole exposition; the target is at most 20 ms.
Builds, in this process, a database with ``--pools`` pools of ``--queues`` queues each
(default 50 x 2: 100 pool queues), ``--runs`` due runs spread over them (default 10,000) and
one connected agent per pool, then times ``--scrapes`` scrapes (default 200, after a few
untimed ones that warm the connection pool) and prints p50 / p90 / p99 / max.

Usage: python bench/metrics_scrape.py [--store sqlite|postgresql] [--pools 50] [--queues 2]
       [--runs 10000] [--scrapes 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from plane import ADMIN_POSTGRES, percentile, postgres_database
from sqlalchemy import text

from control_plane.models import PoolType
from control_plane.orchestration.agents import AgentRegistry, AgentSession
from control_plane.orchestration.bus import Bus
from control_plane.orchestration.catalog import Catalog, DeploymentSpec
from control_plane.orchestration.changes import Notifier
from control_plane.orchestration.queues import Queues, QueueSpec
from control_plane.orchestration.runs import RunRequest, Runs
from control_plane.orchestration.scrape import scrape
from control_plane.store.db import Database

#: Creates in flight at once while filling the database (they share transactions).
CREATE_CONCURRENCY = 100
WARM_UP_SCRAPES = 5


@contextlib.asynccontextmanager
async def database(store: str, admin_url: str) -> AsyncIterator[Database]:
    with contextlib.ExitStack() as stack:
        if store == "postgresql":
            url = stack.enter_context(postgres_database(admin_url))
        else:
            url = f"sqlite:///{stack.enter_context(tempfile.TemporaryDirectory())}/bench.db"
        db = await Database.open(url)
        try:
            yield db
        finally:
            await db.close()


async def fill(db: Database, agents: AgentRegistry, pools: int, queues: int, runs: int) -> None:
    """Pools, queues, deployments, due runs and one connected agent per pool."""
    source = Path(tempfile.gettempdir())
    catalog = Catalog(db)
    pool_queues = Queues(db, lambda: None)
    targets: list[tuple[str, str]] = []
    for number in range(pools):
        pool = await catalog.create_pool(f"pool-{number}", PoolType.PROCESS, "", 0)
        await catalog.upsert_deployment(
            DeploymentSpec(
                name=f"flow-{number}",
                entrypoint="flow.py:hello",
                source={"local": {"path": str(source)}},
                pool=pool.name,
            )
        )
        targets.append((f"flow-{number}", "default"))
        for extra in range(1, queues):
            await pool_queues.upsert(QueueSpec(pool=pool.name, name=f"queue-{extra}"))
            targets.append((f"flow-{number}", f"queue-{extra}"))
        session = AgentSession(
            agent_name=f"agent-{number}",
            pool_id=pool.id,
            pool_name=pool.name,
            runtime="process",
            credits=4,
        )
        await agents.admit(session, silence_seconds=30.0)
    created = Runs(db, Notifier(Bus()), agents)
    limit = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def create(index: int) -> None:
        deployment, queue = targets[index % len(targets)]
        async with limit:
            await created.create(RunRequest(deployment_name=deployment, queue=queue))

    await asyncio.gather(*(create(index) for index in range(runs)))


async def bench(args: argparse.Namespace) -> None:
    async with database(args.store, args.postgres) as db:
        agents = AgentRegistry(db, Bus(), "bench-replica")
        started = time.perf_counter()
        await fill(db, agents, args.pools, args.queues, args.runs)
        print(
            f"{args.pools * args.queues} pool queues, {args.runs} due runs, {args.pools} agents "
            f"({args.store}), filled in {time.perf_counter() - started:.1f} s"
        )
        if db.dialect == "postgresql":
            # What autovacuum does soon after this many inserts: the planner then knows the
            # table, as it does in a control plane that has been running a while.
            async with db.write() as conn:
                await conn.execute(text("ANALYZE flow_runs"))
        for _ in range(WARM_UP_SCRAPES):
            exposition = await scrape(db, agents)
        timings: list[float] = []
        for _ in range(args.scrapes):
            started = time.perf_counter()
            exposition = await scrape(db, agents)
            timings.append(time.perf_counter() - started)
        print(f"exposition: {len(exposition):,} bytes")
        p50, p90, p99 = (percentile(timings, f) for f in (0.5, 0.9, 0.99))
        print(
            f"scrape ({args.scrapes}x): p50 {p50 * 1000:.2f} ms  p90 {p90 * 1000:.2f} ms  "
            f"p99 {p99 * 1000:.2f} ms  max {max(timings) * 1000:.2f} ms  (target p99 <= 20 ms: "
            f"{'met' if p99 <= 0.020 else 'MISSED'})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--postgres", default=ADMIN_POSTGRES)
    parser.add_argument("--pools", type=int, default=50)
    parser.add_argument("--queues", type=int, default=2, help="queues per pool, default included")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=200)
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
