"""The SQLite connection that runs statements on the event loop's thread, or on a worker
thread for a large transaction, behind SQLAlchemy's asyncio API."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Column, MetaData, String, Table, func, insert, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.api.errors import busy_database
from control_plane.models import Run
from control_plane.store import logs, runs, sqlite_inline
from control_plane.store.db import SQLITE_BUSY_TIMEOUT_MS, Database
from control_plane.store.dialects import DriverStatement
from control_plane.store.tables import UTCDateTime
from tests.driver_statements import check_records_and_counts
from tests.waiting import eventually


@pytest.fixture
async def db(tmp_path: Path) -> Database:
    database = await Database.open(f"sqlite:///{tmp_path / 'inline.db'}")
    yield database
    await database.close()


async def test_statements_run_on_the_loop_thread_unless_the_transaction_is_large(
    db: Database,
) -> None:
    threads: list[str] = []

    def where() -> int:
        threads.append(threading.current_thread().name)
        return 1

    async with db.write() as conn:
        driver = sqlite_inline.driver_of(conn)
        assert driver is not None
        await driver.create_function("where_am_i", 0, where)
        await conn.execute(text("SELECT where_am_i()"))
    async with db.write(large=True) as conn:
        await conn.execute(text("SELECT where_am_i()"))
        assert driver.offload
    assert not driver.offload
    assert threads[0] == threading.current_thread().name
    assert threads[1].startswith("sqlite")


@pytest.mark.parametrize("large", [False, True])
async def test_a_failed_statement_raises_the_dbapi_error_and_rolls_back(
    db: Database, large: bool
) -> None:
    async with db.write() as conn:
        await conn.execute(text("CREATE TABLE t (k TEXT PRIMARY KEY)"))
        await conn.execute(text("INSERT INTO t VALUES ('a')"))
    with pytest.raises(sa_exc.IntegrityError, match="UNIQUE"):
        async with db.write(large=large) as conn:
            await conn.execute(text("INSERT INTO t VALUES ('b')"))
            await conn.execute(text("INSERT INTO t VALUES ('a')"))
    async with db.read() as conn:
        assert (await conn.execute(text("SELECT k FROM t"))).scalars().all() == ["a"]


async def test_a_driver_statement_converts_its_parameters_and_raises_sqlalchemys_errors(
    db: Database, tmp_path: Path
) -> None:
    """``DriverStatement.rows`` goes straight to sqlite3, yet stores what SQLAlchemy would and
    fails as it would: a locked database is still answered as busy."""
    table = Table("t", MetaData(), Column("k", String, primary_key=True), Column("at", UTCDateTime))
    async with db.write() as conn:
        await conn.run_sync(table.metadata.create_all)
    insert_one = DriverStatement(insert(table).returning(table.c.k))
    at = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=2)))
    async with db.write() as conn:
        assert await insert_one.rows(conn, {"k": "a", "at": at}) == [("a",)]
    async with db.read() as conn:
        assert (await conn.execute(select(table.c.at))).scalar_one() == at
        # Read back on the driver: its text, or, converted by the column's type, the time.
        read_back = DriverStatement(select(table.c.k, table.c.at))
        assert await read_back.rows(conn, {}) == [("a", "2026-01-02 01:04:05.000006")]
        assert await read_back.typed_rows(conn, {}) == [("a", at)]
    with pytest.raises(sa_exc.IntegrityError, match="UNIQUE"):
        async with db.write() as conn:
            await insert_one.rows(conn, {"k": "a", "at": at})
    other = sqlite3.connect(tmp_path / "inline.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        async with db.write() as conn:
            await conn.exec_driver_sql("PRAGMA busy_timeout=0")
            with pytest.raises(sa_exc.OperationalError) as locked:
                await insert_one.rows(conn, {"k": "b", "at": at})
            await conn.exec_driver_sql(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        assert busy_database(locked.value) == (
            "the database is busy (locked by another writer); retry in a moment"
        )
    finally:
        other.execute("ROLLBACK")
        other.close()


async def test_a_driver_statement_reads_named_typed_records_and_counts_what_it_changed(
    db: Database,
) -> None:
    await check_records_and_counts(db)


async def test_the_last_seqs_of_a_transactions_attempts_are_looked_up_not_scanned(
    db: Database,
) -> None:
    """A transaction that stores lines of several attempts reads their last stored seqs with a
    lookup each in the index; a scan of it would cost every such transaction more as lines
    pile up (10 ms at 200,000 stored batches, with the write lock held)."""
    statement = logs._max_seqs_of(4)._compiled_for(db.engine.dialect).sql
    parameters = [value for i in range(4) for value in (f"run{i}", 1)]
    async with db.read() as conn:
        plan = (
            await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", tuple(parameters))
        ).all()
    steps = [row[-1] for row in plan]
    assert all("SCAN log_batches" not in step for step in steps), steps
    assert sum("SEARCH log_batches" in step for step in steps) == 4, steps


async def _create_t(db: Database) -> None:
    async with db.write() as conn:
        await conn.execute(text("CREATE TABLE t (k TEXT PRIMARY KEY)"))


async def _rows_in_t(conn: AsyncConnection) -> int:
    return int((await conn.execute(text("SELECT count(*) FROM t"))).scalar_one())


async def test_a_write_is_one_transaction_and_a_read_holds_no_snapshot(db: Database) -> None:
    await _create_t(db)
    async with db.read() as reader:
        assert await _rows_in_t(reader) == 0
        async with db.write() as writer:
            await writer.execute(text("INSERT INTO t VALUES ('a')"))
            # Not committed yet: nobody else sees it.
            assert await _rows_in_t(reader) == 0
        # Committed: the next statement of the same read sees it (READ COMMITTED).
        assert await _rows_in_t(reader) == 1


async def test_a_read_connection_kept_for_the_next_read_sees_what_was_committed_since(
    db: Database,
) -> None:
    """Reads on SQLite keep their connection open for the next read (taking one from the pool
    cost more than a read by key): what it reads is still what is committed now, and a read
    that failed gives its connection back to the pool instead."""
    await _create_t(db)
    async with db.read() as first:
        assert await _rows_in_t(first) == 0
    async with db.write() as writer:
        await writer.execute(text("INSERT INTO t VALUES ('a')"))
    async with db.read() as second:
        assert second is first
        assert await _rows_in_t(second) == 1
    with pytest.raises(sa_exc.OperationalError, match="no such table"):
        async with db.read() as failed:
            await failed.execute(text("SELECT * FROM missing"))
    async with db.read() as third:
        assert third is not failed
        assert (await third.execute(text("SELECT k FROM t"))).scalar_one() == "a"


_T = Table("t", MetaData(), Column("k", String, primary_key=True))
_COUNT_T = DriverStatement(select(func.count()).select_from(_T))


async def _count_t(db: Database) -> tuple[int, sqlite3.Connection, sqlite_inline.Connection]:
    """The rows in t by a driver statement read: the count, the connection it ran on and the
    read's own."""
    async with db.read() as conn:
        own = sqlite_inline.driver_of(conn)
        assert own is not None
        ran_on = own._reading()
        (count,) = (await _COUNT_T.rows(conn, {}))[0]
    return count, ran_on, own


async def test_a_driver_statement_read_runs_where_the_cache_is_warm_and_reads_only_what_is_committed(
    db: Database,
) -> None:
    """A read by driver statement runs on the connection that committed last, whose pages
    SQLite has not dropped, while that one is idle; never inside its open transaction, nor
    beside a cursor of its part-way through its rows."""
    await _create_t(db)
    assert (await _count_t(db))[0] == 0  # the read keeps a connection of its own
    async with db.write() as writer:
        await writer.execute(insert(_T), [{"k": "a"}])
        last = sqlite_inline.driver_of(writer)
    assert last is not None
    count, ran_on, own = await _count_t(db)
    assert count == 1
    assert own is not last and ran_on is last._open

    async with db.write() as writer:
        await writer.execute(insert(_T), [{"k": "b"}])
        # Whichever connection the read takes, the row is not committed: nobody sees it.
        count, _, _ = await _count_t(db)
        assert count == 1
        last = sqlite_inline.driver_of(writer)
        assert last is not None
        assert (await _count_t(db))[1] is not last._open
    count, ran_on, _ = await _count_t(db)
    assert count == 2 and ran_on is last._open

    cursor = last.cursor()
    await cursor.execute("SELECT k FROM t ORDER BY k")
    assert await cursor.fetchone() == ("a",)
    count, ran_on, own = await _count_t(db)
    assert count == 2 and ran_on is own._open
    await cursor.close()
    assert (await _count_t(db))[1] is last._open


async def test_rows_are_fetched_one_many_and_all(db: Database) -> None:
    async with db.write(large=True) as conn:
        await conn.execute(text("CREATE TABLE n (v INTEGER)"))
        await conn.execute(text("INSERT INTO n VALUES (:v)"), [{"v": v} for v in range(10)])
    async with db.read() as conn:
        result = await conn.stream(text("SELECT v FROM n ORDER BY v"))
        assert [row.v async for row in result] == list(range(10))
        assert (await conn.execute(text("SELECT count(*) FROM n"))).scalar_one() == 10


def test_a_run_row_holds_exactly_the_fields_of_a_run() -> None:
    # ``runs._run`` builds a Run from the whole row.
    columns = {column.key for column in runs._RUN_COLUMNS}
    assert columns == {field.name for field in dataclasses.fields(Run)}


def _checkpointers() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name == "sqlite-checkpoint"}


async def test_the_write_ahead_log_is_copied_into_the_file_beside_the_loop(tmp_path: Path) -> None:
    """Commits leave the checkpoint to a thread of their own: a megabyte written (a quarter
    of what SQLite lets the log hold before a commit checkpoints it) reaches the database file
    soon after it commits, and the thread ends with the last connection."""
    before = _checkpointers()
    path = tmp_path / "wal.db"
    db = await Database.open(f"sqlite:///{path}")
    try:
        async with db.write() as conn:
            await conn.execute(text("CREATE TABLE blobs (b BLOB)"))
        size = path.stat().st_size
        async with db.write() as conn:
            await conn.execute(text("INSERT INTO blobs VALUES (randomblob(1048576))"))
            assert (
                await conn.execute(text("PRAGMA wal_autocheckpoint"))
            ).scalar_one() == sqlite_inline.Checkpointer.COMMIT_CHECKPOINTS_PAGES
            # The database's size with the blob: the file reaches it once every page of the
            # log is copied (pages freed by the migrations are reused, so the file alone
            # may grow by less than the blob).
            pages = (await conn.execute(text("PRAGMA page_count"))).scalar_one()
            whole = pages * (await conn.execute(text("PRAGMA page_size"))).scalar_one()
        assert whole >= size + (1 << 20) - (64 << 10)
        ours = _checkpointers() - before
        assert len(ours) == 1
        await eventually(lambda: path.stat().st_size >= whole, what="the blob in the database file")
    finally:
        await db.close()
    assert not any(thread.is_alive() for thread in ours)
