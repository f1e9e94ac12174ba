"""The few statements that differ between SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
from collections import namedtuple
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import BindParameter, ColumnElement, Dialect, Table, bindparam
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.store import sqlite_inline

T = TypeVar("T")


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


def padded(values: Sequence[T]) -> list[T]:
    """``values`` (not empty), its last repeated up to a power-of-two length: a
    ``DriverStatement`` for a list of any length is built once for each of a few lengths."""
    count = 1 << (len(values) - 1).bit_length()
    return [*values, *[values[-1]] * (count - len(values))]


def numbered(prefix: str, count: int) -> list[BindParameter[Any]]:
    """``count`` parameters named ``<prefix>0``, ``<prefix>1``, ...: a list in a statement
    built once per length (see ``padded``); ``numbered_values`` gives their values."""
    return [bindparam(f"{prefix}{i}") for i in range(count)]


def numbered_values(prefix: str, values: Sequence[Any]) -> dict[str, Any]:
    """The parameters of ``numbered(prefix, len(values))``, one for each of ``values``."""
    return {f"{prefix}{i}": value for i, value in enumerate(values)}


class DriverStatement:
    """A statement compiled once per dialect and executed on the driver, for the statements of
    the hottest paths: SQLAlchemy's execution of a statement (its cache lookup, execution
    context, parameter and result processing) costs more than the database spends on a
    small one.

    Parameters are given as SQLAlchemy takes them, and their columns' types are applied to
    them (a time becomes SQLite's text, say); what a statement returns is as the driver
    gives it (``rows``), or converted by its columns' types (``typed_rows``).
    """

    def __init__(self, statement: Any) -> None:
        self._statement = statement
        self._compiled: dict[str, _Compiled] = {}
        #: The names of the columns the statement returns, in order.
        self.names: list[str] = list(statement.exported_columns.keys())
        self._record: Any = None

    async def records(self, conn: AsyncConnection, parameters: dict[str, Any]) -> list[Any]:
        """``typed_rows``, each a named tuple: its values read by column name, as from a row
        SQLAlchemy returns (``row.id``, ``row._asdict()``)."""
        if self._record is None:
            self._record = namedtuple("Record", self.names, rename=True)  # type: ignore[misc]
        make = self._record._make
        return [make(row) for row in await self.typed_rows(conn, parameters)]

    async def typed_rows(self, conn: AsyncConnection, parameters: dict[str, Any]) -> list[Any]:
        """``rows``, with each value converted by its column's type, as SQLAlchemy returns it
        (a time read from SQLite's text, a JSON document parsed)."""
        compiled = self._compiled_for(conn.dialect)
        found = await self.rows(conn, parameters)
        results = compiled.results
        return [
            tuple(
                value if convert is None else convert(value)
                for convert, value in zip(results, row, strict=True)
            )
            for row in found
        ]

    async def rows(self, conn: AsyncConnection, parameters: dict[str, Any]) -> list[Any]:
        """Execute with ``parameters`` (converted by their columns' types) and fetch every row
        it returns, each a tuple of the driver's values.

        On SQLite the statement goes straight to ``sqlite3`` (``sqlite_inline.Connection.
        fetch``): even SQLAlchemy's execution of a driver statement costs three times what
        SQLite spends on an update of one run by its key. Elsewhere it runs on a cursor of
        the driver's own connection (``_driver_cursor``).
        """
        compiled = self._compiled_for(conn.dialect)
        values = compiled.converted(parameters)
        driver = sqlite_inline.driver_of(conn)
        if driver is not None:
            return await driver.fetch(compiled.sql, compiled.positional(values))
        args = values if compiled.order is None else compiled.positional(values)
        async with _driver_cursor(conn, compiled.sql, args) as cursor:
            await cursor.execute(compiled.sql, args)
            return await cursor.fetchall() if cursor.description is not None else []

    async def execute_many(self, conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> int:
        """Execute once for each of ``rows`` (parameters converted as ``rows`` converts them),
        as one call of the driver: on SQLite straight on ``sqlite3``. The number of rows it
        changed, or -1 where the driver does not count them."""
        compiled = self._compiled_for(conn.dialect)
        converted = [compiled.converted(row) for row in rows]
        driver = sqlite_inline.driver_of(conn)
        if driver is not None:
            return await driver.execute_many(
                compiled.sql, [compiled.positional(v) for v in converted]
            )
        many = converted if compiled.order is None else [compiled.positional(v) for v in converted]
        async with _driver_cursor(conn, compiled.sql, many) as cursor:
            await cursor.executemany(compiled.sql, many)
            return int(cursor.rowcount)

    def _compiled_for(self, dialect: Dialect) -> _Compiled:
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            statement = self._statement.compile(dialect=dialect)
            order = tuple(statement.positiontup) if dialect.positional else None
            processors = {}
            for bind, name in statement.bind_names.items():
                process = bind.type.dialect_impl(dialect).bind_processor(dialect)
                if process is not None:
                    processors[name] = process
            results = [
                column.type.dialect_impl(dialect).result_processor(dialect, None)
                for column in self._statement.exported_columns
            ]
            # The values the statement holds itself (a constant in a WHERE), for the
            # parameters no caller gives.
            fixed = {
                name: bind.value
                for bind, name in statement.bind_names.items()
                if not bind.required and bind.value is not None
            }
            compiled = self._compiled[dialect.name] = _Compiled(
                str(statement), order, processors, results, fixed
            )
        return compiled


@contextlib.asynccontextmanager
async def _driver_cursor(conn: AsyncConnection, sql: str, parameters: Any) -> AsyncIterator[Any]:
    """A cursor of the async driver's connection behind ``conn`` (psycopg's), in the
    transaction ``conn`` is in; its errors raised as SQLAlchemy raises them.

    SQLAlchemy's own execution of a driver statement on PostgreSQL cost 160 µs of a read by
    key that takes 100 µs on the driver, round trip included.
    """
    sync = conn.sync_connection
    assert sync is not None  # the connection holds a driver connection: it is in use
    driver: Any = sync.connection.driver_connection
    try:
        async with driver.cursor() as cursor:
            yield cursor
    except Exception as error:
        dbapi = conn.dialect.loaded_dbapi
        if not isinstance(error, dbapi.Error):
            raise
        raise sa_exc.DBAPIError.instance(sql, parameters, error, dbapi.Error) from error


@dataclass(frozen=True)
class _Compiled:
    """A statement as one dialect's driver takes it."""

    sql: str
    #: The parameters' names in the order of their places (None: the driver takes names).
    order: tuple[str, ...] | None
    #: How the types of the parameters that have one convert a value for the driver.
    processors: dict[str, Callable[[Any], Any]]
    #: How the type of each column returned converts the driver's value (None: as it is).
    results: list[Callable[[Any], Any] | None]
    #: The values of the parameters the statement holds itself.
    fixed: dict[str, Any]

    def positional(self, parameters: dict[str, Any]) -> tuple[Any, ...]:
        assert self.order is not None
        return tuple(parameters[name] for name in self.order)

    def converted(self, parameters: dict[str, Any]) -> dict[str, Any]:
        processors = self.processors
        given = {**self.fixed, **parameters} if self.fixed else parameters
        return {
            name: value if value is None or name not in processors else processors[name](value)
            for name, value in given.items()
        }
