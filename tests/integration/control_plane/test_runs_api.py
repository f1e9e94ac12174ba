"""Runs over gRPC: creation rules, dispatch over the agent stream, the engine protocol, cancel."""

import json
import time
import uuid

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from control_plane.orchestration import dispatch
from flowyard.v1 import agent_pb2, engine_pb2, engine_pb2_grpc, types_pb2
from flowyard.v1 import control_plane_pb2 as pb
from tests.waiting import eventually

from .conftest import (
    RECEIVE_TIMEOUT,
    Plane,
    accepted,
    agent_stream,
    drive_to_running,
    engine_stream,
    submit,
)

S = types_pb2


def stored_runs(plane: Plane) -> int:
    return plane.count_rows("flow_runs")


async def test_unknown_deployment_is_not_found_and_stores_nothing(ready: Plane) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await ready.control.CreateRun(pb.CreateRunRequest(deployment_name="nope"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert error.value.details() == "deployment 'nope' not found"
    assert stored_runs(ready) == 0


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        (
            '{"name": "x", "colour": 1}',
            "unknown parameter 'colour' for flow 'hello'; accepted parameters: count, name",
        ),
        ("{}", "missing required parameter 'name'"),
        ('{"name": 3}', "parameters: name: 3 is not of type 'string'"),
        ("[1]", "parameters_json: must be a JSON object"),
    ],
)
async def test_bad_parameters_are_invalid_argument_and_store_nothing(
    ready: Plane, params: str, fragment: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await ready.control.CreateRun(
            pb.CreateRunRequest(deployment_name="hello", parameters_json=params)
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (error.value.details() or "")
    assert stored_runs(ready) == 0


async def test_idempotency_key_returns_the_same_run(ready: Plane) -> None:
    request = pb.CreateRunRequest(
        deployment_name="hello", parameters_json='{"name": "a"}', idempotency_key="k1"
    )
    first = await ready.control.CreateRun(request)
    second = await ready.control.CreateRun(request)
    assert first.created and not second.created
    assert first.run.id == second.run.id
    assert stored_runs(ready) == 1


async def test_list_runs_pages_newest_first(ready: Plane) -> None:
    ids = [(await ready.run(name=str(i))).id for i in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        page = await ready.control.ListRuns(pb.ListRunsRequest(page_size=2, page_token=token))
        seen += [r.id for r in page.runs]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await ready.control.ListRuns(pb.ListRunsRequest(page_token="garbage"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_runs_takes_a_state_type_given_many_times_as_once(ready: Plane) -> None:
    run = await ready.run()
    # More copies than PostgreSQL takes parameters in one statement.
    scheduled = [types_pb2.STATE_TYPE_SCHEDULED] * 70_000
    page = await ready.control.ListRuns(pb.ListRunsRequest(state_types=scheduled))
    assert [r.id for r in page.runs] == [run.id]
    page = await ready.control.ListRuns(
        pb.ListRunsRequest(state_types=[types_pb2.STATE_TYPE_RUNNING] * 70_000)
    )
    assert list(page.runs) == []


@pytest.mark.short_lease
async def test_run_is_pushed_to_an_agent_with_credit_only(ready: Plane) -> None:
    agent = agent_stream(ready, capacity=1)
    welcome = await agent.receive("welcome")
    assert welcome.lease_duration.seconds == 1  # short_lease: 1.5 s
    first = await ready.run()
    # Pushed, not polled: the dispatcher's next pass by the clock is further away than the
    # receive deadline, so only the wake-up by CreateRun can deliver it in time.
    assert dispatch.MAX_SLEEP_SECONDS > RECEIVE_TIMEOUT
    assign = await agent.receive("assign")
    assert assign.run_id == first.id and assign.attempt == 1 and assign.engine_token
    assert (await ready.get(first.id)).run.state.name == "Assigned"

    second = await ready.run()
    with pytest.raises(TimeoutError):
        await agent.receive("assign", wait=0.5)  # no credit left
    agent.send(agent_pb2.ConnectRequest(credit=agent_pb2.CreditGrant(credits=1)))
    assert (await agent.receive("assign")).run_id == second.id
    await agent.close()


async def test_future_run_is_dispatched_when_due(ready: Plane) -> None:
    agent = agent_stream(ready, capacity=1)
    await agent.receive("welcome")
    due = Timestamp()
    due.FromNanoseconds(time.time_ns() + 700_000_000)
    run = (
        await ready.control.CreateRun(
            pb.CreateRunRequest(
                deployment_name="hello", parameters_json='{"name": "x"}', scheduled_time=due
            )
        )
    ).run
    assign = await agent.receive("assign", wait=5)
    assert assign.run_id == run.id
    assert time.time_ns() >= due.ToNanoseconds()
    await agent.close()


@pytest.mark.short_lease
async def test_unaccepted_assignment_goes_back_to_the_queue(ready: Plane) -> None:
    silent = agent_stream(ready, capacity=1, name="silent")
    await silent.receive("welcome")
    run = await ready.run()
    first = await silent.receive("assign")
    await ready.wait_state(run.id, S.STATE_TYPE_SCHEDULED, wait=5)
    history = (await ready.get(run.id)).history
    # The attempt ends, and the run goes back to the queue as the next one.
    assert (history[-2].attempt, history[-1].attempt) == (1, 2)
    assert "Handed back: agent silent did not confirm it within its lease" in history[-2].message
    assert "Back in the queue as attempt 2" in history[-1].message
    # The next agent gets the next attempt, with a new token; the old one no longer opens
    # the engine stream.
    other = agent_stream(ready, capacity=1, name="other")
    await other.receive("welcome")
    await silent.close()
    second = await other.receive("assign")
    assert (second.run_id, second.attempt) == (run.id, 2)
    assert second.engine_token != first.engine_token
    stale = engine_stream(ready, run.id, 1, first.engine_token)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stale.receive("opened")
    # A token of an assignment that is over is no token at all: the same answer as a forged
    # one, so that no answer tells a stranger which run ids exist.
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expire with their run attempt" in (error.value.details() or "")
    await other.close()


async def test_disconnected_agent_releases_unaccepted_assignments_at_once(ready: Plane) -> None:
    agent = agent_stream(ready, capacity=1)
    await agent.receive("welcome")
    run = await ready.run()
    await agent.receive("assign")
    await agent.close()
    # At once: well before its 30 s lease would hand it back (a loaded machine may take a
    # few seconds to notice the hang-up and write it).
    await ready.wait_state(run.id, S.STATE_TYPE_SCHEDULED, wait=10.0)


def lines(*texts: str, start: int = 1) -> engine_pb2.ReportRequest:
    return engine_pb2.ReportRequest(
        log_batch=engine_pb2.LogBatch(
            lines=[
                S.LogLine(seq=start + i, level=20, stream=S.LOG_STREAM_STDOUT, text=t)
                for i, t in enumerate(texts)
            ]
        )
    )


async def test_engine_protocol_logs_states_and_tail(ready: Plane) -> None:
    agent, engine, run_id, _ = await drive_to_running(ready)
    run = (await ready.get(run_id)).run
    assert run.infrastructure_id == "process/h/1" and run.state.type == S.STATE_TYPE_RUNNING

    # A repeated proposal gets the same answer and adds no history row.
    before = len((await ready.get(run_id)).history)
    engine.send(
        engine_pb2.ReportRequest(
            propose_state=engine_pb2.ProposeState(transition_id="t-run", type=S.STATE_TYPE_RUNNING)
        )
    )
    assert (await engine.receive("state_result")).accepted
    assert len((await ready.get(run_id)).history) == before

    tail = ready.control.TailLogs(pb.TailLogsRequest(run_id=run_id, follow=True))
    engine.send(lines("one", "two"))
    assert (await engine.receive("log_ack")).stored_seq == 2
    engine.send(lines("two", "three", start=2))  # a resend overlapping what is stored
    assert (await engine.receive("log_ack")).stored_seq == 3
    engine.send(
        engine_pb2.ReportRequest(
            propose_state=engine_pb2.ProposeState(
                transition_id="t-done", type=S.STATE_TYPE_COMPLETED, result_summary="'xx'"
            )
        )
    )
    result = await engine.receive("state_result")
    assert result.accepted and result.state.type == S.STATE_TYPE_COMPLETED

    texts: list[str] = []
    async for message in tail:
        texts += [line.text for line in message.lines]
    assert texts == ["one", "two", "three"]
    assert message.state.type == S.STATE_TYPE_COMPLETED

    resumed = [
        m
        async for m in ready.control.TailLogs(
            pb.TailLogsRequest(run_id=run_id, after_attempt=1, after_seq=1)
        )
    ]
    assert [line.text for m in resumed for line in m.lines] == ["two", "three"]
    assert (await ready.get(run_id)).run.result_summary == "'xx'"

    # A terminal run accepts nothing more.
    engine.send(
        engine_pb2.ReportRequest(
            propose_state=engine_pb2.ProposeState(transition_id="t-x", type=S.STATE_TYPE_FAILED)
        )
    )
    refused = await engine.receive("state_result")
    assert not refused.accepted and "already COMPLETED" in refused.reason
    await engine.close()
    await agent.close()


async def test_engine_calls_need_the_attempts_token(ready: Plane) -> None:
    agent, engine, run_id, token = await drive_to_running(ready)
    request = engine_pb2.StartRunRequest(run_id=run_id, attempt=1)
    async with grpc.aio.insecure_channel(ready.address) as bare:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await engine_pb2_grpc.EngineServiceStub(bare).StartRun(request)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await ready.engines.StartRun(request, metadata=(("authorization", "Bearer wrong"),))
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The plane's channel sends the admin token: valid, but not an engine's.
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await ready.engines.StartRun(request)
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    ok = await ready.engines.StartRun(request, metadata=(("authorization", f"Bearer {token}"),))
    assert ok.entrypoint == "flow.py:hello" and ok.source.local.path
    await engine.close()
    await agent.close()


async def test_cancel_reaches_agent_and_engine_and_ends_cancelled(ready: Plane) -> None:
    agent, engine, run_id, _ = await drive_to_running(ready)
    response = await ready.control.CancelRun(pb.CancelRunRequest(run_id=run_id, reason="enough"))
    assert response.run.state.type == S.STATE_TYPE_CANCELLING
    cancel = await agent.receive("cancel")
    assert cancel.run_id == run_id
    assert "enough" in (await engine.receive("cancel")).reason
    agent.send(agent_pb2.ConnectRequest(cancelled=agent_pb2.Cancelled(run_id=run_id, attempt=1)))
    await ready.wait_state(run_id, S.STATE_TYPE_CANCELLED)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await ready.control.CancelRun(pb.CancelRunRequest(run_id=run_id))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await engine.close()
    await agent.close()


async def test_cancel_of_a_scheduled_run_is_immediate(ready: Plane) -> None:
    run = await ready.run()
    response = await ready.control.CancelRun(pb.CancelRunRequest(run_id=run.id))
    assert response.run.state.type == S.STATE_TYPE_CANCELLED


async def test_engine_exit_without_final_state_crashes_with_the_output(ready: Plane) -> None:
    agent, engine, run_id, _ = await drive_to_running(ready)
    await engine.close()
    agent.send(
        agent_pb2.ConnectRequest(
            infra_event=agent_pb2.InfraEvent(
                run_id=run_id,
                attempt=1,
                kind=agent_pb2.INFRA_EVENT_KIND_FAILED,
                exit_code=137,
                log_tail=["Killed"],
            )
        )
    )
    run = await ready.wait_state(run_id, S.STATE_TYPE_CRASHED)
    assert "exited with code 137" in run.state.message
    texts = [
        line.text
        async for m in ready.control.TailLogs(pb.TailLogsRequest(run_id=run_id))
        for line in m.lines
    ]
    assert texts[-1] == "Killed"
    await agent.close()


async def test_reports_from_an_agent_that_does_not_hold_the_run_are_ignored(ready: Plane) -> None:
    agent, engine, run_id, _ = await drive_to_running(ready)
    intruder = agent_stream(ready, capacity=0, name="intruder")
    await intruder.receive("welcome")
    intruder.send(
        agent_pb2.ConnectRequest(
            infra_event=agent_pb2.InfraEvent(
                run_id=run_id, attempt=1, kind=agent_pb2.INFRA_EVENT_KIND_FAILED, exit_code=1
            )
        )
    )
    # A stream's reports are applied in order: once its later credit grant has been used,
    # the crash report before it has been dealt with.
    intruder.send(agent_pb2.ConnectRequest(credit=agent_pb2.CreditGrant(credits=1)))
    other = await ready.run()
    assert (await intruder.receive("assign")).run_id == other.id
    assert (await ready.get(run_id)).run.state.type == S.STATE_TYPE_RUNNING
    await intruder.close()
    await engine.close()
    await agent.close()


async def test_reconnected_agent_takes_its_runs_back(ready: Plane) -> None:
    agent, engine, run_id, _ = await drive_to_running(ready)
    await agent.close()
    again = agent_stream(
        ready, capacity=1, observed=[agent_pb2.ObservedRun(run_id=run_id, attempt=1)]
    )
    await again.receive("welcome")
    await ready.control.CancelRun(pb.CancelRunRequest(run_id=run_id))
    assert (await again.receive("cancel")).run_id == run_id
    await engine.close()
    await again.close()


async def test_observed_infrastructure_of_unknown_runs_is_torn_down(ready: Plane) -> None:
    ghost = uuid.uuid4().hex
    agent = agent_stream(ready, observed=[agent_pb2.ObservedRun(run_id=ghost, attempt=1)])
    await agent.receive("welcome")
    assert (await agent.receive("cancel")).run_id == ghost
    await agent.close()


async def test_agent_for_unknown_pool_is_refused(plane: Plane) -> None:
    agent = agent_stream(plane, pool="nowhere")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await agent.receive("welcome")
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_infrastructure_that_never_starts_crashes_the_run_with_the_reason(
    ready: Plane,
) -> None:
    agent, run, _ = await accepted(ready)
    submit(agent, run.id, "ns/job")
    # A diagnosis on its own is news for the logs, not the end of the run...
    agent.send(
        agent_pb2.ConnectRequest(
            infra_event=agent_pb2.InfraEvent(
                run_id=run.id,
                attempt=1,
                kind=agent_pb2.INFRA_EVENT_KIND_IMAGE_PULL_ERROR,
                reason="ErrImagePull",
                message='failed to pull "bad/image:1"',
            )
        )
    )
    # The run waits on its infrastructure, and says what holds it back.
    waiting = await ready.wait_named(run.id, "InfrastructurePending")
    assert waiting.state.type == S.STATE_TYPE_PENDING
    assert "ErrImagePull" in waiting.state.message, waiting.state.message
    # ...until the runtime gives up at the pod-start deadline.
    agent.send(
        agent_pb2.ConnectRequest(
            infra_event=agent_pb2.InfraEvent(
                run_id=run.id,
                attempt=1,
                kind=agent_pb2.INFRA_EVENT_KIND_IMAGE_PULL_ERROR,
                reason="ImagePullBackOff",
                message='Back-off pulling image "bad/image:1"',
                gave_up=True,
            )
        )
    )
    crashed = await ready.wait_state(run.id, S.STATE_TYPE_CRASHED)
    assert "ImagePullBackOff" in crashed.state.message
    assert "bad/image:1" in crashed.state.message
    history = [h.type for h in (await ready.get(run.id)).history]
    assert history.count(S.STATE_TYPE_CRASHED) == 1
    texts = [
        line.text
        async for m in ready.control.TailLogs(pb.TailLogsRequest(run_id=run.id))
        for line in m.lines
    ]
    assert any("ErrImagePull" in t for t in texts)
    await agent.close()


async def test_an_infra_notice_never_takes_a_seq_the_engine_is_about_to_use(ready: Plane) -> None:
    agent, engine, run_id, _ = await drive_to_running(ready)
    agent.send(
        agent_pb2.ConnectRequest(
            infra_event=agent_pb2.InfraEvent(
                run_id=run_id, attempt=1, kind=agent_pb2.INFRA_EVENT_KIND_PENDING, reason="late"
            )
        )
    )
    agent.send(agent_pb2.ConnectRequest(credit=agent_pb2.CreditGrant(credits=1)))
    other = await ready.run()
    assert (await agent.receive("assign")).run_id == other.id  # the notice was applied
    engine.send(lines("the engine's first line"))
    assert (await engine.receive("log_ack")).stored_seq == 1
    texts = [
        line.text
        async for m in ready.control.TailLogs(pb.TailLogsRequest(run_id=run_id))
        for line in m.lines
    ]
    assert texts == ["the engine's first line"]
    await engine.close()
    await agent.close()


async def test_an_integral_float_for_an_integer_is_stored_as_an_integer(ready: Plane) -> None:
    run = await ready.run(name="x", count=7.0)
    stored = (await ready.get(run.id)).run
    for text in (run.parameters_json, stored.parameters_json):
        parameters = json.loads(text)
        assert parameters == {"count": 7, "name": "x"}
        assert type(parameters["count"]) is int, text  # 7, not 7.0

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ready.run(name="x", count=7.5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "parameters: count: 7.5 is not of type 'integer'"


async def test_a_run_that_ends_before_its_submitted_report_still_records_where_it_ran(
    ready: Plane,
) -> None:
    # A warm engine can finish a short flow before the agent's Submitted reaches the server.
    agent, run, assign = await accepted(ready)
    engine = engine_stream(ready, run.id, 1, assign.engine_token)
    await engine.receive("opened")
    for transition, state in (
        ("t1", types_pb2.STATE_TYPE_RUNNING),
        ("t2", types_pb2.STATE_TYPE_COMPLETED),
    ):
        engine.send(
            engine_pb2.ReportRequest(
                propose_state=engine_pb2.ProposeState(transition_id=transition, type=state)
            )
        )
        assert (await engine.receive("state_result")).accepted
    agent.send(
        agent_pb2.ConnectRequest(
            submitted=agent_pb2.Submitted(run_id=run.id, attempt=1, infrastructure_id="process/h/7")
        )
    )

    async def recorded() -> bool:
        got = (await ready.control.GetRun(pb.GetRunRequest(run_id=run.id))).run
        return got.infrastructure_id == "process/h/7"

    await eventually(recorded, within=RECEIVE_TIMEOUT, what="the late Submitted recorded")
    done = (await ready.control.GetRun(pb.GetRunRequest(run_id=run.id))).run
    assert done.state.type == types_pb2.STATE_TYPE_COMPLETED
    await engine.close()
    await agent.close()
