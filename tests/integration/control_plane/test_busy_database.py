"""A database too busy to answer is the server's problem, not the caller's: UNAVAILABLE with a
retry hint, nothing half-written, and the same call succeeds once the database is free."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from control_plane.config import ServerConfig
from control_plane.server import build
from control_plane.store import db
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import control_plane_pb2_grpc, types_pb2
from tests.bearer import admin_token, aio_channel


@pytest.fixture
async def stub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[control_plane_pb2_grpc.ControlPlaneServiceStub]:
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 200)
    app = await build(ServerConfig(port=0, data_dir=tmp_path))
    await app.start()
    channel = aio_channel(f"127.0.0.1:{app.port}", admin_token(tmp_path))
    try:
        yield control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
    finally:
        await channel.close()
        await app.stop(10.0)


async def test_a_locked_database_answers_unavailable_with_a_hint(
    stub: control_plane_pb2_grpc.ControlPlaneServiceStub, tmp_path: Path
) -> None:
    request = pb.CreatePoolRequest(name="busy", type=types_pb2.POOL_TYPE_PROCESS)
    other = sqlite3.connect(tmp_path / "flowyard.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.CreatePool(request)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "database is busy" in (error.value.details() or "")
        trailers = dict(error.value.trailing_metadata() or ())
        assert trailers.get("grpc-retry-pushback-ms") == "1000"
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert not (await stub.ListPools(pb.ListPoolsRequest())).pools  # nothing half-written
    created = await stub.CreatePool(request)  # the same call, once the lock is gone
    assert created.pool.name == "busy"
