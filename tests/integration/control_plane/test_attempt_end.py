"""An engine token expires with its attempt: after the run ends, its engine is refused.

The rule is one (``orchestration/attempts.py: ended``) and applies everywhere an engine token
is used: opening a stream or calling StartRun after the end, and a stream that was open when
the attempt ended under it (its lines are refused and the stream ends).
"""

from __future__ import annotations

import grpc
import pytest

from flowyard.v1 import agent_pb2, engine_pb2, types_pb2
from flowyard.v1 import control_plane_pb2 as pb

from .conftest import Plane, Stream, drive_to_running, engine_stream

S = types_pb2
UNAUTH = grpc.StatusCode.UNAUTHENTICATED


def line(seq: int, text: str) -> engine_pb2.ReportRequest:
    return engine_pb2.ReportRequest(
        log_batch=engine_pb2.LogBatch(lines=[S.LogLine(seq=seq, text=text)])
    )


async def texts(plane: Plane, run_id: str) -> list[str]:
    return [
        line.text
        async for message in plane.control.TailLogs(pb.TailLogsRequest(run_id=run_id))
        for line in message.lines
    ]


async def refused(stream: Stream, kind: str) -> str:
    """The details of the UNAUTHENTICATED that ends ``stream`` (skipping ``kind`` messages)."""
    with pytest.raises(grpc.aio.AioRpcError) as error:
        while True:
            await stream.receive(kind)
    assert error.value.code() == UNAUTH, error.value
    return error.value.details() or ""


async def test_a_cancelled_runs_engine_token_is_refused_on_every_rpc(ready: Plane) -> None:
    agent, engine, run_id, token = await drive_to_running(ready)
    engine.send(line(1, "before the cancel"))
    assert (await engine.receive("log_ack")).stored_seq == 1
    await ready.control.CancelRun(pb.CancelRunRequest(run_id=run_id, reason="enough"))
    assert "enough" in (await engine.receive("cancel")).reason
    # The engine does not answer; the agent removes its process and says so.
    await agent.receive("cancel")
    agent.send(agent_pb2.ConnectRequest(cancelled=agent_pb2.Cancelled(run_id=run_id, attempt=1)))
    await ready.wait_state(run_id, S.STATE_TYPE_CANCELLED)

    # The stream that was open when the attempt ended is told so and ended.
    assert "has ended (CANCELLED)" in await refused(engine, "cancel")
    # A new stream with the token is refused before it opens, and stores nothing.
    late = engine_stream(ready, run_id, 1, token)
    details = await refused(late, "opened")
    assert f"run {run_id} attempt 1 has ended (CANCELLED)" in details
    assert "engine token expired with it" in details
    await late.close()
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await ready.engines.StartRun(
            engine_pb2.StartRunRequest(run_id=run_id, attempt=1),
            metadata=(("authorization", f"Bearer {token}"),),
        )
    assert error.value.code() == UNAUTH
    assert "has ended (CANCELLED)" in (error.value.details() or "")
    assert await texts(ready, run_id) == ["before the cancel"]
    await engine.close()
    await agent.close()


async def test_an_orphaned_engines_lines_never_land_in_the_ended_run(ready: Plane) -> None:
    agent, engine, run_id, token = await drive_to_running(ready)
    engine.send(line(1, "while it ran"))
    assert (await engine.receive("log_ack")).stored_seq == 1
    # The run's infrastructure is deleted under a live engine (say, by hand): CRASHED.
    agent.send(
        agent_pb2.ConnectRequest(
            infra_event=agent_pb2.InfraEvent(
                run_id=run_id,
                attempt=1,
                kind=agent_pb2.INFRA_EVENT_KIND_DELETED,
                message="job deleted",
            )
        )
    )
    await ready.wait_state(run_id, S.STATE_TYPE_CRASHED)
    # The engine keeps printing; none of it is stored.
    engine.send(line(2, "after the end"))
    cancel = await engine.receive("cancel")
    assert "has ended (CRASHED)" in cancel.reason
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        while True:
            await engine.receive("log_ack")
    if ended.value.code() == UNAUTH:
        details = ended.value.details() or ""
    else:
        # The line written after the end can lose the race with the server ending the
        # stream: the client then reports its own failed write instead of the server's
        # answer, which a new stream with the same token gets.
        assert "SendMessageOperation" in ended.value.debug_error_string(), ended.value
        late = engine_stream(ready, run_id, 1, token)
        details = await refused(late, "opened")
        await late.close()
    assert "has ended (CRASHED)" in details
    assert "after the end" not in await texts(ready, run_id)
    await engine.close()
    await agent.close()


async def test_the_engines_own_final_state_is_an_answer_not_a_refusal(ready: Plane) -> None:
    agent, engine, run_id, _ = await drive_to_running(ready)
    engine.send(line(1, "last line"))
    assert (await engine.receive("log_ack")).stored_seq == 1
    engine.send(
        engine_pb2.ReportRequest(
            propose_state=engine_pb2.ProposeState(
                transition_id="t-done", type=S.STATE_TYPE_COMPLETED
            )
        )
    )
    result = await engine.receive("state_result")
    assert result.accepted, result.reason
    # The same proposal again (an answer lost on the wire) gets the same answer.
    engine.send(
        engine_pb2.ReportRequest(
            propose_state=engine_pb2.ProposeState(
                transition_id="t-done", type=S.STATE_TYPE_COMPLETED
            )
        )
    )
    assert (await engine.receive("state_result")).accepted
    assert await texts(ready, run_id) == ["last line"]
    await engine.close()
    await agent.close()
