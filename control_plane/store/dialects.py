"""The few statements that differ between SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Dialect, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection


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


class DriverStatement:
    """A statement compiled once per dialect and executed on the driver with its parameters
    as they are, for the statements of the hottest paths: SQLAlchemy's execution of a
    statement (its cache lookup, execution context, parameter and result processing) costs
    more than the database spends on a small one.

    Parameters are given by name, with values the driver takes as they are (no type of
    SQLAlchemy's is applied to them, nor to what the statement returns).
    """

    def __init__(self, statement: Any) -> None:
        self._statement = statement
        self._compiled: dict[str, tuple[str, tuple[str, ...] | None]] = {}

    async def execute(
        self, conn: AsyncConnection, parameters: Sequence[dict[str, Any]] | dict[str, Any]
    ) -> Any:
        """Execute with one set of ``parameters``, or each of a list of them."""
        sql, order = self._compiled_for(conn.dialect)
        if order is None:
            return await conn.exec_driver_sql(sql, parameters)
        if isinstance(parameters, dict):
            return await conn.exec_driver_sql(sql, tuple(parameters[name] for name in order))
        return await conn.exec_driver_sql(
            sql, [tuple(row[name] for name in order) for row in parameters]
        )

    def _compiled_for(self, dialect: Dialect) -> tuple[str, tuple[str, ...] | None]:
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            statement = self._statement.compile(dialect=dialect)
            order = tuple(statement.positiontup) if dialect.positional else None
            compiled = self._compiled[dialect.name] = (str(statement), order)
        return compiled
