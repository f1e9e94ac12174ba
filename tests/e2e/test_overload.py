"""Load and overload against the control plane as a real process on SQLite.

The server runs in its own process so that the burst's client does not share its event loop.
Every answer to a burst must be OK, or RESOURCE_EXHAUSTED/UNAVAILABLE carrying a retry hint
(``grpc-retry-pushback-ms`` trailing metadata and "retry after N s" in the message); never
INTERNAL, and never a run stored that no OK answer names, or an OK answer naming a run that
is not stored. The measured throughput and latencies are printed (they are quoted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from control_plane.admission import RETRY_PUSHBACK_KEY
from control_plane.cli.client import open_channel
from control_plane.cli.processes import Child, start_server
from control_plane.server import MAX_STREAMS_PER_CONNECTION
from flowyard.v1 import agent_pb2, agent_pb2_grpc, control_plane_pb2_grpc, types_pb2
from flowyard.v1 import control_plane_pb2 as pb
from tests.bearer import aio_channel

from .conftest import wait_for

POOL = "load"
DEPLOYMENT = "burst"
FLOW = "def main(name: str = 'x') -> str:\n    return name\n"
#: Every call and every wait of these tests is bounded by this: a bound that catches a hang,
#: not a speed target (those are under bench/), so it leaves room for a loaded machine.
CALL_DEADLINE = 150.0
#: The server's default heartbeat interval: its silence limit is three of them.
AGENT_HEARTBEAT_SECONDS = 10.0
RETRYABLE = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
BURST = 1000
STORM = 2000
#: The server takes at most 1,000 streams per connection (MAX_STREAMS_PER_CONNECTION), so
#: the storm's client spreads its streams over several connections, as 2,000 agents would.
STORM_CONNECTIONS = 4

# Several waits of CALL_DEADLINE each can follow one another in a test.
pytestmark = pytest.mark.timeout(4 * CALL_DEADLINE)


@dataclass
class Answer:
    """How one CreateRun call ended."""

    code: grpc.StatusCode
    seconds: float
    run_id: str = ""
    details: str = ""
    pushback_ms: int | None = None

    @property
    def ok(self) -> bool:
        return self.code is grpc.StatusCode.OK


@dataclass
class Server:
    """A control plane process with a pool and a deployment."""

    child: Child
    data_dir: Path

    @property
    def address(self) -> str:
        return self.child.extra["address"]

    @property
    def token(self) -> str:
        """The admin token (it outlives restarts of the server)."""
        return self.child.extra["token"]

    def stored_run_ids(self) -> set[str]:
        """Run ids straight from the database file."""
        with contextlib.closing(sqlite3.connect(self.data_dir / "flowyard.db")) as db:
            return {row[0] for row in db.execute("SELECT id FROM flow_runs")}

    def errors_logged(self) -> list[str]:
        text = self.child.log_path.read_text(errors="replace")
        return [line for line in text.splitlines() if " ERROR " in line or "Traceback" in line]


def channel(address: str, token: str) -> grpc.aio.Channel:
    # A channel of its own connection: channels with equal arguments share one otherwise.
    return aio_channel(address, token, options=[("grpc.use_local_subchannel_pool", 1)])


def report(config: pytest.Config, line: str) -> None:
    """Print a measurement even when output is captured."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if capture is None or reporter is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.ensure_newline()
        reporter.write_line(line)


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))]


def summary(what: str, answers: list[Answer], wall: float) -> str:
    seconds = [a.seconds for a in answers]
    ok = sum(a.ok for a in answers)
    return (
        f"{what}: {ok} OK, {len(answers) - ok} refused in {wall:.2f} s = "
        f"{len(answers) / wall:.0f} calls/s ({ok / wall:.0f} OK/s); latency "
        f"p50 {percentile(seconds, 50) * 1000:.0f} ms, p99 {percentile(seconds, 99) * 1000:.0f} ms"
    )


async def create_runs(
    stub: control_plane_pb2_grpc.ControlPlaneServiceStub, keys: list[str]
) -> tuple[list[Answer], float]:
    """One CreateRun per key ("" for none), all in flight at once; the answers and wall time."""

    async def one(index: int, key: str) -> Answer:
        started = time.perf_counter()
        request = pb.CreateRunRequest(
            deployment_name=DEPLOYMENT,
            parameters_json=json.dumps({"name": str(index)}),
            idempotency_key=key,
        )
        try:
            response = await stub.CreateRun(request, timeout=CALL_DEADLINE)
        except grpc.aio.AioRpcError as error:
            pushback = dict(error.trailing_metadata() or ()).get(RETRY_PUSHBACK_KEY)
            return Answer(
                error.code(),
                time.perf_counter() - started,
                details=error.details() or "",
                pushback_ms=int(pushback) if isinstance(pushback, str) else None,
            )
        return Answer(grpc.StatusCode.OK, time.perf_counter() - started, response.run.id)

    started = time.perf_counter()
    answers = await asyncio.gather(*(one(i, key) for i, key in enumerate(keys)))
    return list(answers), time.perf_counter() - started


def assert_well_formed(answers: list[Answer]) -> None:
    """OK, or refused with a retry hint; nothing else."""
    for answer in answers:
        if answer.ok:
            continue
        assert answer.code in RETRYABLE, f"{answer.code.name}: {answer.details}"
        assert answer.pushback_ms is not None and 0 < answer.pushback_ms <= 30_000, answer
        assert "retry after" in answer.details, answer.details


async def retry_refused(
    stub: control_plane_pb2_grpc.ControlPlaneServiceStub,
    keys: list[str],
    answers: list[Answer],
) -> list[Answer]:
    """Each refused call waits as long as its answer said, calls again, until it is OK."""
    deadline = time.monotonic() + CALL_DEADLINE

    async def retry(index: int) -> Answer:
        answer = answers[index]
        while not answer.ok:
            assert time.monotonic() < deadline, f"still refused: {answer}"
            await asyncio.sleep((answer.pushback_ms or 1000) / 1000)
            (answer,), _ = await create_runs(stub, [keys[index]])
            assert_well_formed([answer])
        return answer

    return list(await asyncio.gather(*(retry(i) for i in range(len(answers)))))


async def listed_runs(stub: control_plane_pb2_grpc.ControlPlaneServiceStub) -> list[Any]:
    runs: list[Any] = []
    token = ""
    while True:
        page = await stub.ListRuns(
            pb.ListRunsRequest(deployment_name=DEPLOYMENT, page_size=500, page_token=token),
            timeout=CALL_DEADLINE,
        )
        runs += page.runs
        if not (token := page.next_page_token):
            return runs


def start(root: Path, *args: str) -> Server:
    return Server(start_server(root, extra_args=list(args)), root)


def prepare(server: Server) -> None:
    """Create the pool and the deployment the tests use."""
    source = server.data_dir / "flow"
    source.mkdir(exist_ok=True)
    (source / "flow.py").write_text(FLOW)
    with open_channel(server.address, server.token) as sync_channel:
        stub = control_plane_pb2_grpc.ControlPlaneServiceStub(sync_channel)
        stub.CreatePool(pb.CreatePoolRequest(name=POOL, type=types_pb2.POOL_TYPE_PROCESS))
        stub.UpsertDeployment(
            pb.UpsertDeploymentRequest(
                deployment=types_pb2.Deployment(
                    name=DEPLOYMENT,
                    entrypoint="flow.py:main",
                    source=types_pb2.Source(local=types_pb2.LocalSource(path=str(source))),
                    pool=POOL,
                )
            ),
            timeout=CALL_DEADLINE,
        )


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Starts control plane processes (flags as arguments); stops them all at the end."""
    started: list[Server] = []

    def factory(*args: str) -> Server:
        server = start(tmp_path / "server", *args)
        started.append(server)
        prepare(server)
        return server

    yield factory
    for server in started:
        server.child.stop()


@pytest.fixture
async def stub(servers: Callable[..., Server]) -> AsyncIterator[Any]:
    server = servers()
    async with channel(server.address, server.token) as ch:
        yield server, control_plane_pb2_grpc.ControlPlaneServiceStub(ch)


async def test_a_burst_of_create_run_loses_and_duplicates_nothing(
    stub: tuple[Server, Any], pytestconfig: pytest.Config
) -> None:
    server, control = stub
    answers, wall = await create_runs(control, [""] * BURST)
    report(pytestconfig, summary(f"{BURST} concurrent CreateRun", answers, wall))

    assert_well_formed(answers)
    ok_ids = [a.run_id for a in answers if a.ok]
    assert len(set(ok_ids)) == len(ok_ids), "an OK answer named a run another one named"
    assert server.stored_run_ids() == set(ok_ids)
    assert {run.id for run in await listed_runs(control)} == set(ok_ids)
    assert not server.errors_logged()


async def test_a_burst_over_100_idempotency_keys_creates_100_runs(
    stub: tuple[Server, Any], pytestconfig: pytest.Config
) -> None:
    server, control = stub
    keys = [f"key-{i % 100}" for i in range(BURST)]
    answers, wall = await create_runs(control, keys)
    report(pytestconfig, summary(f"{BURST} concurrent CreateRun over 100 keys", answers, wall))
    assert_well_formed(answers)
    answers = await retry_refused(control, keys, answers)

    by_key: dict[str, set[str]] = {}
    for key, answer in zip(keys, answers, strict=True):
        by_key.setdefault(key, set()).add(answer.run_id)
    assert all(len(ids) == 1 for ids in by_key.values()), "one key answered with two runs"
    runs = await listed_runs(control)
    assert len(runs) == 100
    assert {run.idempotency_key: {run.id} for run in runs} == by_key
    assert server.stored_run_ids() == {run.id for run in runs}
    assert not server.errors_logged()


async def test_an_overloaded_server_refuses_with_a_retry_hint_and_does_nothing_for_it(
    servers: Callable[..., Server], pytestconfig: pytest.Config
) -> None:
    server = servers("--max-concurrent-calls", "50")
    async with channel(server.address, server.token) as ch:
        control = control_plane_pb2_grpc.ControlPlaneServiceStub(ch)
        keys = [""] * BURST
        began = time.perf_counter()
        answers, wall = await create_runs(control, keys)
        report(pytestconfig, summary(f"{BURST} CreateRun, 50 admitted at once", answers, wall))

        assert_well_formed(answers)
        refused = [a for a in answers if not a.ok]
        assert refused, "the burst never hit the limit"
        assert {a.code for a in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert server.stored_run_ids() == {a.run_id for a in answers if a.ok}

        # A refused call did nothing, so calling again after the hint is safe, key or not.
        answers = await retry_refused(control, keys, answers)
        report(
            pytestconfig,
            f"  ...and every call OK, retried after its hint, {time.perf_counter() - began:.2f} s "
            "after the burst began",
        )
        ok_ids = {a.run_id for a in answers}
        assert len(ok_ids) == BURST
        assert server.stored_run_ids() == ok_ids == {r.id for r in await listed_runs(control)}
    assert not server.errors_logged()


async def test_more_calls_than_a_connection_takes_wait_at_the_client(
    servers: Callable[..., Server],
) -> None:
    # Past MAX_STREAMS_PER_CONNECTION a client's gRPC library holds new calls until earlier
    # ones end; the server must not refuse a stream the client had room for by its count
    # (REFUSED_STREAM, seen as UNAVAILABLE without a hint) while it is still cleaning up an
    # ended one. Refused calls end fast, so a low admission limit makes that churn.
    server = servers("--max-concurrent-calls", "50")
    async with channel(server.address, server.token) as ch:
        control = control_plane_pb2_grpc.ControlPlaneServiceStub(ch)
        answers, _ = await create_runs(control, [""] * (MAX_STREAMS_PER_CONNECTION + 500))
    assert_well_formed(answers)
    assert {a.code for a in answers} <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert server.stored_run_ids() == {a.run_id for a in answers if a.ok}


async def test_a_reconnect_storm_after_a_restart_is_welcomed(
    servers: Callable[..., Server], pytestconfig: pytest.Config
) -> None:
    server = servers()
    server.child.stop()
    server.child = start_server(server.data_dir)  # the same database, freshly started
    release = asyncio.Event()
    welcomed = 0
    all_welcomed = asyncio.Event()

    async def hello(index: int) -> AsyncIterator[agent_pb2.ConnectRequest]:
        yield agent_pb2.ConnectRequest(
            hello=agent_pb2.Hello(
                agent_name=f"agent-{index}", pool=POOL, capacity=0, runtime="process"
            )
        )
        # Heartbeat like a real agent: on a loaded machine the storm can outlast the silence
        # the server tolerates (three heartbeat intervals), and a silent session is ended.
        while not release.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(release.wait(), AGENT_HEARTBEAT_SECONDS)
            if not release.is_set():
                yield agent_pb2.ConnectRequest(heartbeat=agent_pb2.Heartbeat())

    async def agent(stub: agent_pb2_grpc.AgentServiceStub, index: int) -> str:
        nonlocal welcomed
        call = stub.Connect(hello(index))
        try:
            first = await asyncio.wait_for(call.read(), CALL_DEADLINE)
            if first is grpc.aio.EOF:
                return "EOF"
            welcomed += 1
            if welcomed == STORM:
                all_welcomed.set()
            await release.wait()
            return first.WhichOneof("message") or ""
        except grpc.aio.AioRpcError as error:
            return f"{error.code().name}: {error.details()}"
        except TimeoutError:
            return "no answer"
        finally:
            call.cancel()

    def pool_agents() -> int:
        with open_channel(server.address, server.token) as sync_channel:
            stub = control_plane_pb2_grpc.ControlPlaneServiceStub(sync_channel)
            request = pb.GetPoolRequest(name=POOL)
            return stub.GetPool(request, timeout=CALL_DEADLINE).pool.connected_agents

    channels = [channel(server.address, server.token) for _ in range(STORM_CONNECTIONS)]
    stubs = [agent_pb2_grpc.AgentServiceStub(ch) for ch in channels]
    started = time.perf_counter()
    agents = [
        asyncio.create_task(agent(stubs[i % STORM_CONNECTIONS], i), name=f"agent-{i}")
        for i in range(STORM)
    ]
    everyone = asyncio.create_task(all_welcomed.wait(), name="all-welcomed")
    try:
        # Ends early if any agent's call ends: that is a failure, shown below.
        await asyncio.wait(
            [everyone, *agents], timeout=CALL_DEADLINE, return_when=asyncio.FIRST_COMPLETED
        )
        storm = time.perf_counter() - started
        report(
            pytestconfig, f"reconnect storm: {welcomed} of {STORM} agents welcomed in {storm:.2f} s"
        )
        connected = pool_agents()
    finally:
        everyone.cancel()
        release.set()
        outcomes = await asyncio.wait_for(asyncio.gather(*agents), CALL_DEADLINE)
        for ch in channels:
            await ch.close()
    assert outcomes == ["welcome"] * STORM, {o for o in outcomes if o != "welcome"}
    assert connected == STORM

    wait_for(lambda: pool_agents() == 0, CALL_DEADLINE, "the storm's sessions to close")
    assert not server.errors_logged()
