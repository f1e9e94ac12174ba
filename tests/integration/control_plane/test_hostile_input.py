"""Input that used to escape as INTERNAL or UNKNOWN: request bodies that are not protobuf, and
regular expressions in schemas that nest deeper than Python's stack allows to compile.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from flowyard.v1 import agent_pb2, control_plane_pb2, engine_pb2, types_pb2

from .conftest import Plane, Stream, agent_stream

#: Not a protobuf message: a field key whose varint never ends.
GARBAGE = b"\xff\xff"
DEEP_PATTERN = "(" * 300 + "a" + ")" * 300
SERVICES = [
    control_plane_pb2.DESCRIPTOR.services_by_name["ControlPlaneService"],
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"],
    engine_pb2.DESCRIPTOR.services_by_name["EngineService"],
]
METHODS = [method for service in SERVICES for method in service.methods]


async def _engine_attempt(plane: Plane) -> tuple[Stream, str, str]:
    """An agent holding a submitted run, the run's id and its engine token (valid while the
    agent holds it)."""
    agent = agent_stream(plane)
    await agent.receive("welcome")
    await plane.run()
    assign = await agent.receive("assign")
    agent.send(
        agent_pb2.ConnectRequest(accepted=agent_pb2.Accepted(run_id=assign.run_id, attempt=1))
    )
    submitted = agent_pb2.Submitted(run_id=assign.run_id, attempt=1, infrastructure_id="p/h/1")
    agent.send(agent_pb2.ConnectRequest(submitted=submitted))
    await plane.wait_state(assign.run_id, types_pb2.STATE_TYPE_PENDING)
    return agent, assign.run_id, assign.engine_token


def _valid_first(method: Any, run_id: str) -> bytes:
    """A valid first message of a request stream, so that the garbage arrives second."""
    if method.input_type.name == "ConnectRequest":
        hello = agent_pb2.Hello(agent_name="a", pool="pool-a", capacity=1, runtime="process")
        return agent_pb2.ConnectRequest(hello=hello).SerializeToString()
    return engine_pb2.ReportRequest(
        open=engine_pb2.Open(run_id=run_id, attempt=1)
    ).SerializeToString()


async def _call_with_garbage(
    plane: Plane, method: Any, metadata: Any, first: bytes = b""
) -> grpc.aio.AioRpcError:
    path = f"/{method.containing_service.full_name}/{method.name}"
    channel = plane.channel
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        if method.client_streaming:

            async def requests() -> AsyncIterator[bytes]:
                if first:
                    yield first
                yield GARBAGE

            call = channel.stream_stream(path)(requests(), metadata=metadata, timeout=10)
            async for _ in call:
                pass
        elif method.server_streaming:
            async for _ in channel.unary_stream(path)(GARBAGE, metadata=metadata, timeout=10):
                pass
        else:
            await channel.unary_unary(path)(GARBAGE, metadata=metadata, timeout=10)
    return failed.value


@pytest.mark.parametrize("method", METHODS, ids=[m.full_name for m in METHODS])
async def test_a_body_that_is_not_protobuf_is_an_invalid_argument_on_every_method(
    ready: Plane, method: Any, caplog: pytest.LogCaptureFixture
) -> None:
    metadata, run_id, agent = None, "", None
    if method.containing_service.name == "EngineService":
        agent, run_id, token = await _engine_attempt(ready)
        metadata = (("authorization", f"Bearer {token}"),)
    caplog.set_level(logging.ERROR)
    firsts = [b"", _valid_first(method, run_id)] if method.client_streaming else [b""]
    for first in firsts:
        error = await _call_with_garbage(ready, method, metadata, first)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
        assert f"not a valid {method.input_type.full_name} message" in (error.details() or "")
    if agent is not None:
        await agent.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_garbage_without_a_token_is_still_unauthenticated(plane: Plane) -> None:
    channel = grpc.aio.insecure_channel(plane.address)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await channel.unary_unary("/flowyard.v1.ControlPlaneService/ListPools")(GARBAGE)
        assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await channel.close()


def _schema(pattern: str, where: str) -> dict[str, Any]:
    if where == "patternProperties":
        return {"type": "object", "patternProperties": {pattern: {"type": "string"}}}
    return {"type": "object", "properties": {"name": {"type": "string", "pattern": pattern}}}


@pytest.mark.parametrize("where", ["pattern", "patternProperties"])
async def test_a_deeply_nested_pattern_in_a_parameter_schema_is_an_invalid_argument(
    ready: Plane, where: str
) -> None:
    deployment = await ready.deployment()
    deployment.parameter_schema_json = json.dumps(_schema(DEEP_PATTERN, where))
    deployment.parameters_json = ""
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await ready.control.UpsertDeployment(
            control_plane_pb2.UpsertDeploymentRequest(deployment=deployment)
        )
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = failed.value.details() or ""
    assert details.startswith("deployment.parameter_schema_json: /")
    assert "nests groups 300 deep; at most 32 levels are allowed" in details
    # Nested as deep as allowed, it is accepted and used.
    deployment.parameter_schema_json = json.dumps(_schema("(" * 32 + "x" + ")" * 32, where))
    await ready.control.UpsertDeployment(
        control_plane_pb2.UpsertDeploymentRequest(deployment=deployment)
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        # "y" does not match; key "x" matches, and 1 is not a string.
        await ready.run(**({"name": "y"} if where == "pattern" else {"x": 1}))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_deeply_nested_pattern_in_a_pool_template_is_an_invalid_argument(
    plane: Plane,
) -> None:
    template = {
        "job_configuration": {"env": "{{ env }}"},
        "variables": {
            "type": "object",
            "properties": {
                "env": {"type": "object", "additionalProperties": _schema(DEEP_PATTERN, "pattern")}
            },
        },
    }
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await plane.control.CreatePool(
            control_plane_pb2.CreatePoolRequest(
                name="deep",
                type=types_pb2.POOL_TYPE_PROCESS,
                base_job_template_json=json.dumps(template),
            )
        )
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nests groups 300 deep" in (failed.value.details() or "")


#: A pattern that backtracks: Python's ``re`` takes time doubling with each "a" of a value
#: that almost matches (about a day for this one).
BACKTRACKING = "^(a|aa)+$"
ALMOST = "a" * 60 + "!"


@pytest.mark.parametrize("where", ["pattern", "patternProperties"])
async def test_a_pattern_that_backtracks_refuses_the_value_and_holds_no_one_up(
    ready: Plane, where: str
) -> None:
    deployment = await ready.deployment()
    schema = _schema(BACKTRACKING, where)
    if where == "patternProperties":
        schema["additionalProperties"] = False
    deployment.parameter_schema_json = json.dumps(schema)
    deployment.parameters_json = ""
    await ready.control.UpsertDeployment(
        control_plane_pb2.UpsertDeploymentRequest(deployment=deployment)
    )
    value = {"name": ALMOST} if where == "pattern" else {ALMOST: "x"}
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ready.run(**value)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert details.startswith("parameters: ")
    assert f"could not be matched against the pattern '{BACKTRACKING}'" in details
    assert "backtracks" in details
    # Values the pattern can tell about are taken or refused as before.
    ok = {"name": "aaa"} if where == "pattern" else {"aaa": "x"}
    assert (await ready.run(**ok)).id
    with pytest.raises(grpc.aio.AioRpcError) as mismatch:
        await ready.run(**({"name": "b"} if where == "pattern" else {"b": "x"}))
    assert mismatch.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_job_variable_checked_against_a_pattern_that_backtracks_is_refused(
    plane: Plane,
) -> None:
    template = {
        "job_configuration": {"command": "{{ tag }}"},
        "variables": {
            "type": "object",
            "properties": {"tag": {"type": "string", "pattern": BACKTRACKING}},
        },
    }
    await plane.control.CreatePool(
        control_plane_pb2.CreatePoolRequest(
            name="tags",
            type=types_pb2.POOL_TYPE_PROCESS,
            base_job_template_json=json.dumps(template),
        )
    )
    deployment = await plane.deployment(pool="tags")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await plane.control.CreateRun(
            control_plane_pb2.CreateRunRequest(
                deployment_name=deployment.name,
                parameters_json='{"name": "x"}',
                job_variables_json=json.dumps({"tag": ALMOST}),
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "could not be matched against the pattern" in (refused.value.details() or "")


async def test_unevaluated_properties_beside_pattern_properties_are_refused(ready: Plane) -> None:
    deployment = await ready.deployment()
    schema = _schema(BACKTRACKING, "patternProperties")
    schema["unevaluatedProperties"] = False
    deployment.parameter_schema_json = json.dumps(schema)
    deployment.parameters_json = ""
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await ready.control.UpsertDeployment(
            control_plane_pb2.UpsertDeploymentRequest(deployment=deployment)
        )
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "/unevaluatedProperties cannot be used in a schema with patternProperties" in (
        failed.value.details() or ""
    )
