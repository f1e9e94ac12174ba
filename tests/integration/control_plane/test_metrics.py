"""``/metrics`` of a real control plane: what the exposition says after runs, agents and
engines went through the real API, dispatcher and store.

Counters belong to the process, so each test compares a scrape after what it did with one
before; gauges it reads as they are.
"""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from control_plane.orchestration.scrape import CONTENT_TYPE, scrape
from flowyard.v1 import agent_pb2, engine_pb2, types_pb2
from tests.waiting import eventually

from .conftest import RECEIVE_TIMEOUT, Plane, agent_stream, engine_stream, submitted


class Exposition:
    """One scrape's samples, by name and labels."""

    def __init__(self, text: bytes) -> None:
        self.text = text.decode()
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(self.text):
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                self.samples[key] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 for one the exposition does not have."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)


async def exposition(plane: Plane) -> Exposition:
    return Exposition(await scrape(plane.app.db, plane.app.agents))


async def test_runs_queues_agents_and_engines_show_in_the_exposition(ready: Plane) -> None:
    assert CONTENT_TYPE.startswith("text/plain")
    before = await exposition(ready)
    assert before.value("flowyard_queue_depth", pool="pool-a", queue="default") == 0
    assert before.value("flowyard_agents_connected", pool="pool-a") == 0

    run_ids = [(await ready.run()).id for _ in range(3)]
    created = await exposition(ready)
    assert created.value("flowyard_runs_created_total") - before.value(
        "flowyard_runs_created_total"
    ) == pytest.approx(3)
    assert created.value("flowyard_run_state_transitions_total", state="SCHEDULED") - before.value(
        "flowyard_run_state_transitions_total", state="SCHEDULED"
    ) == pytest.approx(3)
    assert created.value("flowyard_queue_depth", pool="pool-a", queue="default") == 3
    assert (
        created.value("flowyard_queue_oldest_due_age_seconds", pool="pool-a", queue="default") >= 0
    )
    for operation in ("read", "write"):
        assert created.value("flowyard_database_seconds_count", operation=operation) > before.value(
            "flowyard_database_seconds_count", operation=operation
        )

    # An agent with room for two: two runs are assigned, one stays in the queue.
    agent = agent_stream(ready, capacity=2)
    await agent.receive("welcome")
    first = await agent.receive("assign")
    await agent.receive("assign")

    async def dispatched() -> Exposition | None:
        now = await exposition(ready)
        depth = now.value("flowyard_queue_depth", pool="pool-a", queue="default")
        return now if depth == 1 else None

    assigned = await eventually(dispatched, within=RECEIVE_TIMEOUT, what="one run left queued")
    assert assigned.value("flowyard_agents_connected", pool="pool-a") == 1
    assert assigned.value("flowyard_agent_free_credit", pool="pool-a") == 0
    assert assigned.value("flowyard_run_due_to_assigned_seconds_count") - before.value(
        "flowyard_run_due_to_assigned_seconds_count"
    ) == pytest.approx(2)
    assert assigned.value("flowyard_run_state_transitions_total", state="PENDING") - before.value(
        "flowyard_run_state_transitions_total", state="PENDING"
    ) == pytest.approx(2)

    # The first one runs and logs five lines.
    run_id = first.run_id
    assert run_id in run_ids
    agent.send(agent_pb2.ConnectRequest(accepted=agent_pb2.Accepted(run_id=run_id, attempt=1)))
    agent.send(
        agent_pb2.ConnectRequest(
            submitted=agent_pb2.Submitted(run_id=run_id, attempt=1, infrastructure_id="process/1")
        )
    )
    await eventually(lambda: submitted(ready, run_id), within=RECEIVE_TIMEOUT, what="Submitted")
    engine = engine_stream(ready, run_id, 1, first.engine_token)
    await engine.receive("opened")
    engine.send(
        engine_pb2.ReportRequest(
            propose_state=engine_pb2.ProposeState(
                transition_id="t-run", type=types_pb2.STATE_TYPE_RUNNING
            )
        )
    )
    assert (await engine.receive("state_result")).accepted
    engine.send(
        engine_pb2.ReportRequest(
            log_batch=engine_pb2.LogBatch(
                lines=[types_pb2.LogLine(seq=seq, text=f"line {seq}") for seq in range(1, 6)]
            )
        )
    )
    assert (await engine.receive("log_ack")).stored_seq == 5
    running = await exposition(ready)
    assert running.value("flowyard_engine_streams_open") - before.value(
        "flowyard_engine_streams_open"
    ) == pytest.approx(1)
    assert running.value("flowyard_run_assigned_to_running_seconds_count") - before.value(
        "flowyard_run_assigned_to_running_seconds_count"
    ) == pytest.approx(1)
    assert running.value("flowyard_log_lines_ingested_total") - before.value(
        "flowyard_log_lines_ingested_total"
    ) == pytest.approx(5)
    assert running.value("flowyard_run_state_transitions_total", state="RUNNING") - before.value(
        "flowyard_run_state_transitions_total", state="RUNNING"
    ) == pytest.approx(1)

    await engine.close()

    async def stream_closed() -> bool:
        now = await exposition(ready)
        return now.value("flowyard_engine_streams_open") == before.value(
            "flowyard_engine_streams_open"
        )

    await eventually(stream_closed, within=RECEIVE_TIMEOUT, what="the engine stream to close")
    await agent.close()

    async def agent_gone() -> bool:
        now = await exposition(ready)
        return now.value("flowyard_agents_connected", pool="pool-a") == 0

    await eventually(agent_gone, within=RECEIVE_TIMEOUT, what="the agent to leave")


@pytest.mark.short_lease
async def test_an_assignment_left_unconfirmed_counts_as_a_lease_expiry(ready: Plane) -> None:
    before = await exposition(ready)
    agent = agent_stream(ready, capacity=1)
    await agent.receive("welcome")
    await ready.run()
    await agent.receive("assign")  # and never accepted

    async def expired() -> bool:
        now = await exposition(ready)
        return now.value("flowyard_lease_expiries_total") > before.value(
            "flowyard_lease_expiries_total"
        )

    await eventually(expired, within=RECEIVE_TIMEOUT, what="the lease to run out")
    await agent.close()
