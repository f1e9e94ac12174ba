"""An agent's Accepted and Submitted count only for the attempt its session holds as stored,
whatever the session remembers of the run it was assigned; reports on different runs are
applied at once, and every report sent before the agent hangs up counts."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from control_plane.orchestration import reports
from control_plane.store import runs as runs_repo
from flowyard.v1 import agent_pb2, engine_pb2, types_pb2
from tests.waiting import eventually

from .conftest import (
    RECEIVE_TIMEOUT,
    Plane,
    accepted,
    agent_stream,
    assigned,
    engine_stream,
    submit,
)
from .test_agent_names import ended

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
    # A warm engine can report RUNNING before the agent's Submitted arrives: the report is
    # written on the run as this process committed it last (the engine's RUNNING).
    reads: list[str] = []
    read = runs_repo.get_run

    async def counted(conn: Any, run_id: str, *args: Any, **kwargs: Any) -> Any:
        if sys._getframe(1).f_code.co_filename == reports.__file__:
            reads.append(run_id)
        return await read(conn, run_id, *args, **kwargs)

    monkeypatch.setattr(runs_repo, "get_run", counted)
    agent, run, assign = await assigned(ready)
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


async def test_reports_sent_before_an_agent_hangs_up_count_before_its_session_ends(
    ready: Plane,
) -> None:
    # Reports on different runs are applied at once; all of them before the session closes,
    # which hands back what it never accepted.
    agent = agent_stream(ready, capacity=3)
    await agent.receive("welcome")
    runs = [(await ready.run()).id for _ in range(3)]
    assert {(await agent.receive("assign")).run_id for _ in runs} == set(runs)
    first, second, third = runs
    agent.send(agent_pb2.ConnectRequest(accepted=agent_pb2.Accepted(run_id=first, attempt=1)))
    submit(agent, first, "process/h/5")
    agent.send(agent_pb2.ConnectRequest(accepted=agent_pb2.Accepted(run_id=second, attempt=1)))
    agent.send(None)  # the agent hangs up
    await ended(agent)
    stored = {run_id: (await ready.get(run_id)).run for run_id in runs}
    assert (stored[first].attempt, stored[first].state.name) == (1, "Submitted")
    assert stored[first].infrastructure_id == "process/h/5"
    # Accepted: it waits for its lease, for the agent to come back.
    assert (stored[second].attempt, stored[second].state.name) == (1, "Assigned")
    # Never accepted: handed back at once.
    assert (stored[third].attempt, stored[third].state.type) == (2, S.STATE_TYPE_SCHEDULED)
    await agent.close()
