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

from .conftest import Plane, drive_to_running


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
    # Read once as the stream opened; RUNNING and COMPLETED were this stream's own, known
    # from their commits (a second read only if both woke the watcher at once).
    assert 1 <= watch_reads.count(run_id) <= 2, watch_reads


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
    async with ready.app.db.write() as conn:
        await conn.execute(
            update(flow_runs)
            .where(flow_runs.c.id == run_id)
            .values(
                state_type="CANCELLING",
                state_name="Cancelling",
                state_message="cancelled on another replica",
                version=flow_runs.c.version + 1,
            )
        )
    ready.app.bus.receive([f"r:{run_id}"])
    cancel = await engine.receive("cancel")
    assert cancel.reason == "cancelled on another replica"
    assert watch_reads.count(run_id) == reads + 1
    await engine.close()
    await agent.close()
