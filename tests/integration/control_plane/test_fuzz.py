"""Hostile input: hypothesis throws random and near-valid requests at every RPC.

One control plane serves the whole module (in a background thread, see ``fuzzing``) and holds
some valid state: pools, deployments, and runs in several states, two of them held by a
connected agent and one by an agent that went away. For every request the server must answer
with a status that blames the request (never INTERNAL or UNKNOWN, never a traceback), a
rejected request must leave every row of the database as it was, and the server must keep
serving. How many requests were sent is written to ``requests-fuzzed.txt`` in the module's
temporary directory and to the terminal.
"""

from __future__ import annotations

import itertools
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control_plane.cli.client import BearerToken
from flowyard.v1 import agent_pb2, engine_pb2, types_pb2
from flowyard.v1 import control_plane_pb2 as pb
from tests import waiting
from tests.bearer import admin_token

from .conftest import FLOW, SCHEMA
from .fuzzing import (
    DEFAULT_HINTS,
    HOSTILE_BODIES,
    HOSTILE_JOB_VARIABLES,
    HOSTILE_SCHEMAS,
    HOSTILE_TEMPLATES,
    PARAMETERS,
    ErrorLog,
    Fuzzer,
    ServerThread,
    bearer_metadata,
    int32s,
    json_texts,
    near_valid,
    random_messages,
    requests,
    run_ids,
    texts,
)

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
STREAM_FUZZ = settings(FUZZ, max_examples=200)
SCENARIO_FUZZ = settings(FUZZ, max_examples=150)
WAIT_SECONDS = 10.0
#: Far within the silence the server tolerates (three of its default 10 s intervals).
HEARTBEAT_SECONDS = 2.0
MAX_MESSAGE_BYTES = 32 * 1024 * 1024

#: Proposals the state machine would accept from the engine of a PENDING or RUNNING run;
#: the stream fuzzer leaves them out so that the runs it reports on stay where they are.
ACCEPTABLE_PROPOSALS = frozenset(
    {types_pb2.STATE_TYPE_RUNNING, types_pb2.STATE_TYPE_COMPLETED, types_pb2.STATE_TYPE_FAILED}
)


class Session:
    """A long-lived bidi stream driven message by message from a blocking client."""

    def __init__(self, method: Callable[..., Any], first: Message, metadata: Any = None) -> None:
        self._outbox: queue.Queue[Message | None] = queue.Queue()
        self._outbox.put(first)
        self._answers = method(iter(self._outbox.get, None), metadata=metadata)
        # It lives as long as the module: it heartbeats like a real agent, or the server
        # would end it as silent (after three of its heartbeat intervals) halfway through.
        self._closed = threading.Event()
        self._heartbeats = threading.Thread(
            target=self._heartbeat,
            args=(type(first)(heartbeat={}),),
            name="fuzz-session-heartbeat",
            daemon=True,
        )
        self._heartbeats.start()

    def _heartbeat(self, message: Message) -> None:
        while not self._closed.wait(HEARTBEAT_SECONDS):
            self._outbox.put(message)

    def send(self, message: Message) -> None:
        self._outbox.put(message)

    def receive(self, kind: str) -> Any:
        """The next answer of ``kind``, skipping heartbeats."""
        for answer in self._answers:
            got = answer.WhichOneof("message")
            if got == "heartbeat":
                continue
            assert got == kind, f"expected {kind}, got {answer}"
            return getattr(answer, kind)
        raise AssertionError("the stream ended")

    def close(self) -> None:
        """Half-close and wait for the server to end the stream."""
        self._closed.set()
        self._heartbeats.join()
        self._outbox.put(None)
        for _ in self._answers:
            pass


@dataclass
class World:
    """The valid state the fuzzers start from."""

    fuzz: Fuzzer
    source: Path
    #: RUNNING, held by the connected agent "holder"; (run id, engine token).
    running: tuple[str, str] = ("", "")
    #: PENDING/Submitted, held by "holder".
    pending: tuple[str, str] = ("", "")
    #: PENDING/Submitted in pool "takeover", held by a session of "ghost" that is gone.
    orphan: str = ""
    #: Runs a user may cancel (or that are already cancelled).
    cancellable: list[str] = field(default_factory=list)
    page_token: str = ""
    holder: Session | None = None
    #: Agent tokens a fuzzed RevokeToken may revoke (never the admin token the fuzzer uses).
    revocable: list[str] = field(default_factory=list)

    @property
    def protected(self) -> list[str]:
        """Runs the stream fuzzers report on: no fuzzed request may legitimately change them."""
        return [self.running[0], self.pending[0], self.orphan]

    @property
    def runs(self) -> list[str]:
        return [*self.protected, *self.cancellable]

    @property
    def tokens(self) -> list[str]:
        return [self.running[1], self.pending[1]]

    @property
    def token_of(self) -> dict[str, str]:
        return dict([self.running, self.pending])


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def usually(value: Any, otherwise: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``value`` three times in four, else a draw from ``otherwise``."""
    return st.integers(0, 3).flatmap(lambda i: st.just(value) if i else otherwise)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    waiting.wait_for(condition, WAIT_SECONDS, what)


def deployment(name: str, pool: str, source: Path, **extra: Any) -> types_pb2.Deployment:
    return types_pb2.Deployment(
        name=name,
        entrypoint="flow.py:hello",
        source=types_pb2.Source(local=types_pb2.LocalSource(path=str(source))),
        pool=pool,
        **extra,
    )


def build_world(fuzz: Fuzzer, data_dir: Path) -> World:
    control = fuzz.control
    source = data_dir / "src"
    source.mkdir()
    (source / "flow.py").write_text(FLOW)
    world = World(fuzz, source)
    for name, kind in [
        ("pool-a", types_pb2.POOL_TYPE_PROCESS),
        ("kube", types_pb2.POOL_TYPE_KUBERNETES),
        ("agent-fuzz", types_pb2.POOL_TYPE_PROCESS),
        ("takeover", types_pb2.POOL_TYPE_PROCESS),
    ]:
        control.CreatePool(pb.CreatePoolRequest(name=name, type=kind))
    for spec in [
        deployment("hello", "pool-a", source, parameter_schema_json=json.dumps(SCHEMA)),
        deployment(
            "kube-hello", "kube", source, job_variables_json='{"image": "python:3.11-slim"}'
        ),
        deployment("ghost-d", "takeover", source),
    ]:
        control.UpsertDeployment(pb.UpsertDeploymentRequest(deployment=spec))

    def create(deployment_name: str = "hello", **extra: Any) -> str:
        response = control.CreateRun(
            pb.CreateRunRequest(
                deployment_name=deployment_name,
                parameters_json='{"name": "x"}' if deployment_name == "hello" else "",
                **extra,
            )
        )
        return str(response.run.id)

    def state(run_id: str) -> tuple[int, str]:
        run = control.GetRun(pb.GetRunRequest(run_id=run_id)).run
        return run.state.type, run.state.name

    # Two runs for an agent that stays connected: it takes both and submits them.
    held = [create(), create()]
    holder = Session(
        fuzz.agents.Connect,
        agent_pb2.ConnectRequest(
            hello=agent_pb2.Hello(agent_name="holder", pool="pool-a", capacity=2, runtime="process")
        ),
    )
    world.holder = holder
    holder.receive("welcome")
    tokens = {}
    for _ in held:
        assign = holder.receive("assign")
        tokens[assign.run_id] = assign.engine_token
        holder.send(
            agent_pb2.ConnectRequest(accepted=agent_pb2.Accepted(run_id=assign.run_id, attempt=1))
        )
        holder.send(
            agent_pb2.ConnectRequest(
                submitted=agent_pb2.Submitted(
                    run_id=assign.run_id, attempt=1, infrastructure_id="process/test/1"
                )
            )
        )
    for run_id in held:
        wait_for(lambda r=run_id: state(r) == (types_pb2.STATE_TYPE_PENDING, "Submitted"), "submit")
    world.running = (held[0], tokens[held[0]])
    world.pending = (held[1], tokens[held[1]])

    # The first run's engine starts it and writes three lines.
    started = fuzz.engines.Report(
        iter(
            [
                engine_pb2.ReportRequest(open=engine_pb2.Open(run_id=held[0], attempt=1)),
                engine_pb2.ReportRequest(
                    propose_state=engine_pb2.ProposeState(
                        transition_id="start", type=types_pb2.STATE_TYPE_RUNNING
                    )
                ),
                engine_pb2.ReportRequest(
                    log_batch=engine_pb2.LogBatch(
                        lines=[types_pb2.LogLine(seq=s, text=f"line {s}") for s in (1, 2, 3)]
                    )
                ),
            ]
        ),
        metadata=bearer(tokens[held[0]]),
        timeout=WAIT_SECONDS,
    )
    answers = list(started)
    assert answers[1].state_result.accepted and answers[2].log_ack.stored_seq == 3, answers
    assert state(held[0])[0] == types_pb2.STATE_TYPE_RUNNING

    world.revocable = [
        control.CreateToken(
            pb.CreateTokenRequest(kind=pb.TOKEN_KIND_AGENT, pool="pool-a", description=f"r{i}")
        ).info.id
        for i in range(2)
    ]

    # Runs nobody takes (the holder has no credit left), one of them already cancelled.
    future = Timestamp(seconds=int(time.time()) + 86_400)
    world.cancellable = [
        create(idempotency_key="k1"),
        create(scheduled_time=future),
        create(),
        create("kube-hello", job_variables_json='{"namespace": "team-a"}'),
    ]
    cancelled = create()
    control.CancelRun(pb.CancelRunRequest(run_id=cancelled, reason="setting up"))
    world.cancellable.append(cancelled)
    world.page_token = control.ListRuns(pb.ListRunsRequest(page_size=2)).next_page_token

    # A run held by a session of agent "ghost" that went away after submitting it: a new
    # session of "ghost" may take it over, anybody else may not touch it.
    world.orphan = create("ghost-d")
    ghost = Session(
        fuzz.agents.Connect,
        agent_pb2.ConnectRequest(
            hello=agent_pb2.Hello(
                agent_name="ghost", pool="takeover", capacity=1, runtime="process"
            )
        ),
    )
    ghost.receive("welcome")
    assign = ghost.receive("assign")
    assert assign.run_id == world.orphan
    ghost.send(
        agent_pb2.ConnectRequest(accepted=agent_pb2.Accepted(run_id=world.orphan, attempt=1))
    )
    ghost.send(
        agent_pb2.ConnectRequest(
            submitted=agent_pb2.Submitted(run_id=world.orphan, attempt=1, infrastructure_id="p/1")
        )
    )
    wait_for(lambda: state(world.orphan) == (types_pb2.STATE_TYPE_PENDING, "Submitted"), "submit")
    ghost.close()
    assert state(world.orphan) == (types_pb2.STATE_TYPE_PENDING, "Submitted")
    return world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[World]:
    data_dir = tmp_path_factory.mktemp("fuzz")
    errors = ErrorLog()
    errors.install()
    server = ServerThread(data_dir)
    server.start()
    channel = grpc.intercept_channel(
        grpc.insecure_channel(
            server.address,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        ),
        # User calls carry the admin token; agent and engine calls send their own.
        BearerToken(admin_token(data_dir)),
    )
    fuzz = Fuzzer(server, channel, errors)
    started = time.monotonic()
    try:
        world = build_world(fuzz, data_dir)
        yield world
        if world.holder is not None:
            world.holder.close()
    finally:
        channel.close()
        server.stop()
        errors.uninstall()
        summary = f"{fuzz.tally.summary()} in {time.monotonic() - started:.1f} s"
        (data_dir / "requests-fuzzed.txt").write_text(f"{summary}\n{fuzz.tally.breakdown()}\n")
        capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
        reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
        if capture is not None and reporter is not None:
            with capture.global_and_fixture_disabled():
                reporter.ensure_newline()
                reporter.write_line(summary)


# -- ControlPlaneService and EngineService.StartRun -----------------------------------------


ENGINE_UNARY = frozenset({"StartRun", "StartChildRun", "EndSubflow"})


@dataclass(frozen=True)
class Unary:
    """How to fuzz one unary RPC."""

    method: str
    request_type: type[Message]
    valid: Callable[[World], list[Message]]
    read_only: bool = False
    #: Run ids the requests may name; all of them by default.
    run_ids: Callable[[World], list[str]] = lambda world: world.runs

    def stub(self, fuzz: Fuzzer) -> Callable[..., Any]:
        service = fuzz.engines if self.method in ENGINE_UNARY else fuzz.control
        return getattr(service, self.method)


def _deployments(world: World) -> list[Message]:
    hello = deployment("hello", "pool-a", world.source, parameter_schema_json=json.dumps(SCHEMA))
    return [
        pb.UpsertDeploymentRequest(deployment=hello),
        pb.UpsertDeploymentRequest(
            deployment=deployment(
                "fresh-deploy",
                "pool-a",
                world.source,
                parameters_json='{"name": "y"}',
                parameter_schema_json=json.dumps(SCHEMA),
                job_variables_json='{"env": {"A": "1"}}',
                tags=["a", "b"],
                description="fuzzed",
            )
        ),
        pb.UpsertDeploymentRequest(
            deployment=deployment(
                "kube-d", "kube", world.source, job_variables_json='{"image": "i"}'
            )
        ),
        pb.UpsertDeploymentRequest(
            deployment=types_pb2.Deployment(
                name="from-git",
                entrypoint="flows/etl.py:main",
                pool="kube",
                job_variables_json='{"image": "i"}',
                source=types_pb2.Source(
                    git=types_pb2.GitSource(
                        url="https://git.example.com/org/repo.git",
                        ref="v1.2.0",
                        subdirectory="flows",
                        shallow=True,
                        credentials=types_pb2.GitCredentials(
                            username="x-access-token",
                            token_env="REPO_TOKEN",
                            token_secret=types_pb2.SecretKeyRef(name="git-creds", key="token"),
                        ),
                    )
                ),
            )
        ),
        pb.UpsertDeploymentRequest(
            deployment=types_pb2.Deployment(
                name="from-archive",
                entrypoint="flow.py:hello",
                pool="pool-a",
                source=types_pb2.Source(
                    archive=types_pb2.ArchiveSource(
                        url="https://files.example.com/code.tar.gz",
                        sha256="ab" * 32,
                        subdirectory="src",
                    )
                ),
            )
        ),
        pb.UpsertDeploymentRequest(
            deployment=deployment(
                "sched-d",
                "pool-a",
                world.source,
                parameters_json='{"name": "s"}',
                parameter_schema_json=json.dumps(SCHEMA),
                queue="default",
                retries=2,
                retry_delay_seconds=5,
                concurrency_limit=1,
                collision_strategy=types_pb2.COLLISION_STRATEGY_CANCEL_NEW,
                schedules=[
                    types_pb2.Schedule(
                        name="nightly",
                        cron=types_pb2.CronSchedule(
                            expression="0 2 * * *", timezone="Europe/Paris"
                        ),
                    ),
                    types_pb2.Schedule(
                        name="often",
                        interval=types_pb2.IntervalSchedule(seconds=600),
                        parameters_json='{"count": 2}',
                    ),
                ],
            )
        ),
    ]


UNARY = [
    Unary(
        "CreatePool",
        pb.CreatePoolRequest,
        lambda world: [
            pb.CreatePoolRequest(name="fresh", type=types_pb2.POOL_TYPE_PROCESS),
            pb.CreatePoolRequest(name="fresh-k", type=types_pb2.POOL_TYPE_KUBERNETES),
            pb.CreatePoolRequest(
                name="fresh-t",
                type=types_pb2.POOL_TYPE_PROCESS,
                base_job_template_json=json.dumps(
                    {
                        "job_configuration": {"env": "{{ env }}"},
                        "variables": {
                            "type": "object",
                            "properties": {"env": {"type": "object", "default": {"A": "1"}}},
                        },
                    }
                ),
                concurrency_limit=3,
            ),
        ],
    ),
    Unary("GetPool", pb.GetPoolRequest, lambda w: [pb.GetPoolRequest(name="pool-a")], True),
    Unary("ListPools", pb.ListPoolsRequest, lambda w: [pb.ListPoolsRequest()], True),
    Unary(
        "UpdatePool",
        pb.UpdatePoolRequest,
        lambda w: [
            pb.UpdatePoolRequest(name="pool-a", concurrency_limit=3),
            pb.UpdatePoolRequest(name="pool-a", paused=False),
        ],
    ),
    Unary(
        "UpsertQueue",
        pb.UpsertQueueRequest,
        lambda w: [
            pb.UpsertQueueRequest(
                pool="pool-a", queue=types_pb2.WorkQueue(name="urgent", priority=1)
            ),
            pb.UpsertQueueRequest(
                pool="pool-a",
                queue=types_pb2.WorkQueue(name="default", priority=5, concurrency_limit=2),
            ),
        ],
    ),
    Unary("UpsertDeployment", pb.UpsertDeploymentRequest, _deployments),
    Unary(
        "PauseDeployment",
        pb.PauseDeploymentRequest,
        lambda w: [
            pb.PauseDeploymentRequest(name="hello", paused=True),
            pb.PauseDeploymentRequest(name="hello", paused=False),
        ],
    ),
    Unary(
        "ListSchedules",
        pb.ListSchedulesRequest,
        lambda w: [
            pb.ListSchedulesRequest(deployment_name="hello"),
            pb.ListSchedulesRequest(deployment_name="hello", upcoming=3),
        ],
        True,
    ),
    Unary(
        "GetDeployment",
        pb.GetDeploymentRequest,
        lambda w: [pb.GetDeploymentRequest(name="hello")],
        True,
    ),
    Unary(
        "ListDeployments",
        pb.ListDeploymentsRequest,
        lambda w: [pb.ListDeploymentsRequest(), pb.ListDeploymentsRequest(pool="kube")],
        True,
    ),
    Unary(
        "DeleteDeployment",
        pb.DeleteDeploymentRequest,
        lambda w: [pb.DeleteDeploymentRequest(name=n) for n in ("hello", "fresh-deploy")],
    ),
    Unary(
        "RenderDeployment",
        pb.RenderDeploymentRequest,
        lambda w: [
            pb.RenderDeploymentRequest(deployment_name="hello", job_variables_json='{"env": {}}'),
            pb.RenderDeploymentRequest(
                deployment_name="kube-hello", job_variables_json='{"namespace": "ns"}'
            ),
        ],
        True,
    ),
    Unary(
        "CreateRun",
        pb.CreateRunRequest,
        lambda w: [
            pb.CreateRunRequest(deployment_name="hello", parameters_json='{"name": "z"}'),
            pb.CreateRunRequest(
                deployment_name="hello", parameters_json='{"name": "z"}', idempotency_key="k1"
            ),
            pb.CreateRunRequest(
                deployment_name="kube-hello",
                job_variables_json='{"cpu_limit": "1"}',
                scheduled_time=Timestamp(seconds=int(time.time()) + 3600),
            ),
        ],
    ),
    Unary("GetRun", pb.GetRunRequest, lambda w: [pb.GetRunRequest(run_id=r) for r in w.runs], True),
    Unary(
        "ListRuns",
        pb.ListRunsRequest,
        lambda w: [
            pb.ListRunsRequest(),
            pb.ListRunsRequest(
                deployment_name="hello",
                state_types=[types_pb2.STATE_TYPE_SCHEDULED, types_pb2.STATE_TYPE_RUNNING],
                page_size=2,
                page_token=w.page_token,
            ),
        ],
        True,
    ),
    Unary(
        "ListTaskRuns",
        pb.ListTaskRunsRequest,
        lambda w: [
            *(pb.ListTaskRunsRequest(run_id=r) for r in w.runs),
            pb.ListTaskRunsRequest(run_id=w.running[0], task_name="t", page_size=1),
        ],
        True,
    ),
    Unary(
        "CancelRun",
        pb.CancelRunRequest,
        lambda w: [pb.CancelRunRequest(run_id=r, reason="fuzz") for r in w.cancellable],
        run_ids=lambda w: w.cancellable,
    ),
    Unary(
        "CreateToken",
        pb.CreateTokenRequest,
        lambda w: [
            pb.CreateTokenRequest(kind=pb.TOKEN_KIND_AGENT, pool="pool-a", description="ci"),
            pb.CreateTokenRequest(kind=pb.TOKEN_KIND_AGENT, pool="kube", ttl_seconds=3600),
            pb.CreateTokenRequest(kind=pb.TOKEN_KIND_ADMIN, description="ops"),
        ],
    ),
    Unary("ListTokens", pb.ListTokensRequest, lambda w: [pb.ListTokensRequest()], True),
    Unary(
        "RevokeToken",
        pb.RevokeTokenRequest,
        lambda w: [pb.RevokeTokenRequest(id=token_id) for token_id in w.revocable],
    ),
    Unary(
        "StartRun",
        engine_pb2.StartRunRequest,
        lambda w: [
            engine_pb2.StartRunRequest(run_id=w.running[0], attempt=1),
            engine_pb2.StartRunRequest(run_id=w.pending[0], attempt=1),
        ],
        True,
    ),
    Unary(
        "StartChildRun",
        engine_pb2.StartChildRunRequest,
        lambda w: [
            engine_pb2.StartChildRunRequest(
                run_id=w.running[0], attempt=1, key="sub-1", subflow_name="transform"
            ),
            engine_pb2.StartChildRunRequest(
                run_id=w.running[0],
                attempt=1,
                key="dep-1",
                deployment_name="hello",
                parameters_json='{"name": "x"}',
                cancel_with_parent=True,
            ),
        ],
    ),
    Unary(
        "EndSubflow",
        engine_pb2.EndSubflowRequest,
        lambda w: [
            engine_pb2.EndSubflowRequest(
                run_id=w.running[0],
                attempt=1,
                subflow_run_id=w.running[0],
                type=types_pb2.STATE_TYPE_COMPLETED,
            )
        ],
    ),
]


@pytest.mark.parametrize("rpc", UNARY, ids=[rpc.method for rpc in UNARY])
@FUZZ
@given(data=st.data())
def test_unary_rpcs_blame_the_request_and_change_nothing_when_they_reject_it(
    world: World, rpc: Unary, data: st.DataObject
) -> None:
    hints = {
        **DEFAULT_HINTS,
        "run_id": st.one_of(st.sampled_from(rpc.run_ids(world)), run_ids),
    }
    request = data.draw(requests(rpc.request_type, rpc.valid(world), hints), label="request")
    metadata = None
    if rpc.method in ENGINE_UNARY:
        own = world.token_of.get(getattr(request, "run_id", ""))
        others = bearer_metadata(world.tokens)
        metadata = data.draw(usually(bearer(own), others) if own else others, label="metadata")
    world.fuzz.unary(rpc.stub(world.fuzz), request, metadata=metadata, read_only=rpc.read_only)


@pytest.mark.parametrize("method", ["WatchRun", "TailLogs"])
@FUZZ
@given(data=st.data())
def test_server_streams_refuse_bad_requests_at_once_and_change_nothing(
    world: World, method: str, data: st.DataObject
) -> None:
    hints = {**DEFAULT_HINTS, "run_id": st.one_of(st.sampled_from(world.runs), run_ids)}
    request_type = getattr(pb, f"{method}Request")
    valid = [request_type(run_id=run) for run in world.runs]
    request = data.draw(requests(request_type, valid, hints), label="request")
    if method == "TailLogs" and request.run_id != world.running[0]:
        # Following a live run that has written no line yet (whether one is live depends on
        # what earlier examples cancelled) rightly waits for its first line: there is no
        # first answer to check. The running run has lines, so it is followed.
        request.follow = False
    world.fuzz.first_answer(getattr(world.fuzz.control, method), request)


def test_unary_rpcs_covered() -> None:
    """Every unary RPC of ControlPlaneService and EngineService is in the fuzzed list."""
    services = {
        name: method
        for service in (
            pb.DESCRIPTOR.services_by_name["ControlPlaneService"],
            engine_pb2.DESCRIPTOR.services_by_name["EngineService"],
        )
        for name, method in service.methods_by_name.items()
    }
    unary = {n for n, m in services.items() if not m.client_streaming and not m.server_streaming}
    assert unary == {rpc.method for rpc in UNARY}


# -- bodies that may not be protobuf at all --------------------------------------------------

METHODS = [
    method
    for module, name in (
        (pb, "ControlPlaneService"),
        (agent_pb2, "AgentService"),
        (engine_pb2, "EngineService"),
    )
    for method in module.DESCRIPTOR.services_by_name[name].methods
]
bodies = st.one_of(st.sampled_from(HOSTILE_BODIES), st.binary(max_size=64))


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
@FUZZ
@given(data=st.data())
def test_any_bytes_as_a_request_blame_the_request_and_change_nothing(
    world: World, method: Any, data: st.DataObject
) -> None:
    metadata = None
    if method.containing_service.name == "EngineService":
        metadata = bearer(data.draw(st.sampled_from(world.tokens), label="token"))
    if method.client_streaming:
        sent = data.draw(st.lists(bodies, min_size=1, max_size=3), label="bodies")
    else:
        sent = [data.draw(bodies, label="body")]
    path = f"/{method.containing_service.full_name}/{method.name}"
    world.fuzz.raw(path, sent, streaming=method.client_streaming, metadata=metadata)


# -- what one request stores and a later one relies on ------------------------------------


_fresh_names = itertools.count()


def fresh_name(prefix: str) -> str:
    return f"{prefix}-{next(_fresh_names)}"


job_variables = st.one_of(st.sampled_from(HOSTILE_JOB_VARIABLES), json_texts)


@SCENARIO_FUZZ
@given(data=st.data())
def test_parameter_schemas_are_checked_before_runs_are_checked_against_them(
    world: World, data: st.DataObject
) -> None:
    fuzz = world.fuzz
    name = fresh_name("schema")
    schema = data.draw(
        st.one_of(st.sampled_from(HOSTILE_SCHEMAS).map(json.dumps), json_texts), label="schema"
    )
    defaults = data.draw(st.one_of(st.just(""), st.sampled_from(PARAMETERS)), label="defaults")
    stored = fuzz.unary(
        fuzz.control.UpsertDeployment,
        pb.UpsertDeploymentRequest(
            deployment=deployment(
                name,
                "pool-a",
                world.source,
                parameter_schema_json=schema,
                parameters_json=defaults,
            )
        ),
    )
    if stored is None:
        return
    for parameters in data.draw(
        st.lists(st.one_of(st.sampled_from(PARAMETERS), json_texts), min_size=1, max_size=3),
        label="parameters",
    ):
        fuzz.unary(
            fuzz.control.CreateRun,
            pb.CreateRunRequest(deployment_name=name, parameters_json=parameters),
        )


@SCENARIO_FUZZ
@given(data=st.data())
def test_pool_templates_are_checked_before_anything_is_rendered_from_them(
    world: World, data: st.DataObject
) -> None:
    fuzz = world.fuzz
    name = fresh_name("tpl")
    kind = data.draw(
        st.sampled_from([types_pb2.POOL_TYPE_PROCESS, types_pb2.POOL_TYPE_KUBERNETES]),
        label="type",
    )
    template = data.draw(
        st.one_of(st.sampled_from(HOSTILE_TEMPLATES).map(json.dumps), json_texts),
        label="template",
    )
    pool = fuzz.unary(
        fuzz.control.CreatePool,
        pb.CreatePoolRequest(name=name, type=kind, base_job_template_json=template),
    )
    if pool is None:
        return
    stored = fuzz.unary(
        fuzz.control.UpsertDeployment,
        pb.UpsertDeploymentRequest(
            deployment=deployment(
                name, name, world.source, job_variables_json=data.draw(job_variables)
            )
        ),
    )
    if stored is None:
        return
    fuzz.unary(
        fuzz.control.RenderDeployment,
        pb.RenderDeploymentRequest(
            deployment_name=name, job_variables_json=data.draw(job_variables)
        ),
        read_only=True,
    )
    fuzz.unary(
        fuzz.control.CreateRun,
        pb.CreateRunRequest(deployment_name=name, job_variables_json=data.draw(job_variables)),
    )


# -- AgentService.Connect ----------------------------------------------------------------------


def _agent_hints(world: World) -> dict[str, st.SearchStrategy[Any]]:
    return {
        **DEFAULT_HINTS,
        "run_id": st.one_of(st.sampled_from(world.runs), run_ids),
        "attempt": st.one_of(st.sampled_from([1, 2, 0, -1]), int32s),
        # Pools without runs to dispatch, so that whatever a session does, it holds nothing.
        "pool": st.one_of(st.sampled_from(["agent-fuzz", "takeover", "no-such-pool"]), texts),
        "agent_name": st.one_of(st.sampled_from(["ghost", "holder", "fuzzer"]), texts),
        "runtime": st.one_of(st.sampled_from(["process", "kubernetes", ""]), texts),
        "credits": st.one_of(st.sampled_from([1, 10_000, 10_001, 0, -1]), int32s),
    }


def _leave_orphan_alone(world: World, request: Message) -> Message:
    """The orphan's own attempt would let a session of "ghost" take it over: a legitimate
    change, which is not what this fuzzer checks. Aim at another attempt instead."""
    kind = request.WhichOneof("message")
    if kind == "hello":
        for observed in request.hello.observed_runs:
            if observed.run_id == world.orphan and observed.attempt == 1:
                observed.attempt = 2
    elif kind is not None:
        report = getattr(request, kind)
        if getattr(report, "run_id", None) == world.orphan and report.attempt == 1:
            report.attempt = 2
    return request


@STREAM_FUZZ
@given(data=st.data())
def test_agent_sessions_survive_garbage_and_never_touch_runs_they_do_not_hold(
    world: World, data: st.DataObject
) -> None:
    hints = _agent_hints(world)
    valid_hello = agent_pb2.ConnectRequest(
        hello=agent_pb2.Hello(
            agent_name="fuzzer",
            pool="agent-fuzz",
            capacity=1,
            runtime="process",
            version="0.1.0",
            observed_runs=[
                agent_pb2.ObservedRun(run_id=r, attempt=1, infrastructure_id="x")
                for r in (world.running[0], world.cancellable[-1])
            ],
        )
    )
    first = data.draw(
        st.one_of(
            random_messages(agent_pb2.ConnectRequest, hints),
            near_valid(valid_hello, hints),
            # Most sessions should open, so that what follows the Hello gets looked at.
            st.just(valid_hello),
            st.just(valid_hello),
        ),
        label="first",
    )
    follow = data.draw(
        st.lists(random_messages(agent_pb2.ConnectRequest, hints), max_size=8), label="follow"
    )
    messages = [_leave_orphan_alone(world, m) for m in (first, *follow)]
    before = world.fuzz.snapshot()
    world.fuzz.stream(world.fuzz.agents.Connect, messages)
    after = world.fuzz.snapshot()
    assert before == after, "an agent session changed runs it does not hold"


# -- EngineService.Report ----------------------------------------------------------------------


def _engine_hints(world: World) -> dict[str, st.SearchStrategy[Any]]:
    return {
        **DEFAULT_HINTS,
        "run_id": st.one_of(st.sampled_from(["", *world.runs]), run_ids),
        "attempt": st.one_of(st.sampled_from([1, 0, -1, 2]), int32s),
        "seq": st.one_of(st.sampled_from([0, -1, 1, 2**62, 2**63 - 1]), st.integers(-5, 50)),
        "level": st.one_of(st.sampled_from([0, 10, 20, 50, -1, 1000]), int32s),
        "transition_id": st.one_of(st.sampled_from(["start", "t", "x" * 65]), texts),
    }


def _refusable(request: Message) -> Message:
    if (
        request.WhichOneof("message") == "propose_state"
        and request.propose_state.type in ACCEPTABLE_PROPOSALS
    ):
        request.propose_state.type = types_pb2.STATE_TYPE_CANCELLED
    return request


@st.composite
def _report_messages(
    draw: st.DrawFn, hints: dict[str, st.SearchStrategy[Any]], next_seq: int
) -> list[Message]:
    """Follow-ups after Open: random ones, and log batches that continue the attempt's lines
    (sometimes with one field changed)."""
    messages: list[Message] = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            count = draw(st.integers(1, 4))
            batch = engine_pb2.LogBatch(
                lines=[
                    types_pb2.LogLine(
                        seq=next_seq + i,
                        level=20,
                        stream=types_pb2.LOG_STREAM_STDOUT,
                        text=f"line {next_seq + i}",
                        timestamp=Timestamp(seconds=1_700_000_000),
                    )
                    for i in range(count)
                ]
            )
            for line in batch.lines:
                # Some lines announce a change of a task run, which near_valid may spoil.
                if draw(st.booleans()):
                    state = draw(st.sampled_from(REPORTABLE_TASK_RUN_STATES))
                    line.task_run = "t-0"
                    line.task_run_event.CopyFrom(
                        types_pb2.TaskRunEvent(
                            task_run_id="t", name="t-0", task_name="t", state=state, attempt=1
                        )
                    )
            if draw(st.booleans()):
                index = draw(st.integers(0, count - 1))
                batch.lines[index].CopyFrom(draw(near_valid(batch.lines[index], hints)))
            messages.append(engine_pb2.ReportRequest(log_batch=batch))
            next_seq += count
        else:
            message = draw(random_messages(engine_pb2.ReportRequest, hints))
            messages.append(_refusable(message))
    return messages


REPORTABLE_TASK_RUN_STATES = [
    types_pb2.TASK_RUN_STATE_RUNNING,
    types_pb2.TASK_RUN_STATE_RETRYING,
    types_pb2.TASK_RUN_STATE_COMPLETED,
]


def _lines(fuzz: Fuzzer, run_id: str) -> list[tuple[Any, ...]]:
    return [row for row in fuzz.snapshot()["log_lines"] if row[0] == run_id]


@STREAM_FUZZ
@given(data=st.data())
def test_engine_streams_store_exactly_what_they_acknowledge(
    world: World, data: st.DataObject
) -> None:
    fuzz = world.fuzz
    hints = _engine_hints(world)
    run_id, token = data.draw(st.sampled_from([world.running, world.pending]), label="run")
    metadata = data.draw(usually(bearer(token), bearer_metadata(world.tokens)), label="metadata")
    valid_open = engine_pb2.ReportRequest(open=engine_pb2.Open(run_id=run_id, attempt=1))
    first = data.draw(
        st.one_of(
            random_messages(engine_pb2.ReportRequest, hints).map(_refusable),
            near_valid(valid_open, hints),
            st.just(valid_open),
            st.just(valid_open),
        ),
        label="first",
    )
    stored = max((row[2] for row in _lines(fuzz, run_id) if row[1] == 1), default=0)
    follow = data.draw(_report_messages(hints, stored + 1), label="follow")

    # Apart from the engine's liveness mark and its own attempt's lines (and task runs, with
    # the run's flag that it has some), nothing may change.
    ignore = frozenset({"flow_runs.last_heartbeat_at", "flow_runs.has_task_runs", "log_lines.text"})
    before = fuzz.snapshot(ignore)
    answers, _error = fuzz.stream(fuzz.engines.Report, [first, *follow], metadata=metadata)
    after = fuzz.snapshot(ignore)

    acked = [a.log_ack.stored_seq for a in answers if a.WhichOneof("message") == "log_ack"]
    opened = [a.opened for a in answers if a.WhichOneof("message") == "opened"]
    if opened:
        assert opened[0].stored_seq == stored
    assert acked == sorted(acked)
    last = acked[-1] if acked else stored
    new = sorted(set(after["log_lines"]) - set(before["log_lines"]))
    assert all(row[0] == run_id and row[1] == 1 for row in new), new
    assert [row[2] for row in new] == list(range(stored + 1, last + 1)), (
        "the lines stored are not exactly the acknowledged ones"
    )
    # Task runs change only with lines stored, and only the attempt's own.
    changed = set(after["task_runs"]) ^ set(before["task_runs"])
    assert all(row[0] == run_id and row[1] == 1 for row in changed), changed
    assert new or not changed, changed
    own = {"log_lines", "task_runs"}
    assert {k: v for k, v in before.items() if k not in own} == {
        k: v for k, v in after.items() if k not in own
    }
    for answer in answers:
        if answer.WhichOneof("message") == "state_result":
            assert not answer.state_result.accepted or answer.state_result.transition_id == "start"


def test_a_request_over_the_size_limit_is_refused_as_too_large(world: World) -> None:
    fuzz = world.fuzz
    limit = fuzz.server.config.max_receive_message_bytes
    request = pb.UpsertDeploymentRequest(
        deployment=deployment("too-large", "pool-a", world.source, description="x" * limit)
    )
    with pytest.raises(grpc.RpcError) as error:
        fuzz.control.UpsertDeployment(request, timeout=WAIT_SECONDS)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    fuzz.unary(fuzz.control.UpsertDeployment, request)


# -- the server afterwards ---------------------------------------------------------------------


def test_the_server_still_serves_after_the_fuzzing(world: World) -> None:
    fuzz = world.fuzz
    fuzz.serving()
    pools = {p.name for p in fuzz.control.ListPools(pb.ListPoolsRequest()).pools}
    assert {"pool-a", "kube", "agent-fuzz", "takeover"} <= pools
    run = fuzz.control.GetRun(pb.GetRunRequest(run_id=world.running[0])).run
    assert run.state.type == types_pb2.STATE_TYPE_RUNNING
    created = fuzz.unary(
        fuzz.control.CreateRun,
        pb.CreateRunRequest(deployment_name="ghost-d", idempotency_key="after-fuzzing"),
    )
    assert created is not None and created.run.state.type == types_pb2.STATE_TYPE_SCHEDULED
    started = fuzz.unary(
        fuzz.engines.StartRun,
        engine_pb2.StartRunRequest(run_id=world.running[0], attempt=1),
        metadata=[("authorization", f"Bearer {world.running[1]}")],
        read_only=True,
    )
    assert started is not None and started.entrypoint
