"""Who may call what, against a real server: every kind of token on every service.

The matrix below is the contract users rely on: no token, an unknown, revoked or expired one
is UNAUTHENTICATED everywhere; a valid token outside its scope is PERMISSION_DENIED; and a
refused call changes nothing (no run taken, no line written, no token minted).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from control_plane.auth import registry
from control_plane.auth.registry import Tokens
from control_plane.config import ServerConfig
from control_plane.errors import Unauthenticated
from control_plane.server import build
from flowyard.v1 import agent_pb2, agent_pb2_grpc, engine_pb2, engine_pb2_grpc, types_pb2
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import control_plane_pb2_grpc as pb_grpc
from tests.bearer import admin_token

from .conftest import RECEIVE_TIMEOUT, Plane, Stream, agent_stream, drive_to_running

S = types_pb2
Code = grpc.StatusCode
OK = Code.OK
UNAUTH = Code.UNAUTHENTICATED
DENIED = Code.PERMISSION_DENIED


@dataclass
class Bare:
    """Stubs on a channel that adds no token: each call says who it is."""

    control: pb_grpc.ControlPlaneServiceStub
    agents: agent_pb2_grpc.AgentServiceStub
    engines: engine_pb2_grpc.EngineServiceStub


def bearer(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {token}"),) if token is not None else None


async def status_of(call: Awaitable[object]) -> Code:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        assert error.details(), f"{error.code()} without a message"
        return error.code()
    return OK


async def first_answer(call: Any, first: Any, kind: str) -> tuple[Code, Any]:
    """Send ``first`` on a bidirectional ``call`` and read the answer: the server's status,
    and its first message of ``kind`` when OK.

    The message is written on the call itself, not through a request iterator: when the
    server refuses the call at once, gRPC's iterator path may report its own failure to write
    (INTERNAL) instead of the server's status, while a direct write that fails leaves the
    status to be read.
    """
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
        await call.write(first)
    try:
        message = await asyncio.wait_for(call.read(), RECEIVE_TIMEOUT)
    except grpc.aio.AioRpcError as error:
        assert error.details(), f"{error.code()} without a message"
        return error.code(), None
    assert message is not grpc.aio.EOF, "the stream ended without a status"
    assert message.WhichOneof("message") == kind, message
    return OK, getattr(message, kind)


async def opened(open_call: Callable[[], Any], first: Any, kind: str) -> tuple[Code, Any]:
    """Open a bidirectional stream with ``open_call``, send ``first`` and read the answer:
    the server's status and the call (still open when OK; the caller cancels it).

    A stream the server refuses at once may still see the client's own write fail and report
    INTERNAL instead of the server's status (seen on a loaded machine, on both the agent and
    the engine stream): such a probe is made again, twice at most; a server that answers
    INTERNAL every time still fails.
    """
    for _ in range(3):
        call = open_call()
        try:
            status, _ = await first_answer(call, first, kind)
        except BaseException:
            call.cancel()
            raise
        if status is not grpc.StatusCode.INTERNAL:
            break
        call.cancel()
    return status, call


async def connect_status(bare: Bare, token: str | None, pool: str) -> Code:
    """Open an agent session for ``pool`` (capacity 0: it takes no run) and close it."""
    hello = agent_pb2.Hello(agent_name="probe", pool=pool, capacity=0, runtime="process")
    status, call = await opened(
        lambda: bare.agents.Connect(metadata=bearer(token)),
        agent_pb2.ConnectRequest(hello=hello),
        "welcome",
    )
    call.cancel()
    return status


async def report_status(bare: Bare, token: str | None, run_id: str) -> Code:
    """Open the engine stream of ``run_id`` attempt 1; if it opens, write a line with it."""
    status, call = await opened(
        lambda: bare.engines.Report(metadata=bearer(token)),
        engine_pb2.ReportRequest(open=engine_pb2.Open(run_id=run_id, attempt=1)),
        "opened",
    )
    try:
        if status is OK:
            # The run's own engine: its stream takes lines (one after the stored ones).
            await call.write(
                engine_pb2.ReportRequest(
                    log_batch=engine_pb2.LogBatch(lines=[S.LogLine(seq=1, text="from engine")])
                )
            )
            while (message := await asyncio.wait_for(call.read(), RECEIVE_TIMEOUT)).WhichOneof(
                "message"
            ) == "heartbeat":
                continue
            assert message.log_ack.stored_seq == 1, message
        return status
    finally:
        call.cancel()


@pytest.fixture
async def bare(plane: Plane) -> AsyncIterator[Bare]:
    async with grpc.aio.insecure_channel(plane.address) as channel:
        yield Bare(
            pb_grpc.ControlPlaneServiceStub(channel),
            agent_pb2_grpc.AgentServiceStub(channel),
            engine_pb2_grpc.EngineServiceStub(channel),
        )


async def until(condition: Callable[[], Awaitable[bool]], what: str, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def agent_token(plane: Plane, pool: str, ttl: int = 0) -> pb.CreateTokenResponse:
    return await plane.control.CreateToken(
        pb.CreateTokenRequest(kind=pb.TOKEN_KIND_AGENT, pool=pool, ttl_seconds=ttl)
    )


@pytest.mark.short_lease
async def test_every_token_kind_on_every_service(plane: Plane, bare: Bare) -> None:
    await plane.pool("pool-a")
    await plane.pool("pool-b")
    await plane.deployment("hello", "pool-a")
    await plane.deployment("hello-b", "pool-b")
    # Run X is RUNNING, its engine streaming; run Y is held by an agent of pool B.
    agent_a, engine_x, run_x, token_x = await drive_to_running(plane)
    agent_b = agent_stream(plane, pool="pool-b", name="agent-b")
    await agent_b.receive("welcome")
    run_y = (await plane.run("hello-b")).id
    token_y = (await agent_b.receive("assign")).engine_token
    agent_b.send(agent_pb2.ConnectRequest(accepted=agent_pb2.Accepted(run_id=run_y, attempt=1)))
    agent_b.send(
        agent_pb2.ConnectRequest(
            submitted=agent_pb2.Submitted(run_id=run_y, attempt=1, infrastructure_id="p/y/1")
        )
    )
    await plane.wait_state(run_y, S.STATE_TYPE_PENDING)
    # A run of pool B that no agent may take while the matrix runs (nobody has credit).
    waiting_b = (await plane.run("hello-b")).id

    # A superseded assignment of run Z: its agent never accepted, the lease ran out, and the
    # run went to another agent with a new token.
    await plane.pool("pool-c")
    await plane.deployment("hello-c", "pool-c")
    silent = agent_stream(plane, pool="pool-c", name="silent")
    await silent.receive("welcome")
    run_z = (await plane.run("hello-c")).id
    old_z = (await silent.receive("assign")).engine_token
    await plane.wait_state(run_z, S.STATE_TYPE_SCHEDULED, wait=10)
    await silent.close()
    taker = agent_stream(plane, pool="pool-c", name="taker")
    await taker.receive("welcome")
    assert (await taker.receive("assign")).engine_token != old_z

    admin = admin_token(plane.data_dir)
    token_a = (await agent_token(plane, "pool-a")).token
    token_b = (await agent_token(plane, "pool-b")).token
    revoked = await agent_token(plane, "pool-a")
    await plane.control.RevokeToken(pb.RevokeTokenRequest(id=revoked.info.id))
    revoked_admin = await plane.control.CreateToken(pb.CreateTokenRequest(kind=pb.TOKEN_KIND_ADMIN))
    await plane.control.RevokeToken(pb.RevokeTokenRequest(id=revoked_admin.info.id))
    expired = await agent_token(plane, "pool-a", ttl=1)

    async def is_expired() -> bool:
        return await connect_status(bare, expired.token, "pool-a") == UNAUTH

    await until(is_expired, "the 1 s token to expire")

    tokens_before = len((await plane.control.ListTokens(pb.ListTokensRequest())).tokens)

    #: token -> expected (ListPools, CreateToken, Connect pool-a, Connect pool-b,
    #: StartRun X, Report X)
    matrix: dict[str, tuple[str | None, tuple[Code, ...]]] = {
        "none": (None, (UNAUTH,) * 6),
        "garbage": ("garbage", (UNAUTH,) * 6),
        "forged id": ("0123456789abcdef.secret", (UNAUTH,) * 6),
        "forged engine": (f"run-{run_x}-1.secret", (UNAUTH,) * 6),
        "revoked agent": (revoked.token, (UNAUTH,) * 6),
        "revoked admin": (revoked_admin.token, (UNAUTH,) * 6),
        "expired agent": (expired.token, (UNAUTH,) * 6),
        "admin": (admin, (OK, OK, OK, OK, DENIED, DENIED)),
        "agent of pool A": (token_a, (DENIED, DENIED, OK, DENIED, DENIED, DENIED)),
        "agent of pool B": (token_b, (DENIED, DENIED, DENIED, OK, DENIED, DENIED)),
        "engine of run X": (token_x, (DENIED, DENIED, DENIED, DENIED, OK, OK)),
        "engine of run Y": (token_y, (DENIED, DENIED, DENIED, DENIED, DENIED, DENIED)),
        "engine of a superseded assignment": (old_z, (UNAUTH,) * 6),
    }
    got: dict[str, tuple[Code, ...]] = {}
    for name, (token, _) in matrix.items():
        metadata = bearer(token)
        got[name] = (
            await status_of(bare.control.ListPools(pb.ListPoolsRequest(), metadata=metadata)),
            await status_of(
                bare.control.CreateToken(
                    pb.CreateTokenRequest(kind=pb.TOKEN_KIND_ADMIN, description="escalation"),
                    metadata=metadata,
                )
            ),
            await connect_status(bare, token, "pool-a"),
            await connect_status(bare, token, "pool-b"),
            await status_of(
                bare.engines.StartRun(
                    engine_pb2.StartRunRequest(run_id=run_x, attempt=1), metadata=metadata
                )
            ),
            # The run's own engine stream is already open: a second one with the right token
            # opens too; any other token must not.
            await report_status(bare, token, run_x),
        )
    assert got == {name: expected for name, (_, expected) in matrix.items()}

    # Only the admin minted a token; no intruder wrote a line or took a run.
    tokens_after = (await plane.control.ListTokens(pb.ListTokensRequest())).tokens
    assert len(tokens_after) == tokens_before + 1
    assert [t.description for t in tokens_after].count("escalation") == 1
    lines = [
        line.text
        async for message in plane.control.TailLogs(pb.TailLogsRequest(run_id=run_x))
        for line in message.lines
    ]
    # Only the run's own engine wrote (once); no other token opened its stream.
    assert lines == ["from engine"]
    assert (await plane.get(waiting_b)).run.state.type == S.STATE_TYPE_SCHEDULED
    assert (await plane.get(run_y)).run.state.type == S.STATE_TYPE_PENDING
    for stream in (agent_a, engine_x, agent_b, taker):
        await stream.close()


async def test_an_engine_token_never_reports_for_another_run(ready: Plane) -> None:
    """The engine of run X cannot write run Y's state or logs, nor learn whether Y exists."""
    await ready.pool("pool-b")
    await ready.deployment("hello-b", "pool-b")
    agent, engine, _, token_x = await drive_to_running(ready)
    run_y = (await ready.run("hello-b")).id
    for target in (run_y, "f" * 32):  # an existing run of another pool, and no run at all
        stream = Stream(ready.engines.Report, metadata=bearer(token_x))
        stream.send(engine_pb2.ReportRequest(open=engine_pb2.Open(run_id=target, attempt=1)))
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stream.receive("opened")
        await stream.close()
        assert error.value.code() == DENIED
        assert "may not report for run" in (error.value.details() or "")
    assert (await ready.get(run_y)).run.state.type == S.STATE_TYPE_SCHEDULED
    assert len((await ready.get(run_y)).history) == 1
    await engine.close()
    await agent.close()


async def test_a_stranger_cannot_tell_whether_a_run_exists(ready: Plane, bare: Bare) -> None:
    run = await ready.run()
    answers = set()
    for run_id in (run.id, "0" * 32):
        for token in (None, "garbage", f"run-{run_id}-1.guess"):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await bare.engines.StartRun(
                    engine_pb2.StartRunRequest(run_id=run_id, attempt=1), metadata=bearer(token)
                )
            answers.add((error.value.code(), run_id in (error.value.details() or "")))
    assert answers == {(UNAUTH, False)}


async def test_revoking_an_agent_token_cuts_its_session_off(ready: Plane, bare: Bare) -> None:
    created = await agent_token(ready, "pool-a")
    stream = Stream(bare.agents.Connect, metadata=bearer(created.token))
    stream.send(
        agent_pb2.ConnectRequest(
            hello=agent_pb2.Hello(agent_name="a", pool="pool-a", capacity=1, runtime="process")
        )
    )
    await stream.receive("welcome")
    revoked = await ready.control.RevokeToken(pb.RevokeTokenRequest(id=created.info.id))
    assert revoked.info.revoked and revoked.info.id == created.info.id
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stream.receive("assign")
    assert error.value.code() == UNAUTH and "revoked" in (error.value.details() or "")
    await stream.close()
    # The cache forgot it too: a reconnect is refused at once.
    assert await connect_status(bare, created.token, "pool-a") == UNAUTH


async def test_token_rpcs_validate_and_never_show_a_secret(ready: Plane) -> None:
    created = await agent_token(ready, "pool-a", ttl=3600)
    assert created.token.startswith(f"{created.info.id}.")
    assert created.info.kind == pb.TOKEN_KIND_AGENT and created.info.pool == "pool-a"
    assert created.info.HasField("expire_time")
    listed = (await ready.control.ListTokens(pb.ListTokensRequest())).tokens
    assert [t.kind for t in listed] == [pb.TOKEN_KIND_ADMIN, pb.TOKEN_KIND_AGENT]
    assert created.token.split(".")[1] not in str(listed)
    bad = [
        (pb.CreateTokenRequest(kind=pb.TOKEN_KIND_AGENT), Code.INVALID_ARGUMENT, "pool"),
        (pb.CreateTokenRequest(kind=pb.TOKEN_KIND_AGENT, pool="nope"), Code.NOT_FOUND, "nope"),
        (
            pb.CreateTokenRequest(kind=pb.TOKEN_KIND_ADMIN, pool="pool-a"),
            Code.INVALID_ARGUMENT,
            "pool",
        ),
        (pb.CreateTokenRequest(), Code.INVALID_ARGUMENT, "kind"),
        (
            pb.CreateTokenRequest(kind=pb.TOKEN_KIND_ADMIN, ttl_seconds=-1),
            Code.INVALID_ARGUMENT,
            "ttl_seconds",
        ),
    ]
    for request, code, word in bad:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await ready.control.CreateToken(request)
        assert error.value.code() == code and word in (error.value.details() or ""), request
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await ready.control.RevokeToken(pb.RevokeTokenRequest(id="0123456789abcdef"))
    assert error.value.code() == Code.NOT_FOUND
    assert len((await ready.control.ListTokens(pb.ListTokensRequest())).tokens) == len(listed)


async def test_verified_tokens_are_cached_not_read_per_call(
    ready: Plane, bare: Bare, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = await ready.control.CreateToken(pb.CreateTokenRequest(kind=pb.TOKEN_KIND_ADMIN))
    reads = 0
    original = registry.repo.get_token

    async def counting(*args: object) -> object:
        nonlocal reads
        reads += 1
        return await original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(registry.repo, "get_token", counting)
    for _ in range(20):
        await bare.control.ListPools(pb.ListPoolsRequest(), metadata=bearer(fresh.token))
    assert reads == 1


async def test_a_revoked_admin_token_file_is_not_replaced_behind_the_admins_back(
    tmp_path: Path,
) -> None:
    config = ServerConfig(port=0, data_dir=tmp_path)
    app = await build(config)
    try:
        first = admin_token(tmp_path)
        tokens = Tokens(app.db, app.bus)
        await tokens.revoke(first.split(".")[0])
    finally:
        await app.db.close()
    app = await build(config)
    try:
        assert admin_token(tmp_path) == first
        with pytest.raises(Unauthenticated, match="revoked"):
            await Tokens(app.db, app.bus).verify(first)
    finally:
        await app.db.close()
