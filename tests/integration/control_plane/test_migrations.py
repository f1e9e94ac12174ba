"""The Alembic migrations build exactly the schema the code's tables describe."""

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine

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
    from sqlalchemy import text

    config, engine = _database_of_0002(tmp_path, "r1")
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


def test_runs_with_task_runs_from_before_their_flag_get_it(tmp_path: Path) -> None:
    """The end of an attempt ends its task runs only for runs flagged as having some: a run
    that reported task runs before the flag existed is flagged by the migration that adds it."""
    from alembic import command
    from sqlalchemy import text

    config, engine = _database_of_0002(tmp_path, "r1", "r2")
    command.upgrade(config, "0015")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO task_runs (run_id, flow_attempt, id, name, task_name, state, "
                "attempts, first_seq, last_seq) VALUES ('r1', 1, 't1', 'a-0', 'a', 'RUNNING', "
                "1, 1, 1)"
            )
        )
    command.upgrade(config, "head")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, has_task_runs FROM flow_runs")).all()
    flags = {run_id: bool(flag) for run_id, flag in rows}
    assert flags == {"r1": True, "r2": False}
    engine.dispose()


def _database_of_0002(tmp_path: Path, *run_ids: str) -> tuple[Config, Engine]:
    """A SQLite file migrated to revision 0002 and holding a pool, a deployment and a
    SCHEDULED run of each of ``run_ids``, as that revision stored them; the Alembic
    configuration that migrates it further, and an engine on it."""
    from alembic import command
    from sqlalchemy import create_engine, text

    from control_plane.store.migrate import alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    config = alembic_config(url)
    command.upgrade(config, "0002")
    engine = create_engine(url)
    now = {"now": "2026-01-01 00:00:00"}
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO pools VALUES ('p1', 'old', 'process', '{}', 0, 0, :now, :now)"), now
        )
        conn.execute(
            text(
                "INSERT INTO deployments (id, name, flow_name, entrypoint, source, pool_id, "
                "parameters, job_variables, tags, description, created_at, updated_at) VALUES "
                "('d1', 'dep', 'f', 'flow.py:f', '{}', 'p1', '{}', '{}', '[]', '', :now, :now)"
            ),
            now,
        )
        for run_id in run_ids:
            conn.execute(
                text(
                    "INSERT INTO flow_runs (id, deployment_id, pool_id, flow_name, parameters, "
                    "job_variables, state_type, state_name, state_message, state_time, version, "
                    "attempt, scheduled_at, created_at, agent_name, infrastructure_id, "
                    "result_summary) VALUES (:id, 'd1', 'p1', 'f', '{}', '{}', 'SCHEDULED', "
                    "'Scheduled', '', :now, 1, 1, :now, :now, '', '', '')"
                ),
                {**now, "id": run_id},
            )
    return config, engine


def test_log_lines_move_to_rows_of_batches_and_back(tmp_path: Path) -> None:
    """Lines stored a row each before 0014 read back the same after it (and after going back):
    runs of consecutive lines of one subflow (or none) become a row each."""
    from alembic import command
    from sqlalchemy import create_engine, text

    from control_plane.store import line_messages
    from control_plane.store.migrate import alembic_config

    url = f"sqlite:///{tmp_path / 'lines.db'}"
    config = alembic_config(url)
    command.upgrade(config, "0013")
    engine = create_engine(url)
    old = [
        # run, attempt, seq, time, level, stream, logger, text, task run, subflow
        ("r1", 1, 1, "2026-12-01 10:00:00.000001", 20, "stdout", "", "one", None, None),
        ("r1", 1, 2, "2026-12-01 10:00:01.250000", 30, "logger", "flow", "two", "t-0", None),
        ("r1", 1, 3, "2026-12-01 10:00:02.000000", 20, "stdout", "", "sub", None, "s1"),
        ("r1", 1, 5, "2026-12-01 10:00:03.000000", 20, "stdout", "", "after a gap", None, "s1"),
        ("r1", 1, 6, "2026-12-01 10:00:04.000000", 40, "system", "flowyard", "end", None, None),
        ("r1", 2, 1, "2026-12-01 11:00:00.000000", 20, "stderr", "", "again", None, None),
        ("r2", 1, 1, "2026-12-01 12:00:00.000000", 20, "unknown", "", "other", None, None),
    ]
    columns = "run_id, attempt, seq, timestamp, level, stream, logger, text, task_run, subflow_run"
    with engine.begin() as conn:
        for row in old:
            conn.exec_driver_sql(
                f"INSERT INTO log_lines ({columns}) VALUES ({', '.join('?' * 10)})", row
            )
    command.upgrade(config, "head")
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT run_id, attempt, first_seq, last_seq, subflow_run, lines "
                "FROM log_batches ORDER BY run_id, attempt, first_seq"
            )
        ).all()
    assert [row[:5] for row in rows] == [
        ("r1", 1, 1, 2, None),
        ("r1", 1, 3, 3, "s1"),
        ("r1", 1, 5, 5, "s1"),
        ("r1", 1, 6, 6, None),
        ("r1", 2, 1, 1, None),
        ("r2", 1, 1, 1, None),
    ]
    read = [
        (
            record.run_id,
            record.attempt,
            record.seq,
            record.timestamp.strftime("%Y-%m-%d %H:%M:%S.%f"),
            record.level,
            record.stream.value,
            record.logger,
            record.text,
            record.task_run or None,
            record.subflow_run or None,
        )
        for row in rows
        for record in line_messages.decode(row.run_id, row.lines, 0, 100)
    ]
    assert read == old
    command.downgrade(config, "0013")
    with engine.connect() as conn:
        back = conn.execute(text(f"SELECT {columns} FROM log_lines ORDER BY 1, 2, 3")).all()
    assert [tuple(row) for row in back] == old
    engine.dispose()
