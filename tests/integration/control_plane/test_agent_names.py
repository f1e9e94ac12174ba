"""One connected session per agent name and pool: a second instance is refused, clearly; the
same instance reconnecting replaces its stale session; agents without an instance id work."""

import asyncio
import time

import grpc
import pytest

from control_plane.models import Run
from control_plane.orchestration.agents import AgentSession
from control_plane.orchestration.reports import AgentReports
from flowyard.v1 import agent_pb2, types_pb2
from flowyard.v1 import control_plane_pb2 as pb

from .conftest import RECEIVE_TIMEOUT, Plane, Stream, agent_stream


async def connected_agents(plane: Plane, pool: str = "pool-a") -> int:
    response = await plane.control.GetPool(pb.GetPoolRequest(name=pool))
    return response.pool.connected_agents


async def wait_connected(plane: Plane, count: int) -> None:
    deadline = time.monotonic() + 10
    while await connected_agents(plane) != count:
        assert time.monotonic() < deadline, f"never {count} connected agents"
        await asyncio.sleep(0.05)


async def ended(stream: Stream) -> None:
    """Wait until the server ends ``stream`` (heartbeats before the end are skipped)."""
    try:
        async with asyncio.timeout(RECEIVE_TIMEOUT):
            with pytest.raises((AssertionError, grpc.aio.AioRpcError)):
                while True:
                    await stream.receive("never")
    except TimeoutError:
        raise AssertionError(
            f"the server kept the stream open for {RECEIVE_TIMEOUT} s (heartbeats only)"
        ) from None


async def assigned(plane: Plane) -> tuple[Stream, types_pb2.FlowRun]:
    """agent-1's process on its first stream, and a run assigned to it there."""
    stale = agent_stream(plane, capacity=1, name="agent-1", instance="host-1-abcd")
    await stale.receive("welcome")
    run = await plane.run()
    await stale.receive("assign")
    return stale, run


def redialled(plane: Plane, run_id: str) -> Stream:
    """agent-1's process on a new stream, naming the infrastructure it runs ``run_id`` on."""
    return agent_stream(
        plane,
        capacity=1,
        name="agent-1",
        instance="host-1-abcd",
        observed=[agent_pb2.ObservedRun(run_id=run_id, attempt=1, infrastructure_id="p/1")],
    )


async def test_a_second_instance_of_a_connected_name_is_refused_saying_which(
    plane: Plane,
) -> None:
    await plane.pool()
    first = agent_stream(plane, name="agent-1", instance="pod-a-1111")
    await first.receive("welcome")
    second = agent_stream(plane, name="agent-1", instance="pod-b-2222")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await second.receive("welcome")
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    details = refused.value.details() or ""
    for part in ("pool 'pool-a'", "named 'agent-1'", "'pod-a-1111'", "'pod-b-2222'", "--name"):
        assert part in details, details
    # Another name in the same pool is another agent.
    other = agent_stream(plane, name="agent-2", instance="pod-c-3333")
    await other.receive("welcome")
    assert await connected_agents(plane) == 2
    for stream in (first, second, other):
        await stream.close()


async def test_the_same_instance_reconnecting_replaces_its_stale_session_and_keeps_its_runs(
    ready: Plane,
) -> None:
    plane = ready
    stale, run = await assigned(plane)
    stale.send(agent_pb2.ConnectRequest(accepted=agent_pb2.Accepted(run_id=run.id, attempt=1)))
    stale.send(
        agent_pb2.ConnectRequest(
            submitted=agent_pb2.Submitted(run_id=run.id, attempt=1, infrastructure_id="p/1")
        )
    )
    await plane.wait_state(run.id, types_pb2.STATE_TYPE_PENDING)
    # The process lost its stream without the server noticing, and dials again at once.
    fresh = redialled(plane, run.id)
    await fresh.receive("welcome")
    await ended(stale)
    await wait_connected(plane, 1)
    # The new session holds the run: its cancel goes there.
    await plane.control.CancelRun(
        pb.CancelRunRequest(run_id=run.id, reason="test"), timeout=RECEIVE_TIMEOUT
    )
    cancel = await fresh.receive("cancel")
    assert cancel.run_id == run.id
    fresh.send(agent_pb2.ConnectRequest(cancelled=agent_pb2.Cancelled(run_id=run.id, attempt=1)))
    await plane.wait_state(run.id, types_pb2.STATE_TYPE_CANCELLED)
    for stream in (stale, fresh):
        await stream.close()


async def test_agents_without_an_instance_id_are_let_in_once_the_name_is_free(
    plane: Plane,
) -> None:
    await plane.pool()
    first = agent_stream(plane, name="old-agent")
    await first.receive("welcome")
    second = agent_stream(plane, name="old-agent")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await second.receive("welcome")
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "an unnamed instance (an older agent)" in (refused.value.details() or "")
    await first.close()
    await wait_connected(plane, 0)
    third = agent_stream(plane, name="old-agent")
    await third.receive("welcome")
    for stream in (second, third):
        await stream.close()


async def test_an_instance_id_longer_than_200_characters_is_invalid(plane: Plane) -> None:
    await plane.pool()
    stream = agent_stream(plane, instance="x" * 201)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stream.receive("welcome")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hello.instance_id" in (refused.value.details() or "")
    await stream.close()


async def test_a_run_cancelled_while_its_agent_reconnects_is_torn_down_by_the_new_session(
    ready: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    plane = ready
    stale, run = await assigned(plane)
    # The agent started the run, but its reports were lost with its stream. The user's cancel
    # lands while the reconnected agent's Hello, which names the run, is being applied: the
    # server sees nothing to tear down and ends the run at once.
    hold = AgentReports._hold

    async def cancelled_meanwhile(
        reports: AgentReports, session: AgentSession, held: Run
    ) -> Run | None:
        await plane.control.CancelRun(pb.CancelRunRequest(run_id=run.id, reason="test"))
        return await hold(reports, session, held)

    monkeypatch.setattr(AgentReports, "_hold", cancelled_meanwhile)
    fresh = redialled(plane, run.id)
    await fresh.receive("welcome")
    # The agent still runs it: it is told to tear it down.
    cancel = await fresh.receive("cancel")
    assert (cancel.run_id, cancel.attempt) == (run.id, 1)
    await plane.wait_state(run.id, types_pb2.STATE_TYPE_CANCELLED)
    for stream in (stale, fresh):
        await stream.close()
