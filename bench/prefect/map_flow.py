"""The fan-out of bench/task_runs.py written for Prefect 3, for a side-by-side figure.

Runs in its own environment (``pip install prefect==3.8.8 fastapi==0.150.0``; newer fastapi
releases break its server), against Prefect's local ephemeral API on SQLite:

    python bench/prefect/map_flow.py [--items 10000]

Prints the time from the flow's first line of code to the moment every task run is stored and
readable through Prefect's API (all COMPLETED), as bench/task_runs.py does for Flowyard.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.runtime import flow_run

PAGE = 200


@task
def item(x: int) -> int:
    return x


@flow
def fan_out(n: int) -> tuple[str, float]:
    started = time.time()
    item.map(range(n)).result()
    return str(flow_run.id), started


async def count_completed(run_id: str) -> int:
    """Completed task runs of the flow run, read page by page (the API serves 200 at most)."""
    completed = 0
    async with get_client() as client:
        offset = 0
        while True:
            page = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
                limit=PAGE,
                offset=offset,
            )
            completed += sum(1 for r in page if r.state is not None and r.state.is_completed())
            if len(page) < PAGE:
                return completed
            offset += PAGE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    args = parser.parse_args()
    run_id, started = fan_out(args.items)
    returned = time.time()
    while asyncio.run(count_completed(run_id)) < args.items:
        time.sleep(0.05)
    stored = time.time()
    print(f"Prefect map over {args.items} no-op tasks:")
    print(f"  flow start -> flow returned          {returned - started:6.2f} s")
    print(f"  flow start -> every task run stored   {stored - started:6.2f} s")


if __name__ == "__main__":
    main()
