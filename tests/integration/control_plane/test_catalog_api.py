"""Pools and deployments over gRPC: happy paths, and bad input answered with the right status."""

import json

import grpc
import pytest

from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2

from .conftest import Plane


def count_rows(plane: Plane, table: str) -> int:
    return plane.count_rows(table)


async def test_create_and_list_pools(plane: Plane) -> None:
    created = await plane.pool("alpha")
    assert created.type == types_pb2.POOL_TYPE_PROCESS
    assert json.loads(created.base_job_template_json)["variables"]["properties"]["env"]
    await plane.pool("beta")
    listed = await plane.control.ListPools(pb.ListPoolsRequest())
    assert [p.name for p in listed.pools] == ["alpha", "beta"]


@pytest.mark.parametrize(
    ("request_", "code", "fragment"),
    [
        (
            pb.CreatePoolRequest(name="Bad Name", type=types_pb2.POOL_TYPE_PROCESS),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not a valid pool name",
        ),
        (pb.CreatePoolRequest(name="ok"), grpc.StatusCode.INVALID_ARGUMENT, "type: must be"),
        (
            pb.CreatePoolRequest(name="ok", type=types_pb2.POOL_TYPE_PROCESS, concurrency_limit=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "concurrency_limit",
        ),
        (
            pb.CreatePoolRequest(
                name="ok", type=types_pb2.POOL_TYPE_PROCESS, base_job_template_json="[]"
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "must be a JSON object",
        ),
    ],
)
async def test_bad_pools_are_rejected_and_nothing_is_stored(
    plane: Plane, request_: pb.CreatePoolRequest, code: grpc.StatusCode, fragment: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await plane.control.CreatePool(request_)
    assert error.value.code() == code
    assert fragment in (error.value.details() or "")
    assert count_rows(plane, "pools") == 0


async def test_duplicate_pool_is_already_exists(plane: Plane) -> None:
    await plane.pool("alpha")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await plane.pool("alpha")
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert count_rows(plane, "pools") == 1


async def test_unknown_pool_is_not_found(plane: Plane) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await plane.control.GetPool(pb.GetPoolRequest(name="nope"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "pool 'nope' not found" in (error.value.details() or "")


async def test_upsert_creates_then_updates_and_says_what_it_replaced(plane: Plane) -> None:
    await plane.pool()
    first = await plane.deployment()
    assert first.flow_name == "hello"
    request = pb.UpsertDeploymentRequest(
        deployment=types_pb2.Deployment(
            name="hello",
            entrypoint="flow.py:hello",
            source=first.source,
            pool="pool-a",
            description="v2",
        )
    )
    response = await plane.control.UpsertDeployment(request)
    assert not response.created
    assert response.deployment.id == first.id
    assert response.deployment.description == "v2"
    assert response.previous == first
    # The same again changes nothing, and says so: what it found is what is stored.
    again = await plane.control.UpsertDeployment(request)
    assert not again.created
    assert again.previous == again.deployment == response.deployment


async def test_an_upsert_that_creates_has_no_previous_deployment(plane: Plane) -> None:
    await plane.pool()
    response = await plane.control.UpsertDeployment(
        pb.UpsertDeploymentRequest(
            deployment=types_pb2.Deployment(
                name="new",
                entrypoint="flow.py:hello",
                source=types_pb2.Source(local=types_pb2.LocalSource(path=str(plane.data_dir))),
                pool="pool-a",
            )
        )
    )
    assert response.created
    assert not response.HasField("previous")


@pytest.mark.parametrize(
    ("change", "code", "fragment"),
    [
        ({"entrypoint": "flow.py"}, grpc.StatusCode.INVALID_ARGUMENT, "deployment.entrypoint"),
        ({"pool": "missing"}, grpc.StatusCode.NOT_FOUND, "pool 'missing' not found"),
        ({"name": "bad name!"}, grpc.StatusCode.INVALID_ARGUMENT, "not a valid deployment name"),
        (
            {"parameters_json": '{"nope": 1}'},
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown parameter 'nope'",
        ),
        (
            {"job_variables_json": '{"image": "x"}'},
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown job variable 'image'",
        ),
        (
            {"parameter_schema_json": '{"type": 5}'},
            grpc.StatusCode.INVALID_ARGUMENT,
            "not a valid JSON Schema",
        ),
    ],
)
async def test_bad_deployments_are_rejected_and_nothing_is_stored(
    plane: Plane, change: dict[str, str], code: grpc.StatusCode, fragment: str
) -> None:
    await plane.pool()
    fields = {
        "name": "hello",
        "entrypoint": "flow.py:hello",
        "source": types_pb2.Source(local=types_pb2.LocalSource(path=str(plane.data_dir))),
        "pool": "pool-a",
        "parameter_schema_json": json.dumps(
            {
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "additionalProperties": False,
            }
        ),
        **change,
    }
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await plane.control.UpsertDeployment(
            pb.UpsertDeploymentRequest(deployment=types_pb2.Deployment(**fields))
        )
    assert error.value.code() == code
    assert fragment in (error.value.details() or "")
    assert count_rows(plane, "deployments") == 0


async def test_delete_deployment_refuses_while_runs_are_unfinished(plane: Plane) -> None:
    await plane.pool()
    await plane.deployment()
    run = await plane.run()
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await plane.control.DeleteDeployment(pb.DeleteDeploymentRequest(name="hello"))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await plane.control.CancelRun(pb.CancelRunRequest(run_id=run.id))
    await plane.control.DeleteDeployment(pb.DeleteDeploymentRequest(name="hello"))
    assert count_rows(plane, "deployments") == 0
    assert count_rows(plane, "flow_runs") == 0
