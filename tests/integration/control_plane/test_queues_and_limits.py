"""Queues, priorities and concurrency limits through the real API and dispatcher."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import pytest

from flowyard.v1 import agent_pb2, control_plane_pb2, types_pb2
from tests import waiting

from .conftest import Plane, Stream, agent_stream

T = TypeVar("T")
WAIT = 10.0


async def eventually(check: Callable[[], Awaitable[T]], what: str, wait: float = WAIT) -> T:
    """Ask ``check`` until it answers something truthy (again when it raises); fail after
    ``wait`` seconds."""
    return await waiting.eventually(check, wait, what, interval=0.05)


async def queue(plane: Plane, name: str, **fields: Any) -> control_plane_pb2.UpsertQueueResponse:
    return await plane.control.UpsertQueue(
        control_plane_pb2.UpsertQueueRequest(
            pool="pool-a", queue=types_pb2.WorkQueue(name=name, **fields)
        )
    )


async def run_in(plane: Plane, queue_name: str = "", deployment: str = "hello") -> str:
    response = await plane.control.CreateRun(
        control_plane_pb2.CreateRunRequest(
            deployment_name=deployment, parameters_json='{"name": "x"}', queue=queue_name
        )
    )
    return response.run.id


async def limited(plane: Plane, name: str, limit: int, strategy: int) -> None:
    deployment = await plane.deployment(name)
    deployment.concurrency_limit = limit
    deployment.collision_strategy = strategy  # type: ignore[assignment]
    await plane.control.UpsertDeployment(
        control_plane_pb2.UpsertDeploymentRequest(deployment=deployment)
    )


async def assigned(agent: Stream, count: int) -> list[str]:
    """The next ``count`` assignments, each accepted and submitted (so no lease runs out)."""
    ids = []
    for _ in range(count):
        assign = await agent.receive("assign")
        agent.send(
            agent_pb2.ConnectRequest(
                accepted=agent_pb2.Accepted(run_id=assign.run_id, attempt=assign.attempt)
            )
        )
        agent.send(
            agent_pb2.ConnectRequest(
                submitted=agent_pb2.Submitted(
                    run_id=assign.run_id, attempt=assign.attempt, infrastructure_id="process/x"
                )
            )
        )
        ids.append(assign.run_id)
    return ids


async def no_assign(agent: Stream) -> None:
    with pytest.raises(TimeoutError):
        await agent.receive("assign", wait=0.5)


async def test_every_pool_has_a_default_queue_and_queues_list_in_priority_order(
    plane: Plane,
) -> None:
    pool = await plane.pool()
    assert [q.name for q in pool.queues] == ["default"]
    created = await queue(plane, "urgent", priority=1, concurrency_limit=2)
    assert created.created
    await queue(plane, "default", priority=5)
    updated = await queue(plane, "urgent", priority=1, concurrency_limit=3, paused=True)
    assert not updated.created
    queues = [(q.name, q.priority, q.concurrency_limit, q.paused) for q in updated.pool.queues]
    assert queues == [("urgent", 1, 3, True), ("default", 5, 0, False)]


async def test_an_unknown_queue_is_refused_naming_it_and_listing_the_pools_queues(
    ready: Plane,
) -> None:
    await queue(ready, "urgent", priority=1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await run_in(ready, "nope")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'nope'" in (caught.value.details() or "")
    assert "urgent" in (caught.value.details() or "")
    assert "default" in (caught.value.details() or "")

    deployment = await ready.deployment()
    deployment.queue = "nope"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ready.control.UpsertDeployment(
            control_plane_pb2.UpsertDeploymentRequest(deployment=deployment)
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "deployment.queue" in (caught.value.details() or "")

    agent = Stream(ready.agents.Connect)
    agent.send(
        agent_pb2.ConnectRequest(
            hello=agent_pb2.Hello(agent_name="a", pool="pool-a", capacity=1, queues=["nope"])
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await agent.receive("welcome")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    await agent.close()


async def test_a_higher_priority_run_created_later_goes_first(ready: Plane) -> None:
    await queue(ready, "urgent", priority=1)
    await queue(ready, "default", priority=10)
    low = await run_in(ready, "default")
    high = await run_in(ready, "urgent")
    agent = agent_stream(ready, capacity=1)
    await agent.receive("welcome")
    assert await assigned(agent, 1) == [high]
    assert low  # still waiting: the agent has no credit left
    await agent.close()


async def test_queues_of_one_priority_share_it_oldest_run_first(ready: Plane) -> None:
    await queue(ready, "default", priority=10)
    await queue(ready, "left", priority=1)
    await queue(ready, "right", priority=1)
    later = await run_in(ready, "default")
    first = [await run_in(ready, name) for name in ("right", "left", "right", "left")]
    # One pass takes every due run of the first priority, in the order they came, across
    # its two queues; the older run of the lower priority comes after them.
    agent = agent_stream(ready, capacity=5)
    await agent.receive("welcome")
    assert await assigned(agent, 5) == [*first, later]
    await agent.close()


async def test_an_agent_limited_to_a_queue_takes_only_its_runs(ready: Plane) -> None:
    await queue(ready, "gpu", priority=5)
    other = await run_in(ready, "default")
    mine = await run_in(ready, "gpu")
    agent = Stream(ready.agents.Connect)
    agent.send(
        agent_pb2.ConnectRequest(
            hello=agent_pb2.Hello(
                agent_name="gpu-agent", pool="pool-a", capacity=5, queues=["gpu"], runtime="process"
            )
        )
    )
    await agent.receive("welcome")
    assert await assigned(agent, 1) == [mine]
    await no_assign(agent)
    assert (await ready.get(other)).run.state.type == types_pb2.STATE_TYPE_SCHEDULED
    await agent.close()


async def test_queue_and_pool_limits_and_pauses_hold_runs_back(ready: Plane) -> None:
    await queue(ready, "default", priority=1, concurrency_limit=1)
    runs = [await run_in(ready) for _ in range(3)]
    agent = agent_stream(ready, capacity=3)
    await agent.receive("welcome")
    first = await assigned(agent, 1)
    await no_assign(agent)
    # Raising the queue's limit wakes the dispatcher; the pool's limit of 2 still caps it.
    await ready.control.UpdatePool(
        control_plane_pb2.UpdatePoolRequest(name="pool-a", concurrency_limit=2)
    )
    await queue(ready, "default", priority=1, concurrency_limit=0)
    second = await assigned(agent, 1)
    await no_assign(agent)
    # A paused pool dispatches nothing, even with room.
    await ready.control.UpdatePool(
        control_plane_pb2.UpdatePoolRequest(name="pool-a", concurrency_limit=0, paused=True)
    )
    await no_assign(agent)
    await ready.control.UpdatePool(control_plane_pb2.UpdatePoolRequest(name="pool-a", paused=False))
    third = await assigned(agent, 1)
    assert sorted(first + second + third) == sorted(runs)
    await agent.close()


async def test_enqueue_waits_with_its_reason_and_goes_when_a_slot_frees(ready: Plane) -> None:
    await limited(ready, "etl", 1, types_pb2.COLLISION_STRATEGY_ENQUEUE)
    first = await run_in(ready, deployment="etl")
    second = await run_in(ready, deployment="etl")
    agent = agent_stream(ready, capacity=3)
    await agent.receive("welcome")
    assert await assigned(agent, 1) == [first]

    async def waiting() -> Any:
        run = (await ready.get(second)).run
        return run if run.state.name == "AwaitingConcurrencySlot" else None

    run = await eventually(waiting, "AwaitingConcurrencySlot")
    assert run.state.type == types_pb2.STATE_TYPE_SCHEDULED
    assert run.state.message == (
        f"deployment etl is at its concurrency limit (1 of 1 running: {first})"
    )
    await no_assign(agent)
    # The first run ends: its slot goes to the waiting run.
    await ready.control.CancelRun(control_plane_pb2.CancelRunRequest(run_id=first))
    cancel = await agent.receive("cancel")
    assert cancel.run_id == first
    agent.send(agent_pb2.ConnectRequest(cancelled=agent_pb2.Cancelled(run_id=first, attempt=1)))
    assert await assigned(agent, 1) == [second]
    history = (await ready.get(second)).history
    assert [h.name for h in history].count("AwaitingConcurrencySlot") == 1
    await agent.close()


async def test_cancel_new_cancels_a_run_that_would_start_with_its_reason(ready: Plane) -> None:
    await limited(ready, "etl", 1, types_pb2.COLLISION_STRATEGY_CANCEL_NEW)
    first = await run_in(ready, deployment="etl")
    agent = agent_stream(ready, capacity=3)
    await agent.receive("welcome")
    assert await assigned(agent, 1) == [first]
    second = await run_in(ready, deployment="etl")
    run = await ready.wait_state(second, types_pb2.STATE_TYPE_CANCELLED)
    assert f"deployment etl is at its concurrency limit (1 of 1 running: {first})" in (
        run.state.message
    )
    assert "CANCEL_NEW" in run.state.message
    await agent.close()


async def test_blocked_runs_never_starve_a_run_that_can_go(ready: Plane) -> None:
    await limited(ready, "etl", 1, types_pb2.COLLISION_STRATEGY_ENQUEUE)
    await ready.deployment("other")
    blocked = await asyncio.gather(*(run_in(ready, deployment="etl") for _ in range(300)))
    agent = agent_stream(ready, capacity=2)
    await agent.receive("welcome")
    first = await assigned(agent, 1)
    assert first[0] in blocked
    # 299 due runs of etl wait; a run of another deployment created after them is the next
    # one assigned (within the receive deadline: a dispatcher that looked only at the oldest
    # due runs would never reach it). How fast: bench/blocked_dispatch.py.
    other = await run_in(ready, deployment="other")
    assert await assigned(agent, 1) == [other]
    await agent.close()
