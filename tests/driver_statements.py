"""What a ``DriverStatement`` must do on either store: read the values SQLAlchemy would, by
column name, and count the rows it changed."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    MetaData,
    String,
    Table,
    bindparam,
    insert,
    select,
    update,
)

from control_plane.store.db import Database
from control_plane.store.dialects import DriverStatement

PROBE = Table(
    "driver_probe",
    MetaData(),
    Column("k", String, primary_key=True),
    Column("on", Boolean),
    Column("doc", JSON),
)
INSERT_ONE = DriverStatement(insert(PROBE).returning(PROBE.c.k))
READ = DriverStatement(select(PROBE).where(PROBE.c.k == bindparam("key")))
SWITCH = DriverStatement(
    update(PROBE).where(PROBE.c.k == bindparam("key")).values(on=bindparam("on"))
)


async def check_records_and_counts(db: Database) -> None:
    """Store a row of ``PROBE`` (created afresh) with ``INSERT_ONE``, read it back as a
    record (a flag as a bool, a document parsed), and switch it with ``execute_many``, which
    says how many rows it changed."""
    async with db.write() as conn:
        await conn.run_sync(PROBE.metadata.drop_all)
        await conn.run_sync(PROBE.metadata.create_all)
    async with db.write() as conn:
        stored = await INSERT_ONE.rows(conn, {"k": "a", "on": True, "doc": {"x": [1]}})
    assert stored == [("a",)]
    async with db.read() as conn:
        [record] = await READ.records(conn, {"key": "a"})
    assert (record.k, record.on, record.doc) == ("a", True, {"x": [1]})
    assert record._asdict() == {"k": "a", "on": True, "doc": {"x": [1]}}
    async with db.write() as conn:
        changed = await SWITCH.execute_many(
            conn, [{"key": "a", "on": False}, {"key": "z", "on": False}]
        )
    assert changed == 1
    async with db.read() as conn:
        assert [r.on for r in await READ.records(conn, {"key": "a"})] == [False]
