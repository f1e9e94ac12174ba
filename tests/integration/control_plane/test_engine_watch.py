"""An engine's stream watches its run: it is told to stop when the run is cancelled, however
the change reached this replica, without reading back the changes it made itself."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import update

from control_plane.store import runs as runs_repo
from control_plane.store.tables import flow_runs
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import engine_pb2, types_pb2
from tests.waiting import eventually

from .conftest import (
    RECEIVE_TIMEOUT,
    Plane,
    accepted,
    drive_to_running,
    engine_stream,
    submit,
    submitted,
)


@pytest.fixture
def watch_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The runs whose watched columns an engine stream read from the database."""
    reads: list[str] = []
    read = runs_repo.attempt_watch

    async def counted(conn: Any, run_id: str) -> Any:
        reads.append(run_id)
        return await read(conn, run_id)

    monkeypatch.setattr(runs_repo, "attempt_watch", counted)
    return reads


async def write_elsewhere(plane: Plane, run_id: str, state_type: str, name: str) -> None:
    """Change the run's state as another replica would: in the database, with no news here."""
    async with plane.app.db.write() as conn:
        await conn.execute(
            update(flow_runs)
            .where(flow_runs.c.id == run_id)
            .values(
                state_type=state_type,
                state_name=name,
                state_message="cancelled on another replica",
                version=flow_runs.c.version + 1,
            )
        )


async def propose(engine: Any, transition_id: str, state: int) -> Any:
    engine.send(
        engine_pb2.ReportRequest(
            propose_state=engine_pb2.ProposeState(transition_id=transition_id, type=state)
        )
    )
    return await engine.receive("state_result")


async def test_the_engines_own_changes_are_not_read_back(
    ready: Plane, watch_reads: list[str]
) -> None:
    agent, engine, run_id, _ = await drive_to_running(ready)
    result = await propose(engine, "t-done", types_pb2.STATE_TYPE_COMPLETED)
    assert result.accepted, result.reason
    await engine.close()
    await agent.close()
    # Not read on its own as the stream opened (the open's update returned it); RUNNING and
    # COMPLETED were this stream's own, known from their commits (a read only if both woke
    # the watcher at once).
    assert watch_reads.count(run_id) <= 1, watch_reads


async def test_a_cancel_made_here_after_the_engines_own_change_reaches_it(ready: Plane) -> None:
    agent, engine, run_id, _ = await drive_to_running(ready)
    await ready.control.CancelRun(pb.CancelRunRequest(run_id=run_id, reason="changed my mind"))
    cancel = await engine.receive("cancel")
    assert "changed my mind" in cancel.reason
    await engine.close()
    await agent.close()


async def test_a_change_another_replica_made_is_read_in_full(
    ready: Plane, watch_reads: list[str]
) -> None:
    agent, engine, run_id, _ = await drive_to_running(ready)
    reads = watch_reads.count(run_id)
    # What another replica would commit, then the hint it sends: no news comes with it.
    await write_elsewhere(ready, run_id, "CANCELLING", "Cancelling")
    ready.app.bus.receive([f"r:{run_id}"])
    cancel = await engine.receive("cancel")
    assert cancel.reason == "cancelled on another replica"
    assert watch_reads.count(run_id) == reads + 1
    await engine.close()
    await agent.close()


async def test_a_proposal_after_changes_the_stream_did_not_see_is_decided_on_the_stored_run(
    ready: Plane,
) -> None:
    # The engine opens its stream before the agent reports Submitted: what the stream saw
    # of the run is out of date when it proposes RUNNING.
    agent, run, assign = await accepted(ready)
    engine = engine_stream(ready, run.id, 1, assign.engine_token)
    await engine.receive("opened")
    submit(agent, run.id, "process/h/7")
    await eventually(lambda: submitted(ready, run.id), within=RECEIVE_TIMEOUT, what="Submitted")
    result = await propose(engine, "t-run", types_pb2.STATE_TYPE_RUNNING)
    assert result.accepted, result.reason
    stored = (await ready.get(run.id)).run
    assert stored.state.type == types_pb2.STATE_TYPE_RUNNING
    assert stored.infrastructure_id == "process/h/7"  # the Submitted it did not see is kept

    # Cancelled after RUNNING: the engine's CANCELLED keeps the user's reason, which only
    # the stored run knows.
    await ready.control.CancelRun(pb.CancelRunRequest(run_id=run.id, reason="stop it"))
    await engine.receive("cancel")
    reason = (await ready.get(run.id)).run.state.message
    assert "stop it" in reason
    result = await propose(engine, "t-cancelled", types_pb2.STATE_TYPE_CANCELLED)
    assert result.accepted, result.reason
    stored = (await ready.get(run.id)).run
    assert stored.state.type == types_pb2.STATE_TYPE_CANCELLED
    assert stored.state.message == reason
    # A repeat of an accepted proposal is answered from the stored run, as accepted.
    again = await propose(engine, "t-cancelled", types_pb2.STATE_TYPE_CANCELLED)
    assert again.accepted and again.state.type == types_pb2.STATE_TYPE_CANCELLED
    await engine.close()
    await agent.close()


async def test_a_proposal_on_a_run_that_ended_meanwhile_is_refused(ready: Plane) -> None:
    agent, engine, run_id, _ = await drive_to_running(ready)
    # Another replica ended the run and its hint has not arrived: the stream still thinks
    # the run is RUNNING, where COMPLETED would be allowed.
    await write_elsewhere(ready, run_id, "CANCELLED", "Cancelled")
    result = await propose(engine, "t-done", types_pb2.STATE_TYPE_COMPLETED)
    assert not result.accepted
    assert result.state.type == types_pb2.STATE_TYPE_CANCELLED
    assert (await ready.get(run_id)).run.state.type == types_pb2.STATE_TYPE_CANCELLED
    await engine.close()
    await agent.close()
