"""WatchRun and TailLogs wait for changes only while their caller is there.

Whatever ends a call (a run that is finished or unknown, a client that hangs up), the server
forgets that the call was waiting: the registry of waiters drains to empty, so a long-lived
server does not grow with every watch it ever served.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2
from tests.waiting import eventually

from .conftest import Plane

#: Calls of each kind per case: enough that a leak per call cannot go unnoticed.
CALLS = 20
DRAIN_SECONDS = 15.0


async def drained(plane: Plane) -> None:
    await eventually(
        lambda: len(plane.app.signals) == 0,
        within=DRAIN_SECONDS,
        what=f"the waiters to drain (still {len(plane.app.signals)})",
    )


async def test_watching_a_finished_run_leaves_no_waiter(ready: Plane) -> None:
    run = await ready.run()
    await ready.control.CancelRun(pb.CancelRunRequest(run_id=run.id))
    for _ in range(CALLS):
        watched = [m async for m in ready.control.WatchRun(pb.WatchRunRequest(run_id=run.id))]
        assert watched[-1].run.state.type == types_pb2.STATE_TYPE_CANCELLED
        tailed = [
            m async for m in ready.control.TailLogs(pb.TailLogsRequest(run_id=run.id, follow=True))
        ]
        assert tailed[-1].state.type == types_pb2.STATE_TYPE_CANCELLED
    await drained(ready)


async def test_watching_an_unknown_run_leaves_no_waiter(ready: Plane) -> None:
    unknown = uuid.uuid4().hex
    for _ in range(CALLS):
        for call in (
            ready.control.WatchRun(pb.WatchRunRequest(run_id=unknown)),
            ready.control.TailLogs(pb.TailLogsRequest(run_id=unknown, follow=True)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await call.read()
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
    await drained(ready)


async def test_a_client_that_hangs_up_leaves_no_waiter(ready: Plane) -> None:
    # No agent: the runs stay SCHEDULED, so every call waits. One run per call, so that
    # counting the runs waited on counts the calls.
    runs = [await ready.run() for _ in range(2 * CALLS)]
    for _ in range(2):
        watches = [
            ready.control.WatchRun(pb.WatchRunRequest(run_id=run.id)) for run in runs[:CALLS]
        ]
        tails = [
            ready.control.TailLogs(pb.TailLogsRequest(run_id=run.id, follow=True))
            for run in runs[CALLS:]
        ]
        for watch in watches:
            first = await asyncio.wait_for(watch.read(), DRAIN_SECONDS)
            assert first.run.state.type == types_pb2.STATE_TYPE_SCHEDULED
        await eventually(
            lambda: len(ready.app.signals) >= 2 * CALLS,
            within=DRAIN_SECONDS,
            what="every call to wait for its run to change",
        )
        for call in [*watches, *tails]:
            call.cancel()
        await drained(ready)
