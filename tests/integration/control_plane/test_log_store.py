"""Log lines as stored: a row per run of consecutive lines, each line once, read back from
any position exactly as written, on both stores."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import pytest
from sqlalchemy import text as text_sql

from control_plane.models import LogRecord, LogStream, WireBatch
from control_plane.store import line_messages
from control_plane.store import logs as logs_repo
from control_plane.store.db import Database
from flowyard.v1 import engine_pb2
from tests.waiting import eventually

from .conftest import Plane

BASE = 1_780_000_000


def line(run_id: str, seq: int, text: str = "", subflow_run: str = "") -> LogRecord:
    return LogRecord(
        run_id,
        1,
        seq,
        datetime.fromtimestamp(BASE + seq / 1000, UTC),
        20 + seq % 3,
        LogStream.STDOUT if seq % 2 else LogStream.LOGGER,
        "" if seq % 2 else "flow.steps",
        text or f"line {seq}",
        task_run="extract-0" if seq % 5 == 0 else "",
        subflow_run=subflow_run,
    )


def lines(run_id: str, first: int, last: int, text: str = "") -> list[LogRecord]:
    return [line(run_id, seq, text) for seq in range(first, last + 1)]


def seen(records: Sequence[LogRecord]) -> list[tuple[object, ...]]:
    """What a reader sees of each record (the message a tail sends for it included)."""
    return [
        (
            r.run_id,
            r.attempt,
            r.seq,
            r.timestamp,
            r.level,
            r.stream,
            r.logger,
            r.text,
            r.task_run,
            r.subflow_run,
            r.wire.SerializeToString() if r.wire is not None else None,
        )
        for r in records
    ]


def expected(records: Sequence[LogRecord]) -> list[tuple[object, ...]]:
    """``seen`` of records as written: their message is the one built from them."""
    messages = engine_pb2.LogBatch()
    for record in records:
        line_messages.add_log_line(messages.lines, record)
    return [
        (*row[:-1], message.SerializeToString())
        for row, message in zip(seen(records), messages.lines, strict=True)
    ]


@pytest.fixture
async def db(ready: Plane) -> AsyncIterator[Database]:
    url = ready.db_url or f"sqlite+aiosqlite:///{ready.data_dir / 'flowyard.db'}"
    database = await Database.open(url)
    yield database
    await database.close()


async def write(db: Database, *batches: list[LogRecord]) -> None:
    async with db.write() as conn:
        await logs_repo.insert_lines(conn, batches, db.dialect)


async def read(
    db: Database, run_id: str, seq: int = 0, limit: int = 100_000, subflow_run: str | None = None
) -> list[LogRecord]:
    async with db.read() as conn:
        return await logs_repo.read_after(conn, run_id, 1, seq, limit, subflow_run=subflow_run)


async def test_a_line_is_stored_once_whoever_sends_it_again(ready: Plane, db: Database) -> None:
    run_id = (await ready.run()).id
    await write(db, lines(run_id, 1, 5))
    # Resent with more (a reconnect), and with a new text: the stored lines stay as stored.
    await write(db, lines(run_id, 3, 8, text="again"))
    # Two streams of the attempt in one transaction, overlapping each other and the stored.
    await write(db, lines(run_id, 9, 12), lines(run_id, 7, 15))
    await write(db, lines(run_id, 2, 4))
    stored = await read(db, run_id)
    assert [r.seq for r in stored] == list(range(1, 16))
    assert seen(stored) == expected(
        [*lines(run_id, 1, 5), *lines(run_id, 6, 8, text="again"), *lines(run_id, 9, 15)]
    )
    assert ready.count_lines() == 15
    # The control plane's own lines come after the last one stored.
    async with db.write() as conn:
        await logs_repo.append_lines(
            conn, db.dialect, run_id, 1, lambda first: lines(run_id, first, first + 1, "ours")
        )
    assert seen(await read(db, run_id, 15)) == expected(lines(run_id, 16, 17, "ours"))
    async with db.read() as conn:
        assert await logs_repo.max_seq(conn, run_id, 1) == 17
        assert await logs_repo.max_seq(conn, run_id, 2) == 0
        assert await logs_repo.any_after(conn, run_id, 1, 16)
        assert not await logs_repo.any_after(conn, run_id, 1, 17)
        assert not await logs_repo.any_after(conn, run_id, 2, 0)


async def test_batches_of_several_runs_are_stored_together_each_line_once(
    ready: Plane, db: Database
) -> None:
    one, two, three = [(await ready.run()).id for _ in range(3)]
    await write(db, lines(one, 1, 5), lines(two, 1, 2))
    await write(db, lines(one, 3, 8, "again"), lines(two, 1, 4, "again"), lines(three, 1, 1))
    assert seen(await read(db, one)) == expected([*lines(one, 1, 5), *lines(one, 6, 8, "again")])
    assert seen(await read(db, two)) == expected([*lines(two, 1, 2), *lines(two, 3, 4, "again")])
    assert seen(await read(db, three)) == expected(lines(three, 1, 1))


async def test_a_read_starts_and_ends_at_any_line(ready: Plane, db: Database) -> None:
    run_id, child = (await ready.run()).id, (await ready.run()).id
    written: list[LogRecord] = []
    # Rows of 1, 4, 3 and 7 lines; a subflow's lines between the parent's.
    for first, last, subflow in [(1, 1, ""), (2, 5, child), (6, 8, ""), (9, 15, child)]:
        batch = [line(run_id, seq, subflow_run=subflow) for seq in range(first, last + 1)]
        await write(db, batch)
        written += batch
    for start in range(16):
        for limit in (1, 2, 3, 5, 8, 100):
            wanted = written[start : start + limit]
            assert seen(await read(db, run_id, start, limit)) == expected(wanted), (start, limit)
    theirs = [r for r in written if r.subflow_run == child]
    assert seen(await read(db, run_id, subflow_run=child)) == expected(theirs)
    assert seen(await read(db, run_id, 3, 4, subflow_run=child)) == expected(theirs[2:6])
    # A whole row read back points to its stored bytes: a tail sends them as they are.
    whole = await read(db, run_id, 5, 3)
    assert whole[0].batch is not None and whole[-1].batch is whole[0].batch
    assert whole[0].batch.data == line_messages.encode(written[5:8])
    # Part of a row does not.
    assert all(r.batch is None for r in await read(db, run_id, 6, 5))


async def test_lines_sent_as_a_batch_are_stored_as_its_bytes(ready: Plane, db: Database) -> None:
    """A batch whose lines kept their message is stored as the bytes it came in."""
    run_id = (await ready.run()).id
    records = lines(run_id, 1, 4)
    batch = engine_pb2.LogBatch()
    for record in records:
        record.wire = line_messages.add_log_line(batch.lines, record)
    whole = WireBatch(batch, 1, 4)
    for record in records:
        record.batch = whole
    await write(db, records)
    stored = await read(db, run_id)
    assert seen(stored) == expected(records)
    assert stored[0].batch is not None and stored[0].batch.data == whole.data


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_stores_side_by_side_store_each_line_once(ready: Plane, db: Database) -> None:
    """PostgreSQL runs transactions side by side: a store of a run's lines waits for another
    one in progress, then stores only what comes after it."""
    run_id = (await ready.run()).id

    async def waiting_on_a_lock() -> bool:
        async with db.read() as conn:
            query = text_sql(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return int((await conn.execute(query)).scalar_one()) > 0

    async with db.write() as first:
        await logs_repo.insert_lines(first, [lines(run_id, 1, 10)], db.dialect)
        second = asyncio.create_task(write(db, lines(run_id, 1, 20, text="again")))
        await eventually(waiting_on_a_lock, what="the second store to wait for the first")
        assert not second.done()
    await second
    stored = await read(db, run_id)
    assert seen(stored) == expected([*lines(run_id, 1, 10), *lines(run_id, 11, 20, "again")])


async def test_a_read_takes_the_rows_it_needs_within_its_bounds(
    ready: Plane, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However the lines are spread over rows, reading on from the last line read gives every
    line once, in order; a read looks at ``ROWS_PER_READ`` rows at most and fetches at most
    ``BYTES_PER_READ`` past its first row (never less than one row)."""
    run_id = (await ready.run()).id
    written: list[LogRecord] = []
    for first, last in [(1, 1), (2, 2), (3, 9), (10, 10), (11, 30), (31, 31), (32, 33)]:
        batch = lines(run_id, first, last)
        await write(db, batch)
        written += batch
    for rows, size, limit in [(2, 1 << 20, 100), (3, 1, 100), (1024, 1 << 20, 4), (5, 1, 1)]:
        monkeypatch.setattr(logs_repo, "ROWS_PER_READ", rows)
        monkeypatch.setattr(logs_repo, "BYTES_PER_READ", size)
        got: list[LogRecord] = []
        while part := await read(db, run_id, got[-1].seq if got else 0, limit):
            assert len(part) <= limit
            got += part
        assert seen(got) == expected(written), (rows, size, limit)
    monkeypatch.setattr(logs_repo, "ROWS_PER_READ", 2)
    monkeypatch.setattr(logs_repo, "BYTES_PER_READ", 1 << 20)
    assert [r.seq for r in await read(db, run_id, 0, 100)] == [1, 2]
    monkeypatch.setattr(logs_repo, "BYTES_PER_READ", 1)
    assert [r.seq for r in await read(db, run_id, 2, 100)] == list(range(3, 10))


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_postgresql_compresses_stored_lines_with_lz4(ready: Plane, db: Database) -> None:
    """Lines compress well, and lz4 costs a fraction of PostgreSQL's default pglz per batch
    stored (on a server built with lz4, as Debian's and the official images are)."""
    run_id = (await ready.run()).id
    await write(db, lines(run_id, 1, 200))
    async with db.read() as conn:
        query = "SELECT pg_column_compression(lines), pg_column_size(lines) FROM log_batches"
        method, stored = (await conn.execute(text_sql(query))).one()
        settings = "SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'"
        methods = (await conn.execute(text_sql(settings))).scalar_one()
    assert method == ("lz4" if "lz4" in methods else "pglz")
    assert stored < len(line_messages.encode(lines(run_id, 1, 200))) / 2
    assert seen(await read(db, run_id)) == expected(lines(run_id, 1, 200))
