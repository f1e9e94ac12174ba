"""The reaper's rules against a real server: silent engines, late runs, stuck cancels."""

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from control_plane.orchestration import clock
from control_plane.orchestration.changes import Notifier
from control_plane.orchestration.liveness import BATCH, LivenessPolicy, Reaper
from flowyard.v1 import agent_pb2, engine_pb2, types_pb2
from flowyard.v1 import control_plane_pb2 as pb
from tests import waiting
from tests.stores import row_where

from .conftest import Plane, Stream, agent_stream, drive_to_running

S = types_pb2
LONG_AGO = clock.now() - timedelta(hours=1)


def last_heartbeat(plane: Plane, run_id: str) -> object:
    row = row_where(plane.data_dir, plane.db_url, "flow_runs", "id", run_id, "last_heartbeat_at")
    assert row is not None
    return row[0]


def reaper(plane: Plane, started_long_ago: bool = True, **policy: float) -> Reaper:
    notifier = Notifier(plane.app.bus)
    return Reaper(
        plane.app.db,
        plane.app.agents,
        notifier,
        LivenessPolicy(**{k: timedelta(seconds=v) for k, v in policy.items()}),
        started_at=LONG_AGO if started_long_ago else clock.now(),
    )


async def sweep_until(
    plane: Plane,
    reap: Reaper,
    run_id: str,
    done: Callable[[types_pb2.FlowRun], bool],
    within: float = 10,
) -> types_pb2.FlowRun:
    deadline = time.monotonic() + within
    while True:
        await reap.sweep_once()
        run = (await plane.get(run_id)).run
        if done(run):
            return run
        assert time.monotonic() < deadline, f"run still {run.state}"
        await asyncio.sleep(0.1)


async def test_a_silent_engine_crashes_its_run(ready: Plane) -> None:
    agent, engine, run_id, _ = await drive_to_running(ready)
    await engine.close()  # the engine is gone: no more heartbeats
    reap = reaper(ready, engine_grace=0.5)
    run = await sweep_until(ready, reap, run_id, lambda r: r.state.type == S.STATE_TYPE_CRASHED)
    assert "The engine stopped reporting: last heartbeat" in run.state.message
    await agent.close()


async def test_an_engine_that_heartbeats_keeps_its_run_even_without_its_agent(ready: Plane) -> None:
    agent, engine, run_id, _ = await drive_to_running(ready)
    await agent.close()  # disconnected is not lost
    reap = reaper(ready, engine_grace=1.0)
    # For longer than the grace, sweep right after each heartbeat is stored (not after a
    # sleep, which a busy machine can stretch past the grace between two beats).
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        before = last_heartbeat(ready, run_id)
        engine.send(engine_pb2.ReportRequest(heartbeat=engine_pb2.EngineHeartbeat()))
        await waiting.eventually(
            lambda seen=before: last_heartbeat(ready, run_id) != seen, what="the heartbeat stored"
        )
        assert not await reap.sweep_once()
        await asyncio.sleep(0.2)
    assert (await ready.get(run_id)).run.state.type == S.STATE_TYPE_RUNNING
    await engine.close()


async def test_a_restarted_control_plane_gives_engines_time_to_come_back(ready: Plane) -> None:
    agent, engine, run_id, _ = await drive_to_running(ready)
    await engine.close()
    await asyncio.sleep(0.3)
    reap = reaper(ready, started_long_ago=False, engine_grace=0.2)
    assert not await reap.sweep_once()  # up for less than the grace: nobody is judged yet
    assert (await ready.get(run_id)).run.state.type == S.STATE_TYPE_RUNNING
    await agent.close()


async def test_an_undispatched_run_is_marked_late_and_stays_dispatchable(ready: Plane) -> None:
    run = await ready.run()
    reap = reaper(ready, late_after=0.2)
    late = await sweep_until(ready, reap, run.id, lambda r: r.state.name == "Late")
    assert late.state.type == S.STATE_TYPE_SCHEDULED
    assert "not yet dispatched: no agent of pool 'pool-a' is connected" in late.state.message
    before = len((await ready.get(run.id)).history)
    await reap.sweep_once()  # Late is not marked twice
    assert len((await ready.get(run.id)).history) == before
    agent = agent_stream(ready, capacity=1)
    await agent.receive("welcome")
    assert (await agent.receive("assign")).run_id == run.id
    await agent.close()


async def test_a_late_run_says_why_it_waits(ready: Plane) -> None:
    agent = agent_stream(ready, capacity=1)
    await agent.receive("welcome")
    await ready.control.UpdatePool(pb.UpdatePoolRequest(name="pool-a", paused=True))
    run = await ready.run()
    reap = reaper(ready, late_after=0.2)
    late = await sweep_until(ready, reap, run.id, lambda r: r.state.name == "Late")
    assert "pool 'pool-a' is paused (flowyard pool set pool-a --resume)" in late.state.message
    await agent.close()


async def test_a_stuck_cancel_is_forced_and_the_agent_told_again(ready: Plane) -> None:
    agent, engine, run_id, _ = await drive_to_running(ready)
    await ready.control.CancelRun(pb.CancelRunRequest(run_id=run_id, reason="stop"))
    assert (await agent.receive("cancel")).run_id == run_id  # ...and the agent never answers
    reap = reaper(ready, cancelling_timeout=0.3)
    run = await sweep_until(ready, reap, run_id, lambda r: r.state.type == S.STATE_TYPE_CANCELLED)
    assert "forced" in run.state.message and "stop" in run.state.message
    assert (await agent.receive("cancel")).run_id == run_id
    await engine.close()
    await agent.close()


async def test_reaper_task_runs_and_stops(ready: Plane) -> None:
    reap = reaper(ready, late_after=0.1)
    run = await ready.run()
    task = asyncio.create_task(reap.run(), name="test-reaper")
    try:
        await asyncio.wait_for(_until_late(ready, run.id), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _until_late(plane: Plane, run_id: str) -> None:
    # This reaper is not wired to the server's notifications, so read until it shows.
    while (await plane.get(run_id)).run.state.name != "Late":  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def _submitted(plane: Plane) -> tuple[Stream, str]:
    """A run submitted by an agent, whose engine never reports."""
    agent = agent_stream(plane, capacity=1)
    await agent.receive("welcome")
    run = await plane.run()
    await agent.receive("assign")
    agent.send(agent_pb2.ConnectRequest(accepted=agent_pb2.Accepted(run_id=run.id, attempt=1)))
    agent.send(
        agent_pb2.ConnectRequest(
            submitted=agent_pb2.Submitted(run_id=run.id, attempt=1, infrastructure_id="k/ns/j")
        )
    )
    deadline = time.monotonic() + 10
    while (await plane.get(run.id)).run.state.name != "Submitted":
        assert time.monotonic() < deadline, "the run never became Submitted"
        await asyncio.sleep(0.02)
    return agent, run.id


async def test_a_submitted_run_whose_agent_stays_gone_crashes(ready: Plane) -> None:
    agent, run_id = await _submitted(ready)
    await agent.close()  # the node is gone: the agent and the pod it started
    reap = reaper(ready, agent_grace=0.3)
    run = await sweep_until(ready, reap, run_id, lambda r: r.state.type == S.STATE_TYPE_CRASHED)
    assert "has been gone for over 0.3 s and its engine never reported" in run.state.message
    assert "(Submitted)" in run.state.message


async def test_a_submitted_run_of_a_connected_agent_is_left_to_it(ready: Plane) -> None:
    agent, run_id = await _submitted(ready)
    await asyncio.sleep(0.5)  # quiet for longer than the grace, as a slow image pull is
    reap = reaper(ready, agent_grace=0.3)
    assert not await reap.sweep_once()
    assert (await ready.get(run_id)).run.state.name == "Submitted"
    await agent.close()
    # Gone just now: the agent gets the grace to come back before anyone judges the run.
    assert not await reap.sweep_once()
    assert (await ready.get(run_id)).run.state.name == "Submitted"


async def test_a_restarted_control_plane_gives_agents_time_to_come_back(ready: Plane) -> None:
    agent, run_id = await _submitted(ready)
    await agent.close()
    await asyncio.sleep(0.5)
    reap = reaper(ready, started_long_ago=False, agent_grace=0.3)
    assert not await reap.sweep_once()  # up for less than the grace
    assert (await ready.get(run_id)).run.state.name == "Submitted"


async def test_a_backlog_larger_than_a_batch_is_marked_late_in_one_sweep(ready: Plane) -> None:
    due = Timestamp()
    due.FromDatetime(LONG_AGO)
    request = pb.CreateRunRequest(
        deployment_name="hello", parameters_json='{"name": "x"}', scheduled_time=due
    )
    created = await asyncio.gather(
        *(ready.control.CreateRun(request) for _ in range(3 * BATCH + 10))
    )
    await reaper(ready, late_after=60).sweep_once()
    # Every run of the backlog is Late after the one sweep (the server's own reaper may have
    # marked some of them first).
    listed = await ready.control.ListRuns(
        pb.ListRunsRequest(deployment_name="hello", page_size=500)
    )
    assert sorted(run.id for run in listed.runs) == sorted(c.run.id for c in created)
    assert {run.state.name for run in listed.runs} == {"Late"}
