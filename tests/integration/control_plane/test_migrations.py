"""The Alembic migrations build exactly the schema the code's tables describe."""

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

from control_plane.store.db import Database
from control_plane.store.tables import metadata


def _differences(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"render_as_batch": True})
    return list(compare_metadata(context, metadata))


async def test_migrations_match_the_tables(tmp_path: Path) -> None:
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'schema.db'}")
    try:
        async with db.read() as conn:
            differences = await conn.run_sync(_differences)
    finally:
        await db.close()
    assert differences == []


async def test_migrating_twice_is_a_no_op(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'twice.db'}"
    for _ in range(2):
        db = await Database.open(url)
        await db.close()
