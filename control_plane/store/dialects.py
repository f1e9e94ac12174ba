"""The few statements that differ between SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from itertools import chain
from typing import Any, cast

from sqlalchemy import ColumnElement, Dialect, Table, bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import NullType


def insert_ignoring_duplicates(table: Table, dialect: str) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING: a row that would violate a unique key is skipped."""
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise NotImplementedError(f"unsupported database dialect {dialect!r}")


def insert_or_update(
    table: Table,
    dialect: str,
    keys: list[str],
    set_: Callable[[Any], dict[str, Any]],
    where: Callable[[Any], ColumnElement[bool]],
) -> Any:
    """INSERT ... ON CONFLICT (keys) DO UPDATE SET ... WHERE ..., to execute with a list of
    rows (one compiled statement, cached, for any number of rows).

    ``set_`` and ``where`` are given the row that was refused (``excluded``) and answer the
    columns to set and when to set them; they may not use list parameters (``in_`` over a
    Python list), which a statement executed for many rows cannot carry.
    """
    if dialect == "postgresql":
        pg = postgresql.insert(table)
        return pg.on_conflict_do_update(
            index_elements=keys, set_=set_(pg.excluded), where=where(pg.excluded)
        )
    if dialect == "sqlite":
        lite = sqlite.insert(table)
        return lite.on_conflict_do_update(
            index_elements=keys, set_=set_(lite.excluded), where=where(lite.excluded)
        )
    raise NotImplementedError(f"unsupported database dialect {dialect!r}")


class BulkInsert:
    """``insert_ignoring_duplicates`` of many rows, compiled once per dialect and executed with
    rows as the driver takes them: tuples in the table's column order, times already in the
    driver's form (``driver_time``).

    For the tables written many rows at a time (log lines): there, building and processing
    each row's parameters in SQLAlchemy costs more than the database spends storing it. Rows
    go ``ROWS_PER_STATEMENT`` to a statement (one multi-row ``VALUES``, a third cheaper than a
    statement per row on SQLite), the rest one per row. The statements are still SQLAlchemy's,
    compiled from the table, and run in the caller's transaction.
    """

    #: Rows per multi-row statement: 5,000 parameters for a table of ten columns, well under
    #: SQLite's 32,766 and PostgreSQL's 65,535.
    ROWS_PER_STATEMENT = 500

    def __init__(self, table: Table) -> None:
        self._table = table
        self._columns = tuple(column.name for column in table.columns)
        self._sql: dict[tuple[str, int], str] = {}

    async def execute(self, conn: AsyncConnection, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert ``rows`` (each a value per column, in the table's order)."""
        many = self.ROWS_PER_STATEMENT
        whole = len(rows) - len(rows) % many
        if whole:
            await conn.exec_driver_sql(
                self._statement(conn.dialect, many),
                [tuple(chain.from_iterable(rows[at : at + many])) for at in range(0, whole, many)],
            )
        if whole < len(rows):
            await conn.exec_driver_sql(self._statement(conn.dialect, 1), list(rows[whole:]))

    def _statement(self, dialect: Dialect, rows: int) -> str:
        sql = self._sql.get((dialect.name, rows))
        if sql is None:
            sql = self._sql[dialect.name, rows] = self._compile(dialect, rows)
        return sql

    def _compile(self, dialect: Dialect, rows: int) -> str:
        if rows > 3:
            # SQLAlchemy takes a tenth of a second to compile 500 rows (the first batch a
            # server stores waited for it). Its statement for two rows, with the second row's
            # VALUES group repeated (the first may differ: casts on PostgreSQL), is the same
            # text: checked against its own for three.
            two, three = self._statement(dialect, 2), self._statement(dialect, 3)
            start = two.index(" VALUES ") + len(" VALUES ")
            first_end = two.index("), (", start) + 1
            end = two.index(")", first_end + 2) + 1
            head, group, tail = two[:first_end], two[first_end + 2 : end], two[end:]
            if f"{head}, {group}, {group}{tail}" == three:
                return head + f", {group}" * (rows - 1) + tail
        return self.compiled_by_sqlalchemy(dialect, rows)

    def compiled_by_sqlalchemy(self, dialect: Dialect, rows: int) -> str:
        """The statement for ``rows`` rows as SQLAlchemy compiles it."""
        names = [[f"{column}_{row}" for column in self._columns] for row in range(rows)]
        statement = insert_ignoring_duplicates(self._table, dialect.name).values(
            [
                {column: bindparam(name) for column, name in zip(self._columns, row, strict=True)}
                for row in names
            ]
        )
        # The driver's positional style (psycopg takes "%s" as well as its default "%(name)s").
        positional = (
            dialect
            if dialect.positional
            else cast(type[DefaultDialect], type(dialect))(paramstyle="format")
        )
        compiled = statement.compile(dialect=positional)
        if list(compiled.positiontup or ()) != list(chain.from_iterable(names)):
            raise AssertionError(f"{self._table.name}: parameters not in row and column order")
        return str(compiled)


def driver_time(dialect: str) -> Callable[[datetime], Any]:
    """How a UTC datetime is handed to the driver of ``dialect`` for a ``UTCDateTime`` column
    (what its bind processing would make of it)."""
    if dialect == "sqlite":
        return _sqlite_time
    if dialect == "postgresql":
        return _as_is
    raise NotImplementedError(f"unsupported database dialect {dialect!r}")


def time_from_driver(dialect: str) -> Callable[[Any], datetime]:
    """The UTC datetime of a ``UTCDateTime`` column's value as the driver of ``dialect`` returns
    it when the column is read without SQLAlchemy's processing (``type_coerce(column,
    RAW)``), for the reads of many rows."""
    if dialect == "sqlite":
        return _sqlite_time_read
    if dialect == "postgresql":
        return _in_utc
    raise NotImplementedError(f"unsupported database dialect {dialect!r}")


#: The type to read a column as, for ``time_from_driver``: the driver's value, unprocessed.
RAW = NullType()


def _sqlite_time_read(text: str) -> datetime:
    # The text _sqlite_time writes (SQLAlchemy's), read by the C parser: a tenth of the cost.
    return datetime.fromisoformat(text + "+00:00")


def _in_utc(value: datetime) -> datetime:
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def _sqlite_time(value: datetime) -> str:
    # SQLAlchemy's SQLite DATETIME text of the time in UTC, without its zone. The text of each
    # whole second is kept (a few thousand at most): rows written together share a few. Every
    # stored log line passes here: zfill is half the cost of a format spec.
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    second = (value.year, value.month, value.day, value.hour, value.minute, value.second)
    text = _SQLITE_SECONDS.get(second)
    if text is None:
        if len(_SQLITE_SECONDS) >= _SECONDS_KEPT:
            _SQLITE_SECONDS.clear()
        text = _SQLITE_SECONDS[second] = (
            value.replace(microsecond=0, tzinfo=None).isoformat(" ") + "."
        )
    return text + str(value.microsecond).zfill(6)


_SQLITE_SECONDS: dict[tuple[int, ...], str] = {}
_SECONDS_KEPT = 4_096


def _as_is(value: datetime) -> datetime:
    return value
