"""What a unit of work counts is counted once it commits, never when it rolls back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import text

from control_plane import metrics
from control_plane.store.db import Database


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(f"sqlite:///{tmp_path / 'metrics.db'}")
    yield database
    await database.close()


@pytest.fixture
def counter() -> Counter:
    return Counter("things", "Things done.", registry=CollectorRegistry())


async def test_a_count_waits_for_the_commit(db: Database, counter: Counter) -> None:
    async with db.write() as conn:
        metrics.counted(conn.info).inc(counter, 3)
        assert counter._value.get() == 0
    assert counter._value.get() == 3


async def test_a_rolled_back_unit_of_work_counts_nothing(db: Database, counter: Counter) -> None:
    with pytest.raises(RuntimeError):
        async with db.write() as conn:
            metrics.counted(conn.info).inc(counter, 3)
            raise RuntimeError("changed my mind")
    assert counter._value.get() == 0
    # The pooled connection forgot the unit of work that rolled back.
    async with db.write() as conn:
        metrics.counted(conn.info).inc(counter)
    assert counter._value.get() == 1


async def test_a_unit_of_work_whose_statement_fails_counts_nothing(
    db: Database, counter: Counter
) -> None:
    async with db.write() as conn:
        await conn.execute(text("CREATE TABLE t (x INTEGER PRIMARY KEY)"))
    with pytest.raises(Exception, match="UNIQUE"):
        async with db.write() as conn:
            metrics.counted(conn.info).inc(counter)
            await conn.execute(text("INSERT INTO t VALUES (1), (1)"))
    assert counter._value.get() == 0


async def test_outside_a_unit_of_work_counts_at_once(db: Database, counter: Counter) -> None:
    async with db.engine.connect() as conn:
        metrics.counted(conn.info).inc(counter, 2)
    assert counter._value.get() == 2


async def test_units_of_work_are_timed_by_operation(db: Database) -> None:
    def count(operation: str) -> float:
        value = metrics.REGISTRY.get_sample_value(
            "flowyard_database_seconds_count", {"operation": operation}
        )
        return value or 0.0

    reads, writes = count("read"), count("write")
    async with db.read() as conn:
        await conn.execute(text("SELECT 1"))
    async with db.write() as conn:
        await conn.execute(text("SELECT 1"))
    assert (count("read"), count("write")) == (reads + 1, writes + 1)
