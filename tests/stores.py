"""The databases tests run the control plane on: SQLite files and PostgreSQL databases.

PostgreSQL runs on the server at ``FLOWYARD_TEST_POSTGRES`` (default: the local server, user
``postgres``). Each test process (xdist worker) creates a database of its own, migrates it
once and empties it before every test that uses it (cheaper than a new database per test);
tests that need an empty, unmigrated database create their own. Every test database runs in a
non-UTC session time zone, so a timestamp that loses its zone on the way shows up as wrong.

When the server does not answer, the PostgreSQL variants FAIL under ``CI`` -- a skipped store
is an untested store -- and are skipped elsewhere with the reason.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from control_plane.store.migrate import upgrade_connection
from control_plane.store.tables import metadata
from flowyard.v1 import engine_pb2

#: The maintenance database tests create their databases from (any database on the server).
ADMIN_URL = os.environ.get(
    "FLOWYARD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
STORES = ("sqlite", "postgresql")
#: Far from UTC and not a whole hour: a zone dropped or applied twice cannot go unnoticed.
SESSION_TIME_ZONE = "Asia/Kathmandu"


def conninfo(url: str) -> str:
    """A libpq connection string for a SQLAlchemy URL (whatever driver it names)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@functools.cache
def postgres_problem() -> str | None:
    """Why the test server cannot be used, or None when it can (asked once per process)."""
    try:
        with psycopg.connect(conninfo(ADMIN_URL), connect_timeout=5) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as error:
        where = make_url(ADMIN_URL).render_as_string()
        # libpq's message spans lines (a hint on the second); a test report reads one.
        return f"PostgreSQL at {where} is not reachable: {' '.join(str(error).split())}"
    return None


def require_postgres() -> None:
    """Fail (under CI) or skip (elsewhere) the calling test when PostgreSQL is not reachable."""
    problem = postgres_problem()
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{problem} (CI runs the PostgreSQL tests; start the server)", pytrace=False)
    pytest.skip(f"{problem}; CI fails here instead of skipping")


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database: its URL (psycopg driver), dropped afterwards."""
    require_postgres()
    database = f"flowyard_test_{uuid.uuid4().hex}"
    name = sql.Identifier(database)
    with psycopg.connect(conninfo(ADMIN_URL), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(name))
        admin.execute(
            sql.SQL("ALTER DATABASE {} SET timezone TO {}").format(
                name, sql.Literal(SESSION_TIME_ZONE)
            )
        )
    url = make_url(ADMIN_URL).set(drivername="postgresql+psycopg", database=database)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo(ADMIN_URL), autocommit=True) as admin:
            # FORCE: a connection a failed test left open must not keep the database alive.
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the newest schema."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            upgrade_connection(connection)
    finally:
        engine.dispose()


def empty(url: str) -> None:
    """Delete every row of every table (the schema stays)."""
    tables = sql.SQL(", ").join(sql.Identifier(table.name) for table in metadata.sorted_tables)
    with psycopg.connect(conninfo(url)) as connection:
        connection.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(tables))


def count_rows(data_dir: Path, db_url: str | None, table: str) -> int:
    """How many rows ``table`` holds: in ``db_url``, or SQLite in ``data_dir`` when None."""
    if db_url is None:
        with contextlib.closing(sqlite3.connect(data_dir / "flowyard.db")) as db:
            return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    with psycopg.connect(conninfo(db_url)) as connection:
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        row = connection.execute(query).fetchone()
        assert row is not None
        return int(row[0])


def count_lines(data_dir: Path, db_url: str | None) -> int:
    """How many log lines are stored (every row's messages counted), on either store."""
    query = "SELECT lines FROM log_batches"
    if db_url is None:
        with contextlib.closing(sqlite3.connect(data_dir / "flowyard.db")) as db:
            rows = db.execute(query).fetchall()
    else:
        with psycopg.connect(conninfo(db_url)) as connection:
            rows = connection.execute(query).fetchall()
    return sum(len(engine_pb2.LogBatch.FromString(bytes(data)).lines) for (data,) in rows)


def row_where(
    data_dir: Path,
    db_url: str | None,
    table: str,
    column: str,
    value: Any,
    select: str = "*",
) -> tuple[Any, ...] | None:
    """The first row of ``table`` whose ``column`` equals ``value`` (only column ``select``
    unless "*"), read past the server, on either store."""
    if db_url is None:
        with contextlib.closing(sqlite3.connect(data_dir / "flowyard.db")) as db:
            found = db.execute(
                f"SELECT {select} FROM {table} WHERE {column} = ?", (value,)
            ).fetchone()
            return tuple(found) if found is not None else None
    chosen = sql.SQL("*") if select == "*" else sql.Identifier(select)
    with psycopg.connect(conninfo(db_url)) as connection:
        query = sql.SQL("SELECT {} FROM {} WHERE {} = %s").format(
            chosen, sql.Identifier(table), sql.Identifier(column)
        )
        found = connection.execute(query, (value,)).fetchone()
        return tuple(found) if found is not None else None
