"""The few statements that differ between SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import ColumnElement, Table
from sqlalchemy.dialects import postgresql, sqlite


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
