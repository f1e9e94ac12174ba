"""What PostgreSQL does differently from SQLite: concurrent writers, migrations by several
processes at once, a schema newer than the code, and the errors of a database that cannot
be used. (Every other integration test runs on both stores through the ``db_url`` fixture.)"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import psycopg
import pytest
from psycopg import sql
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import make_url

from control_plane.api.errors import busy_database
from control_plane.cli.processes import script, start_server
from control_plane.store.db import Database, connect_params, unique_violation
from control_plane.store.migrate import SchemaTooNew, alembic_config
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2
from tests.driver_statements import INSERT_ONE, PROBE, READ, check_records_and_counts
from tests.stores import ADMIN_URL, conninfo, empty, postgres_database

from .conftest import Plane, agent_stream, make_ready, running_plane

CALLS = 40


def _head() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


@pytest.fixture
async def postgres_ready(tmp_path: Path, postgres_url: str) -> AsyncIterator[Plane]:
    """A control plane on this process's PostgreSQL database, emptied, with pool-a and hello."""
    empty(postgres_url)
    async with running_plane(tmp_path, postgres_url) as plane:
        yield await make_ready(plane)


async def _create_runs(plane: Plane, keys: list[str]) -> list[pb.CreateRunResponse]:
    async def create(index: int, key: str) -> pb.CreateRunResponse:
        request = pb.CreateRunRequest(
            deployment_name="hello", parameters_json=f'{{"name": "{index}"}}', idempotency_key=key
        )
        response: pb.CreateRunResponse = await plane.control.CreateRun(request)
        return response

    return list(await asyncio.gather(*(create(i, key) for i, key in enumerate(keys))))


async def _assert_each_has_one_first_state(plane: Plane, run_ids: set[str]) -> None:
    for run_id in run_ids:
        history = (await plane.get(run_id)).history
        assert [state.name for state in history][:1] == ["Scheduled"], history
        assert sum(state.name == "Scheduled" for state in history) == 1


async def test_concurrent_create_run_stores_one_run_per_call(postgres_ready: Plane) -> None:
    responses = await _create_runs(postgres_ready, [""] * CALLS)
    assert all(response.created for response in responses)
    ids = {response.run.id for response in responses}
    assert len(ids) == CALLS
    assert postgres_ready.count_rows("flow_runs") == CALLS
    await _assert_each_has_one_first_state(postgres_ready, ids)


async def test_concurrent_create_run_with_keys_stores_one_run_per_key(
    postgres_ready: Plane,
) -> None:
    keys = [f"key-{i % 4}" for i in range(CALLS)]
    responses = await _create_runs(postgres_ready, keys)
    by_key: dict[str, set[str]] = {}
    for key, response in zip(keys, responses, strict=True):
        by_key.setdefault(key, set()).add(response.run.id)
    assert all(len(ids) == 1 for ids in by_key.values()), by_key
    # Exactly one call per key created its run; the others were told it already existed.
    created = Counter(
        key for key, response in zip(keys, responses, strict=True) if response.created
    )
    assert created == Counter({key: 1 for key in by_key})
    assert postgres_ready.count_rows("flow_runs") == 4
    ids = {run_id for run_ids in by_key.values() for run_id in run_ids}
    await _assert_each_has_one_first_state(postgres_ready, ids)


async def test_a_run_created_with_a_key_is_dispatched_at_once(postgres_ready: Plane) -> None:
    agent = agent_stream(postgres_ready)
    try:
        await agent.receive("welcome")
        response = await postgres_ready.control.CreateRun(
            pb.CreateRunRequest(
                deployment_name="hello", parameters_json='{"name": "a"}', idempotency_key="once"
            )
        )
        assert response.created
        assign = await agent.receive("assign")
        assert assign.run_id == response.run.id
    finally:
        await agent.close()


async def test_runs_are_listed_by_id_prefix_with_utc_times(postgres_ready: Plane) -> None:
    runs = [await postgres_ready.run(name=str(i)) for i in range(6)]
    for run in runs:
        listed = await postgres_ready.control.ListRuns(pb.ListRunsRequest(run_id_prefix=run.id[:6]))
        assert run.id in {found.id for found in listed.runs}
    # The session time zone of the test database is +05:45: a stored time that lost its zone
    # would be hours off.
    created = runs[0].create_time.ToDatetime(tzinfo=UTC)
    assert abs((created - datetime.now(UTC)).total_seconds()) < 60


def _migrate_script(url: str) -> list[str]:
    code = (
        "import asyncio, sys\n"
        "from control_plane.store.db import Database\n"
        "async def main():\n"
        "    db = await Database.open(sys.argv[1])\n"
        "    await db.close()\n"
        "asyncio.run(main())\n"
    )
    return [sys.executable, "-c", code, url]


def test_processes_migrating_one_empty_database_at_once_all_succeed() -> None:
    with postgres_database() as url:
        processes = [
            subprocess.Popen(_migrate_script(url), stderr=subprocess.PIPE, text=True)
            for _ in range(4)
        ]
        outcomes = [(process.wait(timeout=60), process.stderr) for process in processes]
        errors = [stderr.read() if stderr else "" for code, stderr in outcomes if code != 0]
        for process in processes:
            if process.stderr:
                process.stderr.close()
        assert errors == []
        with psycopg.connect(conninfo(url)) as connection:
            versions = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        assert versions == [(_head(),)]


async def test_migrations_match_the_tables_on_postgresql() -> None:
    from .test_migrations import _differences

    with postgres_database() as url:
        db = await Database.open(url)
        try:
            async with db.read() as conn:
                differences = await conn.run_sync(_differences)
        finally:
            await db.close()
    assert differences == []


async def test_a_schema_newer_than_the_code_is_refused_naming_both_revisions(
    tmp_path: Path,
) -> None:
    with postgres_database() as url:
        await (await Database.open(url)).close()
        with psycopg.connect(conninfo(url)) as connection:
            connection.execute("UPDATE alembic_version SET version_num = '0099_from_the_future'")
        with pytest.raises(SchemaTooNew) as refused:
            await Database.open(url)
        message = str(refused.value)
        assert "0099_from_the_future" in message and _head() in message
        assert "upgrade the control plane" in message
        started = _server_start(tmp_path, url)
    assert started.returncode == 1
    assert "Traceback" not in started.stderr
    assert started.stderr.strip().splitlines()[-1] == f"error: {message}"


def _server_start(data_dir: Path, url: str) -> subprocess.CompletedProcess[str]:
    command = [
        *script("flowyard"),
        "server",
        "start",
        "--port",
        "0",
        "--http-port",
        "0",
        "--data-dir",
        str(data_dir),
    ]
    return subprocess.run([*command, "--db-url", url], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://postgres@127.0.0.1:1/flowyard", "cannot use the database"),
        (
            "postgresql://postgres@127.0.0.1:1/flowyard?password=S3cretPW",
            "cannot use the database postgresql://postgres@127.0.0.1:1/flowyard?password=***: ",
        ),
        (
            "postgresql://postgres:S3cretPW@127.0.0.1:1/flowyard",
            "cannot use the database postgresql://postgres:***@127.0.0.1:1/flowyard: ",
        ),
        ("postgresql+asyncpg://postgres@127.0.0.1/flowyard", "is not installed"),
        ("mysql://root@127.0.0.1/flowyard", "unsupported database 'mysql'"),
        ("postgresql://postgres:S3cretPW@127.0.0.1:notaport/x", "--db-url: the port is not a"),
        ("postgresql://postgres:S3cretPW@[::1:5432/x", "--db-url: the port is not a number"),
        (
            "postgresql://postgres@127.0.0.1:1/x?password=S3cretPW&sslmod=require",
            '--db-url: invalid connection option "sslmod"',
        ),
        (
            "postgresql://postgres@127.0.0.1:1/x?password=S3cretPW&connect_timeout=abc",
            "--db-url: bad value for connect_timeout: 'abc'",
        ),
        # Port 1: were it accepted, no database would be reached, nor created into.
        ("postgresql://postgres:S3cretPW@127.0.0.1:1", "--db-url names no database"),
        ("sqlite://", "--db-url names no SQLite file"),
        ("sqlite:///", "--db-url names no SQLite file"),
        ("sqlite:///:memory:", "--db-url names no SQLite file"),
    ],
)
def test_an_unusable_db_url_is_one_line_at_server_start(
    tmp_path: Path, url: str, expected: str
) -> None:
    started = _server_start(tmp_path, url)
    assert started.returncode == 1
    assert "Traceback" not in started.stderr
    assert "S3cretPW" not in started.stderr + started.stdout
    last = started.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, started.stderr


def test_the_server_names_its_database_without_a_password_given_as_a_parameter(
    tmp_path: Path, postgres_url: str
) -> None:
    empty(postgres_url)
    # The test server trusts every local connection: the password is never checked.
    server = start_server(tmp_path, db_url=f"{postgres_url}?password=S3cretPW")
    try:
        log = server.log_path.read_text()
    finally:
        assert server.stop() == 0
    assert f"(plaintext; database {postgres_url}?password=***)" in log, log
    assert "S3cretPW" not in log + server.log_path.read_text()


async def test_both_url_forms_reach_postgresql(postgres_url: str) -> None:
    for form in ("postgresql://", "postgres://", "postgresql+psycopg://"):
        url = form + postgres_url.split("://", 1)[1]
        db = await Database.open(url)
        try:
            assert db.engine.dialect.driver == "psycopg"
        finally:
            await db.close()


async def test_driver_statements_read_write_and_fail_as_sqlalchemy_does(postgres_url: str) -> None:
    """``DriverStatement`` runs on psycopg's own cursor, yet reads the values SQLAlchemy would,
    counts what it changed, and raises SQLAlchemy's errors: a unique key taken is told apart,
    and a lock held elsewhere is answered as busy."""
    db = await Database.open(postgres_url)
    try:
        await check_records_and_counts(db)
        with pytest.raises(sa_exc.IntegrityError) as taken:
            async with db.write() as conn:
                await INSERT_ONE.rows(conn, {"k": "a", "on": True, "doc": {}})
        assert unique_violation(taken.value)
        with psycopg.connect(conninfo(postgres_url)) as holder:
            holder.execute(f"LOCK TABLE {PROBE.name} IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(sa_exc.OperationalError) as locked:
                async with db.write() as conn:
                    await conn.exec_driver_sql("SET LOCAL lock_timeout = '100ms'")
                    await READ.rows(conn, {"key": "a"})
            holder.rollback()
        assert busy_database(locked.value) is not None
        async with db.write() as conn:
            await conn.run_sync(PROBE.metadata.drop_all)
    finally:
        await db.close()


async def test_sessions_never_wait_for_ever_on_a_lock_or_an_idle_transaction(
    postgres_url: str,
) -> None:
    db = await Database.open(postgres_url)
    try:
        async with db.read() as conn:
            lock = (await conn.execute(text("SHOW lock_timeout"))).scalar()
            idle = (await conn.execute(text("SHOW idle_in_transaction_session_timeout"))).scalar()
    finally:
        await db.close()
    assert (lock, idle) == ("30s", "1min")


@pytest.mark.parametrize(
    ("options", "lock_timeout"), [("", "30s"), ("?options=-c%20lock_timeout%3D3s", "3s")]
)
async def test_connections_outside_the_pool_get_the_session_options_of_the_pools(
    postgres_url: str, options: str, lock_timeout: str
) -> None:
    """LISTEN/NOTIFY's connections (``connect_params``) get the URL's options, spaces and
    all, or our own when it has none, as the pool's connections do."""
    db = await Database.open(postgres_url + options)
    try:
        async with db.read() as conn:
            pooled = (await conn.execute(text("SHOW lock_timeout"))).scalar()
        async with await psycopg.AsyncConnection.connect(**connect_params(db.engine)) as own:
            row = await (await own.execute("SHOW lock_timeout")).fetchone()
    finally:
        await db.close()
    assert row is not None
    assert (pooled, row[0]) == (lock_timeout, lock_timeout)


async def test_a_call_blocked_by_a_lock_held_elsewhere_answers_unavailable(
    tmp_path: Path, postgres_url: str
) -> None:
    # The operator's own session options win over ours: here, a lock wait of 200 ms.
    url = make_url(postgres_url).update_query_dict({"options": "-c lock_timeout=200ms"})
    empty(postgres_url)
    with psycopg.connect(conninfo(postgres_url)) as holder:
        holder.execute("LOCK TABLE pools IN ACCESS EXCLUSIVE MODE")
        async with running_plane(tmp_path, url.render_as_string(hide_password=False)) as plane:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await plane.control.ListPools(pb.ListPoolsRequest())
        holder.rollback()
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE, error.value.details()


async def test_an_unreachable_database_answers_unavailable(postgres_ready: Plane) -> None:
    await postgres_ready.app.db.engine.dispose()
    database = make_url(postgres_ready.db_url or "").database or ""
    with psycopg.connect(conninfo(ADMIN_URL), autocommit=True) as admin:
        name = sql.Identifier(database)
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(name))
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (database,),
        )
        try:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await postgres_ready.control.ListPools(pb.ListPoolsRequest())
        finally:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(name))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE, error.value.details()
    assert "retry" in (error.value.details() or "")


async def test_concurrent_creates_of_one_pool_name_tell_the_others_it_exists(
    postgres_ready: Plane,
) -> None:
    async def create(name: str) -> grpc.StatusCode:
        try:
            await postgres_ready.pool(name)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    # Several names: one race that no two calls happened to run together would prove nothing.
    for name in [f"same-{n}" for n in range(5)]:
        codes = Counter(await asyncio.gather(*(create(name) for _ in range(CALLS // 4))))
        # One creates it; each other either saw it or lost the race on its insert, and then
        # saw it: the same answer either way.
        assert codes == {grpc.StatusCode.OK: 1, grpc.StatusCode.ALREADY_EXISTS: CALLS // 4 - 1}


async def test_concurrent_upserts_of_one_new_queue_all_succeed_and_one_creates(
    postgres_ready: Plane,
) -> None:
    for name in [f"queue-{n}" for n in range(5)]:
        request = pb.UpsertQueueRequest(
            pool="pool-a", queue=types_pb2.WorkQueue(name=name, priority=3)
        )
        calls = (postgres_ready.control.UpsertQueue(request) for _ in range(CALLS // 4))
        responses = await asyncio.gather(*calls)
        assert sum(response.created for response in responses) == 1, name
    queues = (await postgres_ready.control.GetPool(pb.GetPoolRequest(name="pool-a"))).pool.queues
    assert sorted(queue.name for queue in queues) == sorted(
        ["default", *(f"queue-{n}" for n in range(5))]
    )


async def test_concurrent_upserts_of_one_new_deployment_all_succeed_and_one_creates(
    postgres_ready: Plane,
) -> None:
    async def deploy(name: str) -> list[pb.UpsertDeploymentResponse]:
        request = pb.UpsertDeploymentRequest(
            deployment=types_pb2.Deployment(
                name=name,
                entrypoint="flow.py:hello",
                source=types_pb2.Source(local=types_pb2.LocalSource(path="/srv/flows")),
                pool="pool-a",
            )
        )
        calls = (postgres_ready.control.UpsertDeployment(request) for _ in range(CALLS // 4))
        return list(await asyncio.gather(*calls))

    # Several names: each race is short, and one that no two calls happened to run together
    # would prove nothing.
    for name in [f"same-{n}" for n in range(5)]:
        responses = await deploy(name)
        assert sum(response.created for response in responses) == 1, name
        assert len({response.deployment.id for response in responses}) == 1
        # The others found it as they would have asked for it, and changed nothing.
        for response in responses:
            if not response.created:
                assert response.previous == response.deployment
    assert postgres_ready.count_rows("deployments") == 1 + 5
