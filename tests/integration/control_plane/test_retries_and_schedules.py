"""Retries as new attempts, and the scheduler, through the real API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from control_plane.config import ServerConfig
from control_plane.server import build
from flowyard.v1 import agent_pb2, control_plane_pb2, engine_pb2, types_pb2

from .conftest import Plane, agent_stream, assigned, connect, engine_stream
from .test_queues_and_limits import eventually


async def with_fields(plane: Plane, name: str = "hello", **fields: object) -> types_pb2.Deployment:
    deployment = await plane.deployment(name)
    for key, value in fields.items():
        if key == "schedules":
            del deployment.schedules[:]
            deployment.schedules.extend(value)  # type: ignore[arg-type]
        else:
            setattr(deployment, key, value)
    response = await plane.control.UpsertDeployment(
        control_plane_pb2.UpsertDeploymentRequest(deployment=deployment)
    )
    return response.deployment


async def fail_attempt(plane: Plane, run_id: str, attempt: int, token: str) -> bool:
    engine = engine_stream(plane, run_id, attempt, token)
    await engine.receive("opened")
    for kind, tid in ((types_pb2.STATE_TYPE_RUNNING, "run"), (types_pb2.STATE_TYPE_FAILED, "f")):
        engine.send(
            engine_pb2.ReportRequest(
                propose_state=engine_pb2.ProposeState(
                    transition_id=f"{tid}-{attempt}", type=kind, message="ValueError: boom"
                )
            )
        )
        result = await engine.receive("state_result")
        assert result.accepted, result.reason
    await engine.close()
    return True


async def test_a_failed_attempt_with_retries_left_runs_again_as_a_new_attempt(
    ready: Plane,
) -> None:
    await with_fields(ready, retries=1, retry_delay_seconds=1)
    agent = agent_stream(ready, capacity=2)
    await agent.receive("welcome")
    run = await ready.run()
    assert run.max_retries == 1
    first = await agent.receive("assign")
    assert first.attempt == 1
    await fail_attempt(ready, run.id, 1, first.engine_token)

    retried = (await ready.get(run.id)).run
    assert retried.state.type == types_pb2.STATE_TYPE_SCHEDULED
    assert retried.state.name == "AwaitingRetry"
    assert retried.attempt == 2
    assert "Attempt 1 failed: ValueError: boom; retry 1 of 1" in retried.state.message
    delay = retried.scheduled_time.ToDatetime() - retried.state.timestamp.ToDatetime()
    assert timedelta(seconds=0.9) <= delay <= timedelta(seconds=1.1)

    # The failed attempt's token expired with its attempt.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ready.engines.StartRun(
            engine_pb2.StartRunRequest(run_id=run.id, attempt=1),
            metadata=(("authorization", f"Bearer {first.engine_token}"),),
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expire with their run attempt" in (caught.value.details() or "")

    second = await agent.receive("assign")
    assert (second.run_id, second.attempt) == (run.id, 2)
    assert second.engine_token != first.engine_token
    await fail_attempt(ready, run.id, 2, second.engine_token)
    response = await ready.get(run.id)
    assert response.run.state.type == types_pb2.STATE_TYPE_FAILED
    assert response.run.attempt == 2
    ends = [(h.attempt, h.type) for h in response.history if h.type == types_pb2.STATE_TYPE_FAILED]
    assert ends == [(1, types_pb2.STATE_TYPE_FAILED), (2, types_pb2.STATE_TYPE_FAILED)]
    await agent.close()


@pytest.mark.short_lease
async def test_a_handed_back_attempt_uses_no_retry(ready: Plane) -> None:
    await with_fields(ready, retries=1)
    silent = agent_stream(ready, capacity=1, name="silent")
    await silent.receive("welcome")
    run = await ready.run()
    await silent.receive("assign")
    # Never accepted: the lease (1.5 s) hands attempt 1 back; the run waits as attempt 2.
    await ready.wait_state(run.id, types_pb2.STATE_TYPE_SCHEDULED, wait=5)
    await silent.close()
    agent = agent_stream(ready, capacity=1, name="taker")
    await agent.receive("welcome")
    second = await agent.receive("assign")
    assert second.attempt == 2
    await fail_attempt(ready, run.id, 2, second.engine_token)
    # The first failure, on the second attempt: its one retry is still there.
    retried = (await ready.get(run.id)).run
    assert (retried.state.name, retried.attempt) == ("AwaitingRetry", 3)
    assert "Attempt 2 failed: ValueError: boom; retry 1 of 1" in retried.state.message
    await agent.close()
    agent = agent_stream(ready, capacity=1, name="last")
    await agent.receive("welcome")
    third = await agent.receive("assign", wait=10)
    assert third.attempt == 3
    await fail_attempt(ready, run.id, 3, third.engine_token)
    ended = (await ready.get(run.id)).run
    assert (ended.state.type, ended.attempt) == (types_pb2.STATE_TYPE_FAILED, 3)
    await agent.close()


async def test_a_repeated_failed_report_gets_the_same_answer(ready: Plane) -> None:
    await with_fields(ready, retries=3)
    agent, run, assign = await assigned(ready)
    engine = engine_stream(ready, run.id, 1, assign.engine_token)
    await engine.receive("opened")
    proposal = engine_pb2.ProposeState(
        transition_id="fail-1", type=types_pb2.STATE_TYPE_FAILED, message="boom"
    )
    for _ in range(2):
        engine.send(engine_pb2.ReportRequest(propose_state=proposal))
        result = await engine.receive("state_result")
        assert result.accepted
    assert (await ready.get(run.id)).run.attempt == 2
    await engine.close()
    await agent.close()


INTERVAL = types_pb2.Schedule(
    name="often",
    interval=types_pb2.IntervalSchedule(seconds=600),
    parameters_json='{"name": "scheduled"}',
)


async def scheduled(plane: Plane, schedule: str = "often") -> list[types_pb2.FlowRun]:
    response = await plane.control.ListRuns(
        control_plane_pb2.ListRunsRequest(
            deployment_name="hello", schedule_name=schedule, page_size=500
        )
    )
    return list(response.runs)


async def test_a_schedule_creates_runs_ahead_and_a_restart_creates_no_duplicates(
    tmp_path: Path, db_url: str | None
) -> None:
    config = ServerConfig(port=0, data_dir=tmp_path, db_url=db_url)
    app = await build(config)
    await app.start()
    plane = connect(app, tmp_path)
    await plane.pool()
    await with_fields(plane, schedules=[INTERVAL], parameters_json='{"name": "scheduled"}')
    # Every 10 minutes, one hour ahead: 6 or 7 runs, depending on where "now" falls.
    runs = await eventually(lambda: _at_least(plane, 6), "runs ahead")
    keys = {r.idempotency_key for r in runs}
    assert len(keys) == len(runs)
    assert all(r.schedule_name == "often" and r.queue == "default" for r in runs)
    assert all(r.state.name == "Scheduled" for r in runs)
    await plane.channel.close()
    await app.stop(0.5)

    again = await build(config)
    await again.start()
    plane = connect(again, tmp_path)
    await again.scheduler.schedule_once()
    after = await scheduled(plane)
    assert {r.idempotency_key for r in after} >= keys
    assert len(after) - len(runs) <= 1  # at most one new firing entered the hour meanwhile
    assert len({r.idempotency_key for r in after}) == len(after)
    await plane.channel.close()
    await again.stop(0.5)


async def _at_least(plane: Plane, count: int) -> list[types_pb2.FlowRun] | None:
    runs = await scheduled(plane)
    return runs if len(runs) >= count else None


async def test_pausing_removes_future_runs_and_resuming_creates_them_again(
    ready: Plane,
) -> None:
    nightly = types_pb2.Schedule(
        name="nightly",
        cron=types_pb2.CronSchedule(expression="0 2 * * *", timezone="Asia/Tokyo"),
        parameters_json='{"name": "night"}',
    )
    await with_fields(ready, schedules=[INTERVAL, nightly])
    await eventually(lambda: _at_least(ready, 6), "interval runs")
    await eventually(lambda: _count(ready, "nightly", 3), "nightly runs")

    await ready.control.PauseDeployment(
        control_plane_pb2.PauseDeploymentRequest(name="hello", schedule_name="often", paused=True)
    )
    assert await scheduled(ready, "often") == []
    assert len(await scheduled(ready, "nightly")) == 3
    listed = await ready.control.ListSchedules(
        control_plane_pb2.ListSchedulesRequest(deployment_name="hello", upcoming=2)
    )
    by_name = {s.schedule.name: s for s in listed.schedules}
    assert by_name["often"].schedule.paused and not by_name["often"].next_times
    assert len(by_name["nightly"].next_times) == 2
    assert len(by_name["nightly"].scheduled_runs) == 3
    nightly_local = by_name["nightly"].next_times[0].ToDatetime()
    assert (nightly_local.hour, nightly_local.minute) == (17, 0)  # 02:00 in Tokyo (UTC+9)

    await ready.control.PauseDeployment(
        control_plane_pb2.PauseDeploymentRequest(name="hello", paused=True)
    )
    assert await scheduled(ready, "nightly") == []
    await ready.control.PauseDeployment(
        control_plane_pb2.PauseDeploymentRequest(name="hello", paused=False)
    )
    await ready.control.PauseDeployment(
        control_plane_pb2.PauseDeploymentRequest(name="hello", schedule_name="often", paused=False)
    )
    await eventually(lambda: _at_least(ready, 6), "interval runs again")
    await eventually(lambda: _count(ready, "nightly", 3), "nightly runs again")


async def _count(plane: Plane, schedule: str, count: int) -> bool:
    return len(await scheduled(plane, schedule)) == count


async def test_changing_a_schedule_replaces_its_future_runs(ready: Plane) -> None:
    await with_fields(ready, schedules=[INTERVAL])
    before = {r.id for r in await eventually(lambda: _at_least(ready, 6), "runs")}
    hourly = types_pb2.Schedule(
        name="often",
        interval=types_pb2.IntervalSchedule(seconds=3600),
        parameters_json='{"name": "hourly"}',
    )
    await with_fields(ready, schedules=[hourly])
    runs = await eventually(lambda: _exactly(ready, 3), "hourly runs")
    assert not before & {r.id for r in runs}


async def _exactly(plane: Plane, count: int) -> list[types_pb2.FlowRun] | None:
    runs = await scheduled(plane)
    return runs if len(runs) == count else None


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        (types_pb2.Schedule(name="c", cron=types_pb2.CronSchedule(expression="nope")), "'c'"),
        (
            types_pb2.Schedule(
                name="z", cron=types_pb2.CronSchedule(expression="0 * * * *", timezone="Nowhere/X")
            ),
            "not an IANA time zone",
        ),
        (types_pb2.Schedule(name="i", interval=types_pb2.IntervalSchedule(seconds=0)), "'i'"),
        (
            types_pb2.Schedule(name="p", interval=types_pb2.IntervalSchedule(seconds=60)),
            "missing required parameter 'name'",
        ),
    ],
)
async def test_bad_schedules_are_invalid_arguments_naming_the_schedule(
    ready: Plane, schedule: types_pb2.Schedule, expected: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await with_fields(ready, schedules=[schedule])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (caught.value.details() or "")
    stored = await ready.control.GetDeployment(control_plane_pb2.GetDeploymentRequest(name="hello"))
    assert not stored.deployment.schedules


@pytest.fixture
async def late_plane(tmp_path: Path, db_url: str | None) -> AsyncIterator[Plane]:
    config = ServerConfig(port=0, data_dir=tmp_path, db_url=db_url, late_after_seconds=0.2)
    app = await build(config)
    await app.start()
    plane = connect(app, tmp_path)
    yield plane
    await plane.channel.close()
    await asyncio.wait_for(app.stop(0.5), 15)


async def test_scheduled_runs_go_late_and_still_dispatch(late_plane: Plane) -> None:
    plane = late_plane
    await plane.pool()
    every_second = types_pb2.Schedule(
        name="often",
        interval=types_pb2.IntervalSchedule(seconds=1),
        parameters_json='{"name": "s"}',
    )
    await with_fields(plane, schedules=[every_second])

    async def late() -> types_pb2.FlowRun | None:
        runs = await scheduled(plane)
        return next((r for r in runs if r.state.name == "Late"), None)

    await eventually(late, "a Late scheduled run")
    agent = agent_stream(plane, capacity=1)
    await agent.receive("welcome")
    assign = await agent.receive("assign")
    # The oldest due run goes first: it is a Late one, created by the schedule.
    history = (await plane.get(assign.run_id)).history
    assert "Late" in [h.name for h in history]
    assert (await plane.get(assign.run_id)).run.schedule_name == "often"
    agent.send(
        agent_pb2.ConnectRequest(accepted=agent_pb2.Accepted(run_id=assign.run_id, attempt=1))
    )
    await agent.close()


async def test_a_scheduled_deployment_can_be_deleted_with_its_future_runs(ready: Plane) -> None:
    await with_fields(ready, schedules=[INTERVAL])
    await eventually(lambda: _at_least(ready, 6), "runs ahead")
    await ready.control.DeleteDeployment(control_plane_pb2.DeleteDeploymentRequest(name="hello"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ready.control.GetDeployment(control_plane_pb2.GetDeploymentRequest(name="hello"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
