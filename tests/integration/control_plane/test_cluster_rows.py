"""The rows replicas share: silent replicas are ended with their agent sessions, and what
ended long ago is deleted (on both stores)."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest

from control_plane.orchestration import clock
from control_plane.store import catalog, cluster
from flowyard.v1 import agent_pb2
from tests.waiting import eventually

from .conftest import RECEIVE_TIMEOUT, Plane, agent_stream


def session(session_id: str, replica_id: str, pool_id: str, name: str) -> cluster.SessionRecord:
    return cluster.SessionRecord(
        id=session_id,
        replica_id=replica_id,
        pool_id=pool_id,
        agent_name=name,
        instance_id="",
        token_id="",
        capacity=1,
        connected_at=clock.now() - timedelta(days=3),
        free_credit=1,
        last_seen_at=clock.now() - timedelta(days=3),
    )


async def test_a_silent_replica_is_ended_with_its_sessions_and_old_rows_are_pruned(
    ready: Plane,
) -> None:
    db = ready.app.db
    await ready.pool("pool-b")
    async with db.read() as conn:
        pool = await catalog.get_pool(conn, name="pool-b")
    assert pool is not None
    pool_id = pool.id
    long_ago = clock.now() - timedelta(days=3)
    async with db.write() as conn:
        # A replica killed three days ago, its agent still "connected" in its rows.
        await cluster.register_replica(conn, "dead", "host", long_ago)
        await cluster.open_session(conn, session("s-dead", "dead", pool_id, "lost"))
    live = agent_stream(ready, pool="pool-b", name="alive")
    await live.receive("welcome")
    async with db.read() as conn:
        assert await cluster.live_sessions_by_pool(conn) == {pool_id: 2}

    async with db.write() as conn:
        ended = await cluster.end_silent_replicas(conn, clock.now() - timedelta(seconds=10))
    assert ended == ["dead"]
    async with db.read() as conn:
        # Ended as of when the replica was last seen; this replica's own agent is untouched.
        assert await cluster.live_session(conn, "s-dead") is None
        assert await cluster.live_sessions_by_pool(conn) == {pool_id: 1}

    async with db.write() as conn:
        pruned = await cluster.prune(conn, clock.now() - timedelta(days=1))
    assert pruned == 2  # the dead replica's row and its session's
    assert ready.count_rows("replicas") == 1
    assert ready.count_rows("agent_sessions") == 1
    await live.close()


async def test_a_replica_records_the_credit_and_last_heartbeat_of_its_agents(
    ready: Plane,
) -> None:
    agent = agent_stream(ready, capacity=3)
    await agent.receive("welcome")
    connected = clock.now()
    run = await ready.run()
    assert (await agent.receive("assign")).run_id == run.id
    agent.send(agent_pb2.ConnectRequest(heartbeat=agent_pb2.Heartbeat()))

    async def recorded() -> cluster.SessionRecord | None:
        async with ready.app.db.read() as conn:
            pool = await catalog.get_pool(conn, name="pool-a")
            assert pool is not None
            [row] = await cluster.live_sessions(conn, [pool.id])
        # What other replicas read: written with this replica's next heartbeat.
        return row if row.free_credit == 2 and row.last_seen_at > connected else None

    row = await eventually(recorded, within=RECEIVE_TIMEOUT, what="the session's activity")
    assert row is not None and row.capacity == 3
    await agent.close()


async def test_a_reconnecting_agent_is_recorded_with_all_its_slots_not_only_the_free_ones(
    ready: Plane,
) -> None:
    # Back on a new stream while it runs two of its three runs: one slot is free.
    agent = agent_stream(ready, capacity=1, slots=3)
    await agent.receive("welcome")
    async with ready.app.db.read() as conn:
        pool = await catalog.get_pool(conn, name="pool-a")
        assert pool is not None
        [row] = await cluster.live_sessions(conn, [pool.id])
    assert (row.capacity, row.free_credit) == (3, 1)
    await agent.close()
    refused = agent_stream(ready, capacity=2, slots=1, name="agent-2")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await refused.receive("welcome")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hello.slots: must be between hello.capacity (2) and" in (error.value.details() or "")
    await refused.close()


async def test_a_replica_taken_for_gone_closes_its_agent_streams_and_serves_on(
    ready: Plane,
) -> None:
    agent = agent_stream(ready)
    await agent.receive("welcome")
    replica_id = ready.app.replica.id
    # Another replica found this one silent for too long (a stalled VM) and ended it.
    async with ready.app.db.write() as conn:
        await cluster.end_replica(conn, replica_id, clock.now())
    # At its next heartbeat it finds out: the agent is told to go (and reconnects, anywhere).
    with pytest.raises(AssertionError, match="the stream ended"):
        await agent.receive("assign", wait=RECEIVE_TIMEOUT)
    async with ready.app.db.read() as conn:
        assert replica_id in await cluster.live_replicas(conn, clock.now() - timedelta(minutes=1))
    again = agent_stream(ready)
    await again.receive("welcome")
    await again.close()
    await agent.close()
