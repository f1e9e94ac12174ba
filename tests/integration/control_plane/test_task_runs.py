"""Task runs: reported as events on the engine's log lines, folded into one row per task run,
ended with the run's attempt, and listed by ListTaskRuns."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import text as text_sql

from control_plane.models import LogRecord, LogStream, TaskRunEvent, TaskRunState
from control_plane.states import Actor, State, StateType
from control_plane.store import logs as logs_repo
from control_plane.store import runs as runs_repo
from control_plane.store.db import Database
from flowyard.v1 import agent_pb2, control_plane_pb2_grpc, engine_pb2, types_pb2
from flowyard.v1 import control_plane_pb2 as pb

from .conftest import Plane, Stream, drive_to_running, engine_stream
from .test_retries_and_schedules import with_fields

S = types_pb2
INVALID = grpc.StatusCode.INVALID_ARGUMENT
#: Line n is written at BASE + n seconds.
BASE = 1_800_000_000


def at(seq: int) -> Timestamp:
    return Timestamp(seconds=BASE + seq)


def event(
    seq: int,
    task_run_id: str,
    state: S.TaskRunState.ValueType,
    *,
    attempt: int = 1,
    name: str = "",
    task_name: str = "",
    **fields: Any,
) -> S.LogLine:
    """A line announcing a change of task run ``task_run_id`` (named ``<id>`` by default)."""
    name = name or task_run_id
    return S.LogLine(
        seq=seq,
        timestamp=at(seq),
        text=f"{name}: {S.TaskRunState.Name(state)}",
        task_run=name,
        task_run_event=S.TaskRunEvent(
            task_run_id=task_run_id,
            name=name,
            task_name=task_name or name.rsplit("-", 1)[0],
            state=state,
            attempt=attempt,
            **fields,
        ),
    )


def text(seq: int, words: str, task_run: str = "") -> S.LogLine:
    return S.LogLine(seq=seq, timestamp=at(seq), text=words, task_run=task_run)


def batch(*lines: S.LogLine) -> engine_pb2.ReportRequest:
    return engine_pb2.ReportRequest(log_batch=engine_pb2.LogBatch(lines=list(lines)))


async def store(engine: Stream, *lines: S.LogLine) -> int:
    engine.send(batch(*lines))
    return int((await engine.receive("log_ack")).stored_seq)


async def task_runs(plane: Plane, run_id: str, **request: Any) -> list[S.TaskRun]:
    response = await plane.control.ListTaskRuns(pb.ListTaskRunsRequest(run_id=run_id, **request))
    assert response.next_page_token == ""
    return list(response.task_runs)


async def states(plane: Plane, run_id: str) -> dict[str, str]:
    return {t.name: S.TaskRunState.Name(t.state) for t in await task_runs(plane, run_id)}


async def propose(engine: Stream, kind: S.StateType.ValueType, tid: str) -> None:
    engine.send(
        engine_pb2.ReportRequest(
            propose_state=engine_pb2.ProposeState(transition_id=tid, type=kind, message="boom")
        )
    )
    result = await engine.receive("state_result")
    assert result.accepted, result.reason


async def test_events_are_folded_into_task_runs_across_batches(ready: Plane) -> None:
    agent, engine, run_id, _ = await drive_to_running(ready)
    stored = await store(
        engine,
        event(1, "t1", S.TASK_RUN_STATE_RUNNING, name="extract-0", inputs="n=1", tags=["etl"]),
        text(2, "extracting", task_run="extract-0"),
        event(
            3,
            "t1",
            S.TASK_RUN_STATE_RETRYING,
            name="extract-0",
            error_type="ValueError",
            error_message="boom",
        ),
    )
    assert stored == 3
    stored = await store(
        engine,
        event(4, "t1", S.TASK_RUN_STATE_RUNNING, name="extract-0", attempt=2),
        event(5, "t2", S.TASK_RUN_STATE_RUNNING, name="load-0", inputs="rows"),
        event(6, "t1", S.TASK_RUN_STATE_COMPLETED, name="extract-0", attempt=2),
        text(7, "outside any task"),
    )
    assert stored == 7

    extract, load = await task_runs(ready, run_id)
    assert (extract.id, extract.run_id, extract.flow_attempt) == ("t1", run_id, 1)
    assert (extract.name, extract.task_name) == ("extract-0", "extract")
    assert extract.state == S.TASK_RUN_STATE_COMPLETED
    assert extract.attempts == 2
    assert (extract.start_time, extract.end_time) == (at(1), at(6))
    assert (extract.error_type, extract.error_message) == ("ValueError", "boom")
    assert (extract.inputs, list(extract.tags)) == ("n=1", ["etl"])
    assert (load.name, load.state, load.attempts) == ("load-0", S.TASK_RUN_STATE_RUNNING, 1)
    assert load.start_time == at(5) and not load.HasField("end_time")
    assert (load.error_type, load.inputs, list(load.tags)) == ("", "rows", [])
    assert [t.name for t in await task_runs(ready, run_id, task_name="load")] == ["load-0"]

    counts = (await ready.get(run_id)).task_run_counts
    assert dict(counts) == {"TASK_RUN_STATE_COMPLETED": 1, "TASK_RUN_STATE_RUNNING": 1}
    tailed = [
        (line.seq, line.task_run)
        async for message in ready.control.TailLogs(pb.TailLogsRequest(run_id=run_id))
        for line in message.lines
    ]
    assert tailed == [
        (1, "extract-0"),
        (2, "extract-0"),
        (3, "extract-0"),
        (4, "extract-0"),
        (5, "load-0"),
        (6, "extract-0"),
        (7, ""),
    ]

    # The flow ends with load-0 still running: the attempt leaves nothing running.
    await propose(engine, S.STATE_TYPE_COMPLETED, "t-done")
    extract, load = await task_runs(ready, run_id)
    assert extract.state == S.TASK_RUN_STATE_COMPLETED and extract.end_time == at(6)
    assert load.state == S.TASK_RUN_STATE_CRASHED and load.HasField("end_time")
    counts = (await ready.get(run_id)).task_run_counts
    assert dict(counts) == {"TASK_RUN_STATE_COMPLETED": 1, "TASK_RUN_STATE_CRASHED": 1}
    await engine.close()
    await agent.close()


async def test_a_batch_resent_after_a_reconnect_changes_nothing(ready: Plane) -> None:
    agent, engine, run_id, token = await drive_to_running(ready)
    first = [
        event(1, "t1", S.TASK_RUN_STATE_RUNNING, name="extract-0"),
        event(2, "t1", S.TASK_RUN_STATE_COMPLETED, name="extract-0"),
        event(3, "t2", S.TASK_RUN_STATE_RUNNING, name="load-0"),
    ]
    assert await store(engine, *first) == 3
    before = await task_runs(ready, run_id)
    await engine.close()

    # The engine did not see the ack: it reconnects and sends the batch again.
    again = engine_stream(ready, run_id, 1, token)
    assert (await again.receive("opened")).stored_seq == 3
    assert await store(again, *first) == 3
    assert await task_runs(ready, run_id) == before
    assert ready.count_lines() == 3
    assert ready.count_rows("task_runs") == 2
    await again.close()
    await agent.close()


async def test_each_failed_attempt_keeps_its_error_once(ready: Plane) -> None:
    agent, engine, run_id, token = await drive_to_running(ready)

    def failed(seq: int, attempt: int, state: S.TaskRunState.ValueType) -> S.LogLine:
        return event(
            seq,
            "t1",
            state,
            name="fetch-0",
            attempt=attempt,
            error_type="ConnectionError",
            error_message=f"refused {attempt}",
        )

    first = [
        event(1, "t1", S.TASK_RUN_STATE_RUNNING, name="fetch-0"),
        failed(2, 1, S.TASK_RUN_STATE_RETRYING),
    ]
    assert await store(engine, *first) == 2
    await engine.close()
    # Resent after a reconnect, with what came next: the first error is not counted twice.
    again = engine_stream(ready, run_id, 1, token)
    assert (await again.receive("opened")).stored_seq == 2
    later = [
        event(3, "t1", S.TASK_RUN_STATE_RUNNING, name="fetch-0", attempt=2),
        failed(4, 2, S.TASK_RUN_STATE_RETRYING),
        event(5, "t1", S.TASK_RUN_STATE_RUNNING, name="fetch-0", attempt=3),
        event(6, "t1", S.TASK_RUN_STATE_COMPLETED, name="fetch-0", attempt=3),
    ]
    assert await store(again, *first, *later[:2]) == 4
    assert await store(again, *later[2:]) == 6
    (fetch,) = await task_runs(ready, run_id)
    assert (fetch.state, fetch.attempts) == (S.TASK_RUN_STATE_COMPLETED, 3)
    assert dict(fetch.attempt_errors) == {
        1: "ConnectionError: refused 1",
        2: "ConnectionError: refused 2",
    }
    await again.close()
    await agent.close()


async def test_an_older_event_after_a_newer_one_does_not_move_a_task_run_back(
    ready: Plane,
) -> None:
    agent, engine, run_id, token = await drive_to_running(ready)
    # A second stream of the same attempt (the engine reconnected while the first one was
    # still open): both continue from seq 0.
    second = engine_stream(ready, run_id, 1, token)
    assert (await second.receive("opened")).stored_seq == 0
    running = event(1, "t1", S.TASK_RUN_STATE_RUNNING, name="extract-0")
    retrying = event(
        2, "t1", S.TASK_RUN_STATE_RETRYING, name="extract-0", error_type="E", error_message="e"
    )
    again = event(3, "t1", S.TASK_RUN_STATE_RUNNING, name="extract-0", attempt=2)
    assert await store(second, running, retrying, again) == 3
    # The first stream resends what it sent before the reconnect.
    assert await store(engine, running, retrying) == 2
    (extract,) = await task_runs(ready, run_id)
    assert (extract.state, extract.attempts) == (S.TASK_RUN_STATE_RUNNING, 2)
    assert (extract.error_type, extract.error_message) == ("E", "e")
    assert ready.count_lines() == 3
    await second.close()
    await engine.close()
    await agent.close()


async def test_the_store_applies_only_newer_events(ready: Plane) -> None:
    """The rule the upsert enforces itself, whatever reaches it and in whatever order."""
    run_id = (await ready.run()).id
    url = ready.db_url or f"sqlite+aiosqlite:///{ready.data_dir / 'flowyard.db'}"
    db = await Database.open(url)

    def line(seq: int, state: TaskRunState, attempt: int, **fields: Any) -> LogRecord:
        return LogRecord(
            run_id,
            1,
            seq,
            datetime.fromtimestamp(BASE + seq, UTC),
            20,
            LogStream.LOGGER,
            "flow",
            state.value,
            task_run="extract-0",
            task_run_event=TaskRunEvent("t1", "extract-0", "extract", state, attempt, **fields),
        )

    async def write(*lines: LogRecord) -> None:
        async with db.write() as conn:
            await logs_repo.insert_lines(conn, [lines], db.dialect)

    try:
        older = [
            line(1, TaskRunState.RUNNING, 1, inputs="n=1"),
            line(2, TaskRunState.RETRYING, 1, error_type="E"),
        ]
        newer = [line(3, TaskRunState.RUNNING, 2), line(4, TaskRunState.COMPLETED, 2)]
        await write(*older)
        await write(*newer)
        await write(*older)  # resent after the newer batch
        await write(*older, *newer)  # both again, in one batch
        (extract,) = await task_runs(ready, run_id)
        assert (extract.state, extract.attempts) == (S.TASK_RUN_STATE_COMPLETED, 2)
        assert (extract.start_time, extract.end_time) == (at(1), at(4))
        assert (extract.error_type, extract.inputs) == ("E", "n=1")
        # A finished task run is final: a later event does not reopen it.
        await write(line(5, TaskRunState.RUNNING, 3))
        (extract,) = await task_runs(ready, run_id)
        assert (extract.state, extract.attempts) == (S.TASK_RUN_STATE_COMPLETED, 2)
    finally:
        await db.close()


async def test_an_engine_that_dies_leaves_its_running_task_runs_crashed(ready: Plane) -> None:
    agent, engine, run_id, _ = await drive_to_running(ready)
    await store(
        engine,
        event(1, "t1", S.TASK_RUN_STATE_RUNNING, name="a-0"),
        event(2, "t1", S.TASK_RUN_STATE_COMPLETED, name="a-0"),
        event(3, "t2", S.TASK_RUN_STATE_RUNNING, name="b-0"),
        event(4, "t3", S.TASK_RUN_STATE_RUNNING, name="c-0"),
        event(5, "t3", S.TASK_RUN_STATE_RETRYING, name="c-0"),
    )
    await engine.close()
    agent.send(
        agent_pb2.ConnectRequest(
            infra_event=agent_pb2.InfraEvent(
                run_id=run_id, attempt=1, kind=agent_pb2.INFRA_EVENT_KIND_FAILED, exit_code=137
            )
        )
    )
    await ready.wait_state(run_id, S.STATE_TYPE_CRASHED)
    listed = await task_runs(ready, run_id)
    assert {t.name: S.TaskRunState.Name(t.state) for t in listed} == {
        "a-0": "TASK_RUN_STATE_COMPLETED",
        "b-0": "TASK_RUN_STATE_CRASHED",
        "c-0": "TASK_RUN_STATE_CRASHED",
    }
    assert all(t.HasField("end_time") for t in listed)
    await agent.close()


async def test_a_cancelled_run_leaves_its_running_task_runs_cancelled(ready: Plane) -> None:
    agent, engine, run_id, _ = await drive_to_running(ready)
    await store(
        engine,
        event(1, "t1", S.TASK_RUN_STATE_RUNNING, name="a-0"),
        event(2, "t2", S.TASK_RUN_STATE_RUNNING, name="b-0"),
        event(3, "t2", S.TASK_RUN_STATE_FAILED, name="b-0", error_type="E"),
    )
    await ready.control.CancelRun(pb.CancelRunRequest(run_id=run_id, reason="enough"))
    await agent.receive("cancel")
    # CANCELLING is not the end: the task runs may still be finishing.
    assert await states(ready, run_id) == {
        "a-0": "TASK_RUN_STATE_RUNNING",
        "b-0": "TASK_RUN_STATE_FAILED",
    }
    agent.send(agent_pb2.ConnectRequest(cancelled=agent_pb2.Cancelled(run_id=run_id, attempt=1)))
    await ready.wait_state(run_id, S.STATE_TYPE_CANCELLED)
    assert await states(ready, run_id) == {
        "a-0": "TASK_RUN_STATE_CANCELLED",
        "b-0": "TASK_RUN_STATE_FAILED",
    }
    await engine.close()
    await agent.close()


async def test_a_retried_attempt_leaves_its_task_runs_crashed(ready: Plane) -> None:
    await with_fields(ready, retries=1, retry_delay_seconds=3600)
    agent, engine, run_id, _ = await drive_to_running(ready)
    await store(engine, event(1, "t1", S.TASK_RUN_STATE_RUNNING, name="a-0"))
    await propose(engine, S.STATE_TYPE_FAILED, "t-failed")
    run = (await ready.get(run_id)).run
    assert (run.state.name, run.attempt) == ("AwaitingRetry", 2)
    (crashed,) = await task_runs(ready, run_id)
    assert (crashed.flow_attempt, crashed.state) == (1, S.TASK_RUN_STATE_CRASHED)
    await engine.close()
    await agent.close()


async def test_task_runs_are_listed_page_by_page_in_the_order_they_started(
    ready: Plane,
) -> None:
    agent, engine, run_id, _ = await drive_to_running(ready)
    # Ids that do not sort like the order of the calls: the order is the seqs'.
    lines = [
        event(n + 1, f"id-{25 - n:02d}", S.TASK_RUN_STATE_RUNNING, name=f"{'ab'[n % 2]}-{n}")
        for n in range(25)
    ]
    assert await store(engine, *lines) == 25
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        response = await ready.control.ListTaskRuns(
            pb.ListTaskRunsRequest(run_id=run_id, page_size=10, page_token=token)
        )
        pages += 1
        seen += [t.name for t in response.task_runs]
        token = response.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == [f"{'ab'[n % 2]}-{n}" for n in range(25)]
    only_b = [t.name for t in await task_runs(ready, run_id, task_name="b")]
    assert only_b == [f"b-{n}" for n in range(1, 25, 2)]
    await engine.close()
    await agent.close()


@pytest.mark.parametrize(
    ("request_fields", "code", "words"),
    [
        ({"run_id": ""}, INVALID, "run_id"),
        ({"run_id": "0" * 32}, grpc.StatusCode.NOT_FOUND, "not found"),
        ({"page_size": -1}, INVALID, "page_size"),
        ({"page_size": 10_001}, INVALID, "page_size"),
        ({"page_token": "not a token"}, INVALID, "page_token"),
        ({"page_token": "MToy"}, INVALID, "page_token"),  # "1:2": no id
        ({"task_name": "x" * 201}, INVALID, "task_name"),
    ],
)
async def test_list_task_runs_refuses_bad_requests(
    ready: Plane, request_fields: dict[str, Any], code: grpc.StatusCode, words: str
) -> None:
    run_id = (await ready.run()).id
    request = pb.ListTaskRunsRequest(run_id=run_id)
    for key, value in request_fields.items():
        setattr(request, key, value)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await ready.control.ListTaskRuns(request)
    assert error.value.code() == code
    assert words in (error.value.details() or "")


async def test_list_task_runs_needs_an_admin_token(ready: Plane) -> None:
    agent, engine, run_id, token = await drive_to_running(ready)
    request = pb.ListTaskRunsRequest(run_id=run_id)
    async with grpc.aio.insecure_channel(ready.address) as bare:
        stub = control_plane_pb2_grpc.ControlPlaneServiceStub(bare)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.ListTaskRuns(request)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.ListTaskRuns(request, metadata=(("authorization", f"Bearer {token}"),))
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await engine.close()
    await agent.close()


def _bad(**fields: Any) -> S.LogLine:
    good: dict[str, Any] = {
        "task_run_id": "t1",
        "name": "a-0",
        "task_name": "a",
        "state": S.TASK_RUN_STATE_RUNNING,
        "attempt": 1,
    }
    line = fields.pop("line", {})
    return S.LogLine(seq=2, text="x", task_run_event=S.TaskRunEvent(**{**good, **fields}), **line)


BAD_EVENTS = {
    "task_run_event.task_run_id": _bad(task_run_id=""),
    "task_run_event.task_run_id: must be 1 to 64": _bad(task_run_id="t" * 65),
    "task_run_event.name": _bad(name=""),
    "task_run_event.name: must be 1 to 200": _bad(name="n" * 201),
    "task_run_event.task_name": _bad(task_name=""),
    "task_run_event.task_name: must be 1 to 200": _bad(task_name="n" * 201),
    "task_run_event.state: 0 is not": _bad(state=S.TASK_RUN_STATE_UNSPECIFIED),
    "task_run_event.state: TASK_RUN_STATE_CRASHED is set by the control plane": _bad(
        state=S.TASK_RUN_STATE_CRASHED
    ),
    "task_run_event.state: 99 is not": _bad(state=99),
    "task_run_event.attempt: must be 1 or more": _bad(attempt=0),
    ".task_run: longer than 200": _bad(line={"task_run": "r" * 201}),
}


async def test_bad_task_run_events_refuse_the_whole_batch(ready: Plane) -> None:
    agent, engine, run_id, token = await drive_to_running(ready)
    await engine.close()
    good = event(1, "t0", S.TASK_RUN_STATE_RUNNING, name="ok-0")
    for words, bad in BAD_EVENTS.items():
        stream = engine_stream(ready, run_id, 1, token)
        assert (await stream.receive("opened")).stored_seq == 0
        stream.send(batch(good, bad))
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stream.receive("log_ack")
        assert error.value.code() == INVALID, (words, error.value)
        details = error.value.details() or ""
        assert f"log_batch.lines[1]{words}" in details or words in details, (words, details)
        await stream.close()
        assert ready.count_lines() == 0, words
        assert ready.count_rows("task_runs") == 0, words

    # Free text over its bound is cut, not refused.
    stream = engine_stream(ready, run_id, 1, token)
    await stream.receive("opened")
    long = event(
        1,
        "t1",
        S.TASK_RUN_STATE_FAILED,
        name="a-0",
        error_type="E",
        error_message="m" * 5000,
        inputs="i" * 3000,
    )
    assert await store(stream, long) == 1
    (stored,) = await task_runs(ready, run_id)
    assert (len(stored.error_message), len(stored.inputs)) == (4000, 2000)
    await stream.close()
    await agent.close()


async def test_watch_run_sends_task_run_counts_as_they_change(ready: Plane) -> None:
    agent, engine, run_id, _ = await drive_to_running(ready)
    watch = ready.control.WatchRun(pb.WatchRunRequest(run_id=run_id))
    first = await watch.read()
    assert first.run.state.type == S.STATE_TYPE_RUNNING and dict(first.task_run_counts) == {}

    await store(engine, event(1, "t1", S.TASK_RUN_STATE_RUNNING, name="a-0"))
    running = await watch.read()
    assert running.run.state.type == S.STATE_TYPE_RUNNING
    assert dict(running.task_run_counts) == {"TASK_RUN_STATE_RUNNING": 1}

    # A line that changes no task run sends nothing; the next change does.
    await store(engine, text(2, "working"))
    await store(engine, event(3, "t1", S.TASK_RUN_STATE_COMPLETED, name="a-0"))
    done = await watch.read()
    assert dict(done.task_run_counts) == {"TASK_RUN_STATE_COMPLETED": 1}

    await propose(engine, S.STATE_TYPE_COMPLETED, "t-done")
    last = await watch.read()
    assert last.run.state.type == S.STATE_TYPE_COMPLETED
    assert dict(last.task_run_counts) == {"TASK_RUN_STATE_COMPLETED": 1}
    assert await watch.read() == grpc.aio.EOF
    await engine.close()
    await agent.close()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_an_attempt_ending_waits_for_a_batch_that_found_it_live(ready: Plane) -> None:
    """PostgreSQL runs transactions side by side: a batch that found the attempt live holds
    the run until it commits, so the change that ends the attempt comes after it and ends
    the task runs the batch stored (none is left RUNNING under a CRASHED run)."""
    agent, engine, run_id, _ = await drive_to_running(ready)
    assert ready.db_url is not None
    db = await Database.open(ready.db_url)

    async def waiting_on_a_lock() -> int:
        async with db.read() as conn:
            query = text_sql(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return int((await conn.execute(query)).scalar_one())

    async def crash() -> None:
        async with db.write() as conn:
            run = await runs_repo.get_run(conn, run_id)
            assert run is not None
            crashed = State(StateType.CRASHED, message="the engine is gone")
            await runs_repo.compare_and_set(
                conn, run, crashed, actor=Actor.SERVER, now=datetime.now(UTC)
            )

    started = task_run_started(run_id)
    try:
        async with db.write() as batch:
            live = await runs_repo.attempt_states(batch, [run_id])
            assert live[run_id] == (1, StateType.RUNNING)
            ending = asyncio.create_task(crash())
            await until(waiting_on_a_lock, "the attempt's end to wait for the batch")
            assert not ending.done()
            await logs_repo.insert_lines(batch, [[started]], db.dialect)
        await ending
        assert await states(ready, run_id) == {"a-0": "TASK_RUN_STATE_CRASHED"}
    finally:
        await db.close()
        await engine.close()
        await agent.close()


async def test_an_end_read_before_the_first_task_run_still_ends_it(ready: Plane) -> None:
    """Whether a run has task runs is set by the batch of its first one without changing the
    run's version: a change that read the run before that batch still wins its
    compare-and-set, and still ends the task run the batch stored."""
    agent, engine, run_id, _ = await drive_to_running(ready)
    db = ready.app.db
    try:
        async with db.read() as conn:
            before = await runs_repo.get_run(conn, run_id)
        assert before is not None and not before.has_task_runs
        async with db.write() as conn:
            await logs_repo.insert_lines(conn, [[task_run_started(run_id)]], db.dialect)
        async with db.write() as conn:
            crashed = State(StateType.CRASHED, message="the engine is gone")
            ended = await runs_repo.compare_and_set(
                conn, before, crashed, actor=Actor.SERVER, now=datetime.now(UTC)
            )
        assert ended is not None and ended.has_task_runs
        assert await states(ready, run_id) == {"a-0": "TASK_RUN_STATE_CRASHED"}
    finally:
        await engine.close()
        await agent.close()


def task_run_started(run_id: str) -> LogRecord:
    """Line 1 of attempt 1 of ``run_id``: task run ``a-0`` started."""
    return LogRecord(
        run_id,
        1,
        1,
        datetime.fromtimestamp(BASE + 1, UTC),
        20,
        LogStream.SYSTEM,
        "flowyard.tasks",
        "a-0 started",
        task_run="a-0",
        task_run_event=TaskRunEvent("t1", "a-0", "a", TaskRunState.RUNNING, 1),
    )


async def until(condition: Any, what: str, within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
