"""Schema migrations: bring a database to the newest revision with Alembic, on start.

Several control-plane processes may start at once on one PostgreSQL database (a rollout, a
crash loop). They must not run the same migration side by side, so the upgrade runs under a
PostgreSQL advisory lock held by its transaction: the first process migrates, the others wait,
then find the schema at head and do nothing. (SQLite serves one machine; its file lock keeps
writers apart.)

A process must not serve a schema newer than its own code knows: a newer control plane has
migrated the database and this one would misread it. ``upgrade`` refuses with ``SchemaTooNew``.
"""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).with_name("migrations")

#: The key of the advisory lock migrations run under (any constant unique to Flowyard: "flowyard"
#: read as a number).
MIGRATION_LOCK_KEY = 0x666C6F77796172


class StoreError(Exception):
    """The database cannot be used (missing driver, unreachable, unknown schema); the message
    is one line that says what to do."""


class SchemaTooNew(StoreError):
    """The database was migrated by a newer control plane than this one."""


def alembic_config(url: str = "") -> Config:
    """An Alembic configuration for our migrations (``url`` only matters for offline use)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url)
    return config


def check_known(connection: Connection, config: Config) -> None:
    """Raise ``SchemaTooNew`` if the database is at a revision our scripts do not have."""
    script = ScriptDirectory.from_config(config)
    known = {revision.revision for revision in script.walk_revisions()}
    current = MigrationContext.configure(connection).get_current_heads()
    unknown = [revision for revision in current if revision not in known]
    if unknown:
        raise SchemaTooNew(
            f"the database schema is at revision {', '.join(unknown)}, newer than this control "
            f"plane knows (its newest is {script.get_current_head()}): upgrade the control plane "
            "to the version that migrated the database"
        )


def upgrade_connection(connection: Connection) -> None:
    """``upgrade`` on a synchronous connection, in its transaction (the caller commits)."""
    if connection.dialect.name == "postgresql":
        # Held until this transaction ends: concurrent starters queue here, then see head.
        # Another replica's migration may take longer than a session's usual lock wait.
        connection.execute(text("SET LOCAL lock_timeout = 0"))
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    config = alembic_config()
    check_known(connection, config)
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


@functools.cache
def _head() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def behind_head(connection: Connection) -> str | None:
    """Why the database's schema is not the one this control plane serves, or None."""
    current = MigrationContext.configure(connection).get_current_heads()
    head = _head()
    if tuple(current) != (head,):
        return f"the database schema is at {', '.join(current) or 'no revision'}, not {head}"
    return None


async def upgrade(engine: AsyncEngine) -> None:
    """Apply every migration the database does not have yet (see the module docstring)."""
    async with engine.begin() as connection:
        await connection.run_sync(upgrade_connection)
