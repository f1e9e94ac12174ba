"""An agent's Accepted and Submitted count only for the attempt its session holds as stored,
whatever the session remembers of the run it was assigned."""

from __future__ import annotations

import pytest

from flowyard.v1 import agent_pb2, types_pb2

from .conftest import Plane, accepted, agent_stream, submit

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
