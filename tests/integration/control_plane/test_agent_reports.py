"""An agent's Accepted and Submitted count only for the attempt its session holds as stored,
whatever the session remembers of the run it was assigned."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from control_plane.orchestration import reports
from control_plane.store import runs as runs_repo
from flowyard.v1 import agent_pb2, engine_pb2, types_pb2
from tests.waiting import eventually

from .conftest import RECEIVE_TIMEOUT, Plane, accepted, agent_stream, engine_stream, submit

S = types_pb2


async def test_accepted_then_submitted_move_the_assignment_on(ready: Plane) -> None:
    agent, run, _ = await accepted(ready)
    submit(agent, run.id, "process/h/3")
    stored = await ready.wait_named(run.id, "Submitted")
    assert stored.infrastructure_id == "process/h/3"
    history = (await ready.get(run.id)).history
    assert [(h.type, h.name) for h in history[-2:]] == [
        (S.STATE_TYPE_PENDING, "Assigned"),
        (S.STATE_TYPE_PENDING, "Submitted"),
    ]
    await agent.close()


@pytest.mark.short_lease
async def test_a_confirmation_of_an_attempt_handed_back_meanwhile_is_refused(ready: Plane) -> None:
    agent = agent_stream(ready, capacity=1)
    await agent.receive("welcome")
    run = await ready.run()
    await agent.receive("assign")
    # The agent is slow to confirm: its lease runs out and the attempt is handed back.
    await ready.wait_state(run.id, S.STATE_TYPE_SCHEDULED, wait=5)
    agent.send(agent_pb2.ConnectRequest(accepted=agent_pb2.Accepted(run_id=run.id, attempt=1)))
    cancel = await agent.receive("cancel")
    assert (cancel.run_id, cancel.attempt) == (run.id, 1)
    assert "handed back" in cancel.reason
    submit(agent, run.id, "process/h/4")
    await agent.receive("cancel")
    stored = (await ready.get(run.id)).run
    assert (stored.attempt, stored.state.type) == (2, S.STATE_TYPE_SCHEDULED)
    assert stored.infrastructure_id == ""
    await agent.close()


async def test_a_submitted_after_the_engines_running_is_written_without_reading_the_run(
    ready: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A warm engine can report RUNNING before the agent's Submitted arrives: the session
    # remembers the run as the engine's commit left it, and the report is written on that.
    reads: list[str] = []
    read = runs_repo.get_run

    async def counted(conn: Any, run_id: str, *args: Any, **kwargs: Any) -> Any:
        if sys._getframe(1).f_code.co_filename == reports.__file__:
            reads.append(run_id)
        return await read(conn, run_id, *args, **kwargs)

    monkeypatch.setattr(runs_repo, "get_run", counted)
    agent = agent_stream(ready, capacity=1)
    await agent.receive("welcome")
    run = await ready.run()
    assign = await agent.receive("assign")
    engine = engine_stream(ready, run.id, 1, assign.engine_token)
    await engine.receive("opened")
    engine.send(
        engine_pb2.ReportRequest(
            propose_state=engine_pb2.ProposeState(transition_id="t-run", type=S.STATE_TYPE_RUNNING)
        )
    )
    assert (await engine.receive("state_result")).accepted
    submit(agent, run.id, "process/h/9")

    async def recorded() -> bool:
        return (await ready.get(run.id)).run.infrastructure_id == "process/h/9"

    await eventually(recorded, within=RECEIVE_TIMEOUT, what="the Submitted")
    stored = (await ready.get(run.id)).run
    assert stored.state.type == S.STATE_TYPE_RUNNING  # the engine's state is kept
    assert reads == []
    await engine.close()
    await agent.close()
