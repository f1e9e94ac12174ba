"""Several control-plane replicas on one PostgreSQL database.

Each replica is a real control plane (its own gRPC server, dispatcher, scheduler and reaper)
in this test's event loop, all on the same database; the tests talk to each through its own
port. What one replica commits, another must act on: through the database, woken by
``LISTEN/NOTIFY``, never by waiting for a poll (the dispatcher's longest sleep is a minute, so
the deadlines below tell a hint from a poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from control_plane.orchestration.cluster import Singleton
from flowyard.v1 import agent_pb2, engine_pb2, types_pb2
from flowyard.v1 import control_plane_pb2 as pb
from tests.integration.control_plane.conftest import (
    RECEIVE_TIMEOUT,
    Plane,
    Stream,
    agent_stream,
    engine_stream,
    make_ready,
    running_plane,
    submitted,
)
from tests.stores import empty
from tests.waiting import eventually

#: Well under the dispatcher's and the scheduler's longest sleeps: a run that arrives within
#: it was pushed by a hint, not found by a pass that came round by the clock.
HINT_DEADLINE = 5.0


@pytest.fixture
async def replicas(tmp_path: Path, postgres_url: str) -> AsyncIterator[list[Plane]]:
    """Three replicas on one emptied PostgreSQL database, the first with pool-a and hello."""
    empty(postgres_url)
    async with contextlib.AsyncExitStack() as stack:
        planes = await start_replicas(stack, tmp_path, postgres_url, 3)
        await make_ready(planes[0])
        yield planes


async def start_replicas(
    stack: contextlib.AsyncExitStack, tmp_path: Path, postgres_url: str, count: int
) -> list[Plane]:
    """``count`` replicas on ``postgres_url``, each with a data directory of its own. The
    first creates the admin token; the others are handed it, as an operator would."""
    planes = []
    for index in range(count):
        data_dir = tmp_path / f"replica-{index}"
        data_dir.mkdir()
        if planes:
            shutil.copy(planes[0].data_dir / "admin.token", data_dir / "admin.token")
        planes.append(await stack.enter_async_context(running_plane(data_dir, postgres_url)))
    return planes


async def accept_and_submit(agent: Stream, run_id: str) -> agent_pb2.Assign:
    assign = await agent.receive("assign", wait=HINT_DEADLINE)
    assert assign.run_id == run_id
    agent.send(agent_pb2.ConnectRequest(accepted=agent_pb2.Accepted(run_id=run_id, attempt=1)))
    agent.send(
        agent_pb2.ConnectRequest(
            submitted=agent_pb2.Submitted(run_id=run_id, attempt=1, infrastructure_id="process/1")
        )
    )
    return assign


async def running(plane: Plane, run_id: str, token: str) -> Stream:
    """An engine of ``run_id`` streaming to ``plane``, its run RUNNING."""
    await eventually(lambda: submitted(plane, run_id), within=RECEIVE_TIMEOUT, what="Submitted")
    engine = engine_stream(plane, run_id, 1, token)
    await engine.receive("opened")
    engine.send(
        engine_pb2.ReportRequest(
            propose_state=engine_pb2.ProposeState(
                transition_id="t-run", type=types_pb2.STATE_TYPE_RUNNING
            )
        )
    )
    assert (await engine.receive("state_result")).accepted
    return engine


async def test_a_run_created_on_one_replica_is_pushed_to_an_agent_on_another(
    replicas: list[Plane],
) -> None:
    a, b, _ = replicas
    agent = agent_stream(a)
    await agent.receive("welcome")
    # B holds no agent; the run reaches A's agent through A's dispatcher, woken by B's hint.
    run = await b.run()
    assign = await agent.receive("assign", wait=HINT_DEADLINE)
    assert assign.run_id == run.id
    await agent.close()


async def test_every_replica_sees_the_agents_connected_to_any(replicas: list[Plane]) -> None:
    a, b, c = replicas
    agent = agent_stream(a)
    await agent.receive("welcome")
    for plane in (b, c):
        pool = (await plane.control.GetPool(pb.GetPoolRequest(name="pool-a"))).pool
        assert pool.connected_agents == 1
    await agent.close()
    await eventually(
        lambda: _connected(c),
        within=RECEIVE_TIMEOUT,
        what="the departed agent to be gone on every replica",
    )


async def _connected(plane: Plane) -> bool:
    pool = (await plane.control.GetPool(pb.GetPoolRequest(name="pool-a"))).pool
    return pool.connected_agents == 0


async def test_a_second_instance_of_an_agent_is_refused_on_another_replica(
    replicas: list[Plane],
) -> None:
    a, b, _ = replicas
    first = agent_stream(a, instance="one")
    await first.receive("welcome")
    second = agent_stream(b, instance="two")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await second.receive("welcome")
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "already has a connected agent named 'agent-1'" in (refused.value.details() or "")
    await second.close()
    # The same instance back through another replica replaces its stale session there.
    again = agent_stream(b, instance="one")
    await again.receive("welcome")
    with pytest.raises(AssertionError, match="the stream ended"):
        await first.receive("assign")
    await again.close()
    await first.close()


async def test_a_cancel_made_on_one_replica_reaches_an_engine_and_agent_on_another(
    replicas: list[Plane],
) -> None:
    a, b, c = replicas
    agent = agent_stream(a)
    await agent.receive("welcome")
    run = await a.run()
    assign = await accept_and_submit(agent, run.id)
    # The engine streams to B; the user cancels through C.
    engine = await running(b, run.id, assign.engine_token)
    await c.control.CancelRun(pb.CancelRunRequest(run_id=run.id, reason="enough"))
    cancel = await engine.receive("cancel", wait=HINT_DEADLINE)
    assert "enough" in cancel.reason
    told = await agent.receive("cancel", wait=HINT_DEADLINE)
    assert told.run_id == run.id
    await engine.close()
    await agent.close()


async def test_a_tail_on_one_replica_follows_lines_written_through_another(
    replicas: list[Plane],
) -> None:
    a, b, c = replicas
    await follows_lines(agents_on=a, engine_on=b, tail_on=c)


async def test_replicas_whose_url_sets_session_options_still_notify_each_other(
    tmp_path: Path, postgres_url: str
) -> None:
    """The ``options`` parameter as docs/scale-out.md writes it, spaces and all, reaches the
    LISTEN/NOTIFY connections as it reaches the pool's: hints still cross between replicas."""
    empty(postgres_url)
    async with contextlib.AsyncExitStack() as stack:
        url = f"{postgres_url}?options=-c%20lock_timeout%3D3s"
        a, b = await start_replicas(stack, tmp_path, url, 2)
        await make_ready(a)
        # A tail re-reads by the clock only every 30 s: the lines come by a hint, or late.
        await follows_lines(agents_on=a, engine_on=b, tail_on=a)


async def follows_lines(*, agents_on: Plane, engine_on: Plane, tail_on: Plane) -> None:
    """Lines an engine writes through ``engine_on`` reach a tail on ``tail_on`` within the
    hint deadline (the run goes to an agent of ``agents_on``)."""
    agent = agent_stream(agents_on)
    await agent.receive("welcome")
    run = await agents_on.run()
    assign = await accept_and_submit(agent, run.id)
    engine = await running(engine_on, run.id, assign.engine_token)
    tail = tail_on.control.TailLogs(pb.TailLogsRequest(run_id=run.id, follow=True))
    lines: list[str] = []

    async def read(count: int) -> None:
        async for response in tail:
            lines.extend(line.text for line in response.lines)
            if len(lines) >= count:
                return

    reader = asyncio.create_task(read(3))
    for seq in range(1, 4):
        engine.send(
            engine_pb2.ReportRequest(
                log_batch=engine_pb2.LogBatch(
                    lines=[types_pb2.LogLine(seq=seq, text=f"line {seq}", level=20)]
                )
            )
        )
        assert (await engine.receive("log_ack")).stored_seq == seq
    await asyncio.wait_for(reader, HINT_DEADLINE)
    assert lines == ["line 1", "line 2", "line 3"]
    tail.cancel()
    await engine.close()
    await agent.close()


async def test_a_concurrency_limit_holds_under_a_burst_across_replicas(
    replicas: list[Plane],
) -> None:
    a, b, c = replicas
    deployment = (await a.control.GetDeployment(pb.GetDeploymentRequest(name="hello"))).deployment
    deployment.concurrency_limit = 2
    await a.control.UpsertDeployment(pb.UpsertDeploymentRequest(deployment=deployment))
    # Two agents with room for 5 each, on two replicas: only the limit holds runs back.
    agents = [
        agent_stream(a, capacity=5, name="agent-a"),
        agent_stream(b, capacity=5, name="agent-b"),
    ]
    for agent in agents:
        await agent.receive("welcome")
    await asyncio.gather(*(plane.run() for plane in (a, b, c) * 3))

    async def settled() -> bool:
        # Every run was looked at: 2 assigned, the other 7 told why they wait.
        listed = await a.control.ListRuns(pb.ListRunsRequest(deployment_name="hello"))
        names = sorted(r.state.name for r in listed.runs)
        return names == ["Assigned"] * 2 + ["AwaitingConcurrencySlot"] * 7

    await eventually(settled, within=HINT_DEADLINE, what="2 runs assigned and 7 waiting")
    for agent in agents:
        await agent.close()


async def test_one_replica_runs_each_singleton_pass_and_another_takes_over_when_it_stops(
    tmp_path: Path, postgres_url: str
) -> None:
    empty(postgres_url)
    async with contextlib.AsyncExitStack() as stack:
        planes = await start_replicas(stack, tmp_path, postgres_url, 2)

        def holders(name: str) -> list[Plane]:
            return [p for p in planes if _lease(p, name).held]

        for name in ("scheduler", "reaper"):
            assert len(holders(name)) == 1, name
        first = holders("scheduler")[0]
        await first.app.stop(0.5)
        planes.remove(first)
        # Stopping gives the leases up: the other replica takes them at its next renewal.
        for name in ("scheduler", "reaper"):
            await eventually(
                lambda name=name: len(holders(name)) == 1,
                within=RECEIVE_TIMEOUT,
                what=f"the other replica to take the {name} lease",
            )


def _lease(plane: Plane, name: str) -> Singleton:
    return next(s for s in plane.app.replica.singletons if s.name == name)


async def test_a_schedule_fires_once_per_time_across_replicas(replicas: list[Plane]) -> None:
    a, _, _ = replicas
    deployment = (await a.control.GetDeployment(pb.GetDeploymentRequest(name="hello"))).deployment
    deployment.parameters_json = json.dumps({"name": "x"})
    schedule = deployment.schedules.add(name="often")
    schedule.cron.expression = "* * * * *"
    await a.control.UpsertDeployment(pb.UpsertDeploymentRequest(deployment=deployment))

    async def scheduled() -> list[types_pb2.FlowRun]:
        listed = await a.control.ListRuns(
            pb.ListRunsRequest(deployment_name="hello", schedule_name="often", page_size=500)
        )
        return list(listed.runs)

    # The scheduler keeps the next firings created (at least 3).
    await eventually(
        lambda: _at_least(scheduled, 3), within=HINT_DEADLINE, what="the schedule's runs"
    )
    holders = [p for p in replicas if _lease(p, "scheduler").held]
    assert len(holders) == 1
    # The others' passes do nothing while one replica schedules.
    for plane in replicas:
        if plane is not holders[0]:
            assert await plane.app.scheduler.schedule_once() is None
    runs = await scheduled()
    times = [r.scheduled_time.ToDatetime() for r in runs]
    assert len(times) == len(set(times)), "a firing time has more than one run"


async def _at_least(listing: object, count: int) -> bool:
    return len(await listing()) >= count  # type: ignore[operator]
