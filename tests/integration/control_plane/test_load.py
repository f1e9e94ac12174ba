"""Limits of one control plane: admission control, message sizes, oversized log lines.

Bursts of real load need the server in a process of its own (tests/e2e/test_overload.py);
here the server is saturated on purpose, by holding a unit of database work open, so that
what a busy server answers can be checked exactly.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from control_plane.admission import RETRY_PUSHBACK_KEY
from control_plane.config import ServerConfig
from control_plane.metrics import REGISTRY
from control_plane.server import build
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import (
    control_plane_pb2_grpc,
    engine_pb2,
    types_pb2,
)
from tests.bearer import admin_token, aio_channel
from tests.waiting import eventually

from .conftest import STOP_TIMEOUT, Plane, agent_stream, connect, drive_to_running, engine_stream

#: The documented size limit of one stored log line (UTF-8 bytes, marker included).
LINE_LIMIT = 64 * 1024
MARKER = re.compile(r"(?s)(?P<kept>.*)… \[truncated (?P<cut>\d+) bytes\]")
#: A client that retries RESOURCE_EXHAUSTED by itself, honouring the server's pushback.
RETRY_POLICY = {
    "methodConfig": [
        {
            "name": [{"service": "flowyard.v1.ControlPlaneService"}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["RESOURCE_EXHAUSTED"],
            },
        }
    ]
}


#: Admission limit of the ``tight`` plane.
TIGHT_LIMIT = 5


@pytest.fixture
async def tight(tmp_path: Path) -> AsyncIterator[Plane]:
    """A control plane that works on few user calls at a time, with a pool and a deployment."""
    config = ServerConfig(port=0, data_dir=tmp_path, max_concurrent_calls=TIGHT_LIMIT)
    app = await build(config)
    await app.start()
    plane = connect(app, tmp_path)
    try:
        await plane.pool()
        await plane.deployment()
        yield plane
    finally:
        await plane.channel.close()
        await asyncio.wait_for(app.stop(0.5), STOP_TIMEOUT)


async def hold_database(plane: Plane) -> tuple[asyncio.Event, asyncio.Future[list[None]]]:
    """Keep units of database work in flight until the event is set: the server is full."""
    release = asyncio.Event()
    holding = asyncio.Semaphore(0)

    async def held() -> None:
        holding.release()
        await release.wait()

    work = asyncio.gather(*(plane.app.db.shielded(held()) for _ in range(TIGHT_LIMIT)))
    for _ in range(TIGHT_LIMIT):
        await holding.acquire()
    assert plane.app.db.in_flight >= TIGHT_LIMIT
    return release, work


async def stored_runs(plane: Plane) -> list[types_pb2.FlowRun]:
    return list((await plane.control.ListRuns(pb.ListRunsRequest(page_size=500))).runs)


async def test_a_busy_server_refuses_user_calls_at_once_with_a_retry_hint(tight: Plane) -> None:
    refusals = {"method": "CreateRun"}
    refused_before = REGISTRY.get_sample_value("flowyard_admission_refusals_total", refusals) or 0
    release, work = await hold_database(tight)
    # Refused at once, not queued: the database is held busy until release is set, so a
    # queued call could only end by its deadline, as DEADLINE_EXCEEDED.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await tight.control.CreateRun(
            pb.CreateRunRequest(deployment_name="hello", parameters_json='{"name": "x"}'),
            timeout=10,
        )
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = refused.value.details() or ""
    assert "nothing was done" in details
    seconds = float(re.findall(r"retry after ([\d.]+) s", details)[0])
    pushback = dict(refused.value.trailing_metadata() or ())[RETRY_PUSHBACK_KEY]
    assert isinstance(pushback, str) and 100 <= int(pushback) <= 30_000
    assert f"at most {TIGHT_LIMIT}" in details
    assert abs(int(pushback) / 1000 - seconds) < 0.1
    refused_after = REGISTRY.get_sample_value("flowyard_admission_refusals_total", refusals)
    assert refused_after == refused_before + 1

    # What the server exists for is never refused: health checks and agents get through.
    health = health_pb2_grpc.HealthStub(tight.channel)
    checked = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert checked.status == health_pb2.HealthCheckResponse.SERVING
    agent = agent_stream(tight, capacity=0)
    assert (await agent.receive("welcome")).session_id
    await agent.close()

    release.set()
    await work
    assert await stored_runs(tight) == []
    assert (await tight.run()).id


async def test_as_many_calls_at_once_as_the_limit_are_all_admitted(tight: Plane) -> None:
    admission = tight.app.admission
    request = pb.CreateRunRequest(deployment_name="hello", parameters_json='{"name": "x"}')
    async with tight.app.db.write():
        # The writer is busy: every creation is admitted and waits in its group commit, while
        # the server's own passes run (the dispatcher each creation wakes). A call's work
        # counts once, however it is done; the server's own does not count.
        calls = [
            asyncio.ensure_future(tight.control.CreateRun(request)) for _ in range(TIGHT_LIMIT)
        ]
        await eventually(
            lambda: admission.active == TIGHT_LIMIT or any(call.done() for call in calls),
            what="every call admitted, or one answered",
        )
    answers = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(answer, pb.CreateRunResponse) for answer in answers), answers
    assert len(await stored_runs(tight)) == TIGHT_LIMIT
    await eventually(lambda: tight.app.db.in_flight == 0, what="no work left in flight")


async def test_a_client_with_a_retry_policy_gets_through_by_itself(tight: Plane) -> None:
    release, work = await hold_database(tight)
    async with aio_channel(
        tight.address,
        admin_token(tight.data_dir),
        options=[("grpc.service_config", json.dumps(RETRY_POLICY))],
    ) as channel:
        control = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        call = asyncio.ensure_future(
            control.CreateRun(
                pb.CreateRunRequest(
                    deployment_name="hello", parameters_json='{"name": "x"}', idempotency_key="k"
                ),
                timeout=30,
            )
        )
        await asyncio.sleep(0.3)
        assert not call.done(), "the call should be waiting out the pushback"
        release.set()
        await work
        created = await asyncio.wait_for(call, 30)
    assert created.created
    assert [run.id for run in await stored_runs(tight)] == [created.run.id]


async def test_a_request_over_the_size_limit_is_resource_exhausted(ready: Plane) -> None:
    too_big = json.dumps({"name": "x" * (5 * 1024 * 1024)})
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ready.control.CreateRun(
            pb.CreateRunRequest(deployment_name="hello", parameters_json=too_big)
        )
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (refused.value.details() or "")
    assert await stored_runs(ready) == []
    assert (await ready.run()).id  # the server carries on


async def test_an_oversized_message_ends_only_that_engine_stream(ready: Plane) -> None:
    agent, engine, run_id, token = await drive_to_running(ready)
    engine.send(
        engine_pb2.ReportRequest(
            log_batch=engine_pb2.LogBatch(
                lines=[types_pb2.LogLine(seq=i + 1, text="y" * 60_000) for i in range(100)]
            )
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await engine.receive("log_ack")
    assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    # The engine reconnects and resends in batches of a sane size; nothing was stored before.
    again = engine_stream(ready, run_id, 1, token)
    assert (await again.receive("opened")).stored_seq == 0
    again.send(
        engine_pb2.ReportRequest(
            log_batch=engine_pb2.LogBatch(lines=[types_pb2.LogLine(seq=1, text="small")])
        )
    )
    assert (await again.receive("log_ack")).stored_seq == 1
    await again.close()
    await engine.close()
    await agent.close()


async def test_an_oversized_log_line_is_stored_truncated_with_a_marker(ready: Plane) -> None:
    agent, engine, run_id, _ = await drive_to_running(ready)
    texts = [
        "a" * 200_000,
        # Two-byte characters after one one-byte character: the limit falls inside a
        # character, which must be dropped whole.
        "x" + "é" * 40_000,
        "short",
    ]
    engine.send(
        engine_pb2.ReportRequest(
            log_batch=engine_pb2.LogBatch(
                lines=[types_pb2.LogLine(seq=i + 1, text=t) for i, t in enumerate(texts)]
            )
        )
    )
    assert (await engine.receive("log_ack")).stored_seq == 3

    tail = [m async for m in ready.control.TailLogs(pb.TailLogsRequest(run_id=run_id))]
    stored = [line.text for m in tail for line in m.lines]
    assert len(stored) == 3 and stored[2] == "short"
    for original, text in zip(texts[:2], stored[:2], strict=True):
        marked = MARKER.fullmatch(text)
        assert marked is not None, text[-100:]
        kept = marked["kept"].encode()
        assert original.encode().startswith(kept)
        assert len(text.encode()) <= LINE_LIMIT
        assert len(kept) + int(marked["cut"]) == len(original.encode())
    await engine.close()
    await agent.close()


async def test_a_tail_of_maximal_lines_fits_a_default_client(ready: Plane) -> None:
    agent, engine, run_id, _ = await drive_to_running(ready)
    seq = 0
    for _ in range(15):
        batch = [types_pb2.LogLine(seq=seq + i + 1, text="z" * LINE_LIMIT) for i in range(10)]
        seq += len(batch)
        engine.send(engine_pb2.ReportRequest(log_batch=engine_pb2.LogBatch(lines=batch)))
        assert (await engine.receive("log_ack")).stored_seq == seq
    try:
        tail = [m async for m in ready.control.TailLogs(pb.TailLogsRequest(run_id=run_id))]
        assert [line.seq for m in tail for line in m.lines] == list(range(1, seq + 1))
        # Every message stays well under a default client's 4 MiB limit.
        assert max(m.ByteSize() for m in tail) <= (1 << 20) + 2 * LINE_LIMIT
    finally:
        await engine.close()
        await agent.close()
