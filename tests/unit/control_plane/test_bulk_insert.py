"""The multi-row inserts of log lines are SQLAlchemy's own statements, on both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import psycopg
from sqlalchemy.dialects.sqlite import pysqlite
from sqlalchemy.engine import Dialect

from control_plane.store.dialects import BulkInsert
from control_plane.store.tables import log_lines, run_states


@pytest.mark.parametrize("dialect", [pysqlite.dialect(), psycopg.dialect()], ids=lambda d: d.name)
@pytest.mark.parametrize("table", [log_lines, run_states], ids=lambda t: t.name)
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7, BulkInsert.ROWS_PER_STATEMENT])
def test_a_statement_for_many_rows_is_the_one_sqlalchemy_compiles(
    dialect: Dialect, table: Table, rows: int
) -> None:
    bulk = BulkInsert(table)
    assert bulk._statement(dialect, rows) == bulk.compiled_by_sqlalchemy(dialect, rows)
