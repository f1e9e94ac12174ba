"""The server's standard services: health and reflection (what `buf curl` relies on)."""

import asyncio
import json
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.bearer import admin_token

from .conftest import Plane

BUF = str(Path(sys.executable).with_name("buf"))


async def test_health_reports_serving_without_a_token(plane: Plane) -> None:
    # Probes carry no token: health checking stays open.
    async with grpc.aio.insecure_channel(plane.address) as bare:
        stub = health_pb2_grpc.HealthStub(bare)
        for service in ("", "flowyard.v1.ControlPlaneService", "flowyard.v1.AgentService"):
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == health_pb2.HealthCheckResponse.SERVING


async def buf_curl(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        BUF,
        "curl",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode()


async def test_reflection_lets_a_generic_client_call_the_api(plane: Plane) -> None:
    code, out = await buf_curl("--list-services", f"http://{plane.address}")
    assert code == 0, out
    assert set(out.split()) >= {
        "flowyard.v1.ControlPlaneService",
        "flowyard.v1.AgentService",
        "flowyard.v1.EngineService",
        "grpc.health.v1.Health",
    }
    await plane.pool("from-buf")
    url = f"http://{plane.address}/flowyard.v1.ControlPlaneService/ListPools"
    # Reflection needs no token; the API does.
    code, out = await buf_curl("-d", "{}", url)
    assert code != 0 and "unauthenticated" in out.lower(), out
    token = admin_token(plane.data_dir)
    code, out = await buf_curl("-H", f"Authorization: Bearer {token}", "-d", "{}", url)
    assert code == 0, out
    assert [p["name"] for p in json.loads(out)["pools"]] == ["from-buf"]
