"""CreateRun checks a request before its write transaction, then inserts only if what it was
checked against is unchanged; a deployment changed in between gets the run planned again."""

import json

import grpc
import pytest

from control_plane.errors import InvalidArgument
from control_plane.orchestration.changes import Notifier
from control_plane.orchestration.runs import RunRequest, Runs, _Planned
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2

from .conftest import SCHEMA, Plane


async def test_a_run_checked_against_a_deployment_that_changed_is_not_inserted(
    ready: Plane,
) -> None:
    runs = Runs(ready.app.db, Notifier(ready.app.bus), ready.app.agents)
    request = RunRequest("hello", parameters_json='{"name": "x"}')
    plan = await runs._plan(request, {"name": "x"}, {}, None)
    # Between the check and the insert, the deployment starts to require another parameter.
    stricter = {
        **SCHEMA,
        "properties": {"name": {"type": "string"}, "count": {"type": "integer"}},
        "required": ["name", "count"],
    }
    current = (await ready.control.GetDeployment(pb.GetDeploymentRequest(name="hello"))).deployment
    current.parameter_schema_json = json.dumps(stricter)
    await ready.control.UpsertDeployment(pb.UpsertDeploymentRequest(deployment=current))

    assert isinstance(plan, _Planned)
    async with ready.app.db.write() as conn:
        assert await runs._insert(conn, [plan]) == [None]
    assert ready.count_rows("flow_runs") == 0
    # Planned again, the same request meets the deployment as it is now.
    with pytest.raises(InvalidArgument, match="count"):
        await runs.create(request)
    assert ready.count_rows("flow_runs") == 0
    run, created = await runs.create(
        RunRequest("hello", parameters_json='{"name": "x", "count": 2}')
    )
    assert created and run.parameters == {"name": "x", "count": 2}
    stored = (await ready.get(run.id)).run
    assert stored.state.type == types_pb2.STATE_TYPE_SCHEDULED


async def test_a_deployment_changed_since_the_last_run_was_created_is_read_again(
    ready: Plane,
) -> None:
    async def create(parameters: str = '{"name": "x"}') -> pb.CreateRunResponse:
        request = pb.CreateRunRequest(deployment_name="hello", parameters_json=parameters)
        response: pb.CreateRunResponse = await ready.control.CreateRun(request)
        return response

    first = (await create()).run
    # Stricter parameters: the next creation meets them, not what the first one read.
    current = (await ready.control.GetDeployment(pb.GetDeploymentRequest(name="hello"))).deployment
    current.parameter_schema_json = json.dumps(
        {**SCHEMA, "required": ["name", "count"]},
    )
    await ready.control.UpsertDeployment(pb.UpsertDeploymentRequest(deployment=current))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await create()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "count" in (refused.value.details() or "")
    # Gone: NOT_FOUND. Made again, on another pool: runs go to the new one.
    await ready.control.CancelRun(pb.CancelRunRequest(run_id=first.id, reason="test"))
    await ready.control.DeleteDeployment(pb.DeleteDeploymentRequest(name="hello"))
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await create()
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    await ready.pool("pool-b")
    await ready.deployment(pool="pool-b")
    again = (await create()).run
    assert again.pool == "pool-b"
    assert again.deployment_id != first.deployment_id
    assert ready.count_rows("flow_runs") == 1  # the first went with its deployment
