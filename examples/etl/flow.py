"""An ETL flow written with tasks: a retried extract, a mapped transform, a subflow report.

Run it with `make demo EXAMPLE=etl` (or `flowyard demo --example etl`). The extract meets a
busy source twice before it succeeds, as a real one sometimes does: the run's logs show both
retries, and the flow still completes.
"""

import logging
import time

from flowyard import flow, runtime, task

log = logging.getLogger("etl")


@task(retries=3, retry_delay_seconds=[0.2, 0.5])
def extract(batches: int) -> list[list[int]]:
    """Read ``batches`` batches of ten rows from the source."""
    attempt = runtime.task_run.attempt or 1
    if attempt < 3:
        raise ConnectionError(f"the source is busy (attempt {attempt})")
    return [list(range(first, first + 10)) for first in range(0, 10 * batches, 10)]


@task
def transform(batch: list[int]) -> list[int]:
    """Square every row of a batch (slowly enough that the batches visibly overlap)."""
    time.sleep(0.1)
    log.info("%s squared rows %d..%d", runtime.task_run.name, batch[0], batch[-1])
    return [row * row for row in batch]


@task(retries=1)
def load(rows: list[int], table: str) -> int:
    """Write one batch to ``table``; how many rows were written."""
    return len(rows)


@task
def total(counts: list[int]) -> int:
    return sum(counts)


@flow(name="report")
def report(counts: list[int], table: str) -> str:
    """A subflow: a child run of the etl run, with its own state, task runs and logs."""
    rows = total(counts)
    log.info("%d batches, %d rows loaded into %s", len(counts), rows, table)
    return f"{rows} rows in {table}"


@flow(name="etl", max_workers=4)
def etl(batches: int = 6, table: str = "squares") -> str:
    """Extract, transform and load ``batches`` batches, then report."""
    log.info("run %s, attempt %s", runtime.flow_run.id, runtime.flow_run.attempt)
    raw = extract(batches)
    squared = transform.map(raw)
    loaded = load.map(squared, table=table)
    return report(loaded.result(), table)


if __name__ == "__main__":
    # Outside a run the same flow runs in this process, with no server.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    print(etl())
