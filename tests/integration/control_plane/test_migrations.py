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


def test_scheduling_migration_gives_existing_pools_a_default_queue(tmp_path: Path) -> None:
    from alembic import command
    from sqlalchemy import create_engine, text

    from control_plane.store.migrate import alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    config = alembic_config(url)
    command.upgrade(config, "0002")
    engine = create_engine(url)
    now = "2026-01-01 00:00:00"
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO pools VALUES ('p1', 'old', 'process', '{}', 0, 0, :now, :now)"),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO deployments (id, name, flow_name, entrypoint, source, pool_id, "
                "parameters, job_variables, tags, description, created_at, updated_at) VALUES "
                "('d1', 'dep', 'f', 'flow.py:f', '{}', 'p1', '{}', '{}', '[]', '', :now, :now)"
            ),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO flow_runs (id, deployment_id, pool_id, flow_name, parameters, "
                "job_variables, state_type, state_name, state_message, state_time, version, "
                "attempt, scheduled_at, created_at, agent_name, infrastructure_id, "
                "result_summary) VALUES ('r1', 'd1', 'p1', 'f', '{}', '{}', 'SCHEDULED', "
                "'Scheduled', '', :now, 1, 1, :now, :now, '', '', '')"
            ),
            {"now": now},
        )
    command.upgrade(config, "head")
    with engine.connect() as conn:
        queue = conn.execute(text("SELECT id, name, priority FROM work_queues")).one()
        assert (queue.name, queue.priority) == ("default", 10)
        deployment = conn.execute(
            text("SELECT queue_id, retries, collision_strategy, schedules FROM deployments")
        ).one()
        assert tuple(deployment) == (queue.id, 0, "ENQUEUE", "[]")
        run = conn.execute(text("SELECT queue_id, max_retries, schedule_name FROM flow_runs")).one()
        assert tuple(run) == (queue.id, 0, "")
    engine.dispose()
