"""A database that cannot serve is the server's problem, not the caller's, on every path a call
takes: the check of its token before any servicer runs (bearer, agent and engine tokens; unary
and streaming calls; the HTTP API and pages), and the engine's and the agent's streams when a
report cannot be stored. Each answers UNAVAILABLE with "retry in a moment" and the
``grpc-retry-pushback-ms`` trailer (HTTP: 503 with Retry-After), never UNKNOWN or INTERNAL;
the log gets one warning line, not a traceback; and the same call succeeds once the database
is back.

On PostgreSQL the server reaches its database through a relay that the test cuts and that
then refuses new connections: the database server went away. On SQLite another process holds
the write lock past the busy timeout; a reader never waits for a writer there (WAL), so only
what writes can be made to fail, and the token checks (reads) are tested on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from control_plane.orchestration import clock
from control_plane.orchestration.changes import Notifier
from control_plane.orchestration.liveness import LivenessPolicy, Reaper
from control_plane.store import db
from flowyard.v1 import agent_pb2, engine_pb2, types_pb2
from flowyard.v1 import control_plane_pb2 as pb
from flowyard_common.aiotasks import cancel_and_wait
from tests.faults.proxy import Relay
from tests.stores import STORES, empty
from tests.waiting import eventually

from .conftest import (
    RECEIVE_TIMEOUT,
    Plane,
    agent_stream,
    assigned,
    drive_to_running,
    engine_stream,
    make_ready,
    running_plane,
)

RETRY_HINT = "retry in a moment"
PUSHBACK = "grpc-retry-pushback-ms"


@dataclass
class Outage:
    """A ready control plane (pool-a, the hello deployment) whose database ``down()`` takes
    away while inside the block."""

    plane: Plane
    down: Callable[[], contextlib.AbstractContextManager[None]]


@contextlib.asynccontextmanager
async def on_postgres(tmp_path: Path, postgres_url: str) -> AsyncIterator[Outage]:
    empty(postgres_url)
    url = make_url(postgres_url)
    with Relay(f"{url.host}:{url.port or 5432}") as relay:

        @contextlib.contextmanager
        def down() -> Iterator[None]:
            with relay.refusing():
                relay.cut()
                yield

        relayed = url.set(host="127.0.0.1", port=int(relay.address.rsplit(":", 1)[1]))
        async with running_plane(
            tmp_path, relayed.render_as_string(hide_password=False), http=True
        ) as plane:
            yield Outage(await make_ready(plane), down)


@contextlib.asynccontextmanager
async def on_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Outage]:
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 200)

    @contextlib.contextmanager
    def down() -> Iterator[None]:
        other = sqlite3.connect(tmp_path / "flowyard.db", isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            yield
            other.execute("ROLLBACK")
        finally:
            other.close()

    async with running_plane(tmp_path, None, http=True) as plane:
        yield Outage(await make_ready(plane), down)


@pytest.fixture
async def postgres_outage(tmp_path: Path, postgres_url: str) -> AsyncIterator[Outage]:
    async with on_postgres(tmp_path, postgres_url) as outage:
        yield outage


@pytest.fixture(params=STORES)
async def outage(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Outage]:
    if request.param == "sqlite":
        async with on_sqlite(tmp_path, monkeypatch) as found:
            yield found
    else:
        async with on_postgres(tmp_path, request.getfixturevalue("postgres_url")) as found:
            yield found


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def answer(error: grpc.aio.AioRpcError) -> tuple[str, bool, str | None]:
    """What a refused call tells its caller: the status, whether its message asks for a retry,
    and the retry pushback trailer."""
    trailers = dict(error.trailing_metadata() or ())
    pushback = trailers.get(PUSHBACK)
    return (
        error.code().name,
        RETRY_HINT in (error.details() or ""),
        pushback if isinstance(pushback, str) else None,
    )


UNAVAILABLE = ("UNAVAILABLE", True, "1000")


async def unary_refusal(call: Any) -> tuple[str, bool, str | None]:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    return answer(refused.value)


async def stream_refusal(call: Any) -> tuple[str, bool, str | None]:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in call:
            pass
    return answer(refused.value)


async def bidi_refusal(open_call: Callable[[], Any], first: Any) -> tuple[str, bool, str | None]:
    """The answer to a bidirectional call refused before its first message is read.

    The first message is written on the call itself, and a client that reports its own failed
    write (INTERNAL, on a loaded machine) instead of the server's status tries again, twice at
    most (see ``test_auth.opened``).
    """
    for _ in range(3):
        call = open_call()
        try:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await call.write(first)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await asyncio.wait_for(call.read(), RECEIVE_TIMEOUT)
        finally:
            call.cancel()
        if refused.value.code() is not grpc.StatusCode.INTERNAL:
            break
    return answer(refused.value)


def api_log(caplog: pytest.LogCaptureFixture) -> list[tuple[str, bool]]:
    """What the gRPC API logged at WARNING or above: each record's level and whether it
    carries a traceback."""
    return [
        (record.levelname, record.exc_info is not None)
        for record in caplog.records
        if record.name.startswith("control_plane.api") and record.levelno >= logging.WARNING
    ]


async def test_calls_whose_token_the_database_cannot_check_are_unavailable(
    postgres_outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    plane = postgres_outage.plane
    # Tokens never checked before: no cache answers for the database.
    admin = (
        await plane.control.CreateToken(
            pb.CreateTokenRequest(kind=pb.TOKEN_KIND_ADMIN, description="outage")
        )
    ).token
    agent_token = (
        await plane.control.CreateToken(
            pb.CreateTokenRequest(kind=pb.TOKEN_KIND_AGENT, pool="pool-a")
        )
    ).token
    agent, run, assign = await assigned(plane)
    hello = agent_pb2.Hello(agent_name="probe", pool="pool-a", capacity=0, runtime="process")
    open_engine = engine_pb2.Open(run_id=run.id, attempt=1)
    try:
        with postgres_outage.down():
            caplog.clear()
            answers = {
                "admin token, unary": await unary_refusal(
                    plane.control.ListRuns(pb.ListRunsRequest(), metadata=bearer(admin))
                ),
                "admin token, server stream": await stream_refusal(
                    plane.control.WatchRun(
                        pb.WatchRunRequest(run_id=run.id), metadata=bearer(admin)
                    )
                ),
                "engine token, unary": await unary_refusal(
                    plane.engines.StartRun(
                        engine_pb2.StartRunRequest(run_id=run.id, attempt=1),
                        metadata=bearer(assign.engine_token),
                    )
                ),
                "engine token, bidirectional stream": await bidi_refusal(
                    lambda: plane.engines.Report(metadata=bearer(assign.engine_token)),
                    engine_pb2.ReportRequest(open=open_engine),
                ),
                "agent token, bidirectional stream": await bidi_refusal(
                    lambda: plane.agents.Connect(metadata=bearer(agent_token)),
                    agent_pb2.ConnectRequest(hello=hello),
                ),
            }
            logged = api_log(caplog)
        assert answers == dict.fromkeys(answers, UNAVAILABLE)
        assert logged == [("WARNING", False)] * len(answers), caplog.text
        # Back: the same token is checked and the call answered.
        listed = await plane.control.ListRuns(pb.ListRunsRequest(), metadata=bearer(admin))
        assert [r.id for r in listed.runs] == [run.id]
    finally:
        await agent.close()


async def next_message(call: Any, kind: str) -> Any:
    """The next message of ``kind`` on a bidirectional call (the server's heartbeats skipped).

    The stream tests below drive their calls directly and send no heartbeats of their own: a
    client write racing the server's end of the call can make gRPC's client report INTERNAL
    instead of the server's status (grpc/grpc#36066).
    """
    async with asyncio.timeout(RECEIVE_TIMEOUT):
        while True:
            message = await call.read()
            assert message is not grpc.aio.EOF, f"the stream ended before its {kind}"
            got = message.WhichOneof("message")
            if got == kind:
                return getattr(message, kind)
            assert got == "heartbeat", f"expected {kind}, got {message}"


async def end_of(call: Any) -> grpc.aio.AioRpcError:
    """The status a bidirectional call ends with, after the messages it still gets."""
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        async with asyncio.timeout(RECEIVE_TIMEOUT):
            while await call.read() is not grpc.aio.EOF:
                pass
            raise AssertionError("the stream ended OK")
    return ended.value


async def test_an_engine_stream_the_database_fails_under_ends_unavailable_and_resumes(
    outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    plane = outage.plane
    agent, running, run_id, token = await drive_to_running(plane)
    await running.close()
    batch = engine_pb2.ReportRequest(
        log_batch=engine_pb2.LogBatch(
            lines=[types_pb2.LogLine(seq=seq, text=f"line {seq}") for seq in (1, 2, 3)]
        )
    )
    engine = plane.engines.Report(metadata=bearer(token))
    again = None
    try:
        await engine.write(engine_pb2.ReportRequest(open=engine_pb2.Open(run_id=run_id, attempt=1)))
        await next_message(engine, "opened")
        with outage.down():
            caplog.clear()
            await engine.write(batch)
            ended = await end_of(engine)
            logged = api_log(caplog)
        assert answer(ended) == UNAVAILABLE, ended
        assert logged == [("WARNING", False)], caplog.text
        # The engine reconnects and sends its lines again: they are stored once.
        again = engine_stream(plane, run_id, 1, token)
        assert (await again.receive("opened")).stored_seq == 0
        again.send(batch)
        assert (await again.receive("log_ack")).stored_seq == 3
        assert plane.count_lines() == 3
    finally:
        engine.cancel()
        for stream in (again, agent):
            if stream is not None:
                await stream.close()


async def test_an_agent_stream_whose_report_the_database_cannot_store_ends_unavailable(
    outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    plane = outage.plane
    hello = agent_pb2.Hello(agent_name="agent-1", pool="pool-a", capacity=1, runtime="process")
    agent = plane.agents.Connect()
    again = None
    try:
        await agent.write(agent_pb2.ConnectRequest(hello=hello))
        await next_message(agent, "welcome")
        run = await plane.run()
        assert (await next_message(agent, "assign")).run_id == run.id
        with outage.down():
            caplog.clear()
            await agent.write(
                agent_pb2.ConnectRequest(accepted=agent_pb2.Accepted(run_id=run.id, attempt=1))
            )
            ended = await end_of(agent)
            logged = api_log(caplog)
        assert answer(ended) == UNAVAILABLE, ended
        assert logged == [("WARNING", False)], caplog.text
        # The agent reconnects, under the same name.
        again = agent_stream(plane)
        await again.receive("welcome")
    finally:
        agent.cancel()
        if again is not None:
            await again.close()


async def test_http_requests_whose_token_the_database_cannot_check_are_unavailable(
    postgres_outage: Outage,
) -> None:
    plane = postgres_outage.plane
    http = plane.app.http
    assert http is not None
    admin = (
        await plane.control.CreateToken(
            pb.CreateTokenRequest(kind=pb.TOKEN_KIND_ADMIN, description="outage")
        )
    ).token
    run = await plane.run()
    headers = {"Authorization": f"Bearer {admin}"}
    cookie = {"Cookie": f"flowyard_session={admin}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http.port}") as client:
        with postgres_outage.down():
            answers = {
                "API": await client.get("/api/v1/runs", headers=headers),
                "events": await client.get("/api/v1/events", headers=headers),
                "run events": await client.get(f"/api/v1/runs/{run.id}/events", headers=headers),
                "log download": await client.get(f"/runs/{run.id}/logs.txt", headers=headers),
                "page": await client.get("/runs", headers=cookie),
                "login": await client.post("/login", data={"token": admin}),
            }
        statuses = {
            what: (got.status_code, got.headers.get("retry-after"), RETRY_HINT in got.text)
            for what, got in answers.items()
        }
        assert statuses == dict.fromkeys(answers, (503, "1", True))
        assert answers["API"].json()["error"]["status"] == "UNAVAILABLE"
        # Back: the same token is checked and the request answered.
        listed = await client.get("/api/v1/runs", headers=headers)
        assert listed.status_code == 200, listed.text


async def test_a_database_error_names_the_statement_but_never_its_values(plane: Plane) -> None:
    # What fails in the database is logged; the values bound to it may be secrets (job
    # variables, parameters) and stay out.
    with pytest.raises(Exception) as failed:
        async with plane.app.db.write() as conn:
            await conn.execute(
                text("INSERT INTO no_such_table (x) VALUES (:x)"), {"x": "hunter2-secret"}
            )
    assert "no_such_table" in str(failed.value)
    assert "hunter2-secret" not in str(failed.value)


async def test_engines_are_not_judged_silent_for_the_time_the_database_was_away(
    outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    plane = outage.plane
    agent, engine, run_id, _ = await drive_to_running(plane)
    grace = timedelta(seconds=1)
    reap = Reaper(
        plane.app.db,
        plane.app.agents,
        Notifier(plane.app.bus),
        LivenessPolicy(engine_grace=grace),
        started_at=clock.now() - timedelta(hours=1),
    )
    caplog.set_level(logging.WARNING, logger="control_plane.orchestration.liveness")
    sweeping = asyncio.create_task(reap.run())
    heard = clock.now()
    with outage.down():
        # Longer than the grace: the engine's heartbeats could not have been stored.
        await eventually(
            lambda: clock.now() - heard > grace and "liveness sweep failed" in caplog.text,
            what="a sweep that found the database away, past the grace",
        )
        await cancel_and_wait([sweeping])
    # The first sweep once it is back judges no engine by the time it was away...
    assert await reap.sweep_once() == []
    assert (await plane.get(run_id)).run.state.type == types_pb2.STATE_TYPE_RUNNING
    # ...and an engine that is then gone for the grace is crashed as ever.
    await engine.close()
    await eventually(
        lambda: _crashed_by(reap, plane, run_id), what="the silent engine's run CRASHED"
    )
    await agent.close()


async def _crashed_by(reap: Reaper, plane: Plane, run_id: str) -> bool:
    await reap.sweep_once()
    return (await plane.get(run_id)).run.state.type == types_pb2.STATE_TYPE_CRASHED
