"""The real agent process against a fake AgentService on a real grpc.aio server."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from flowyard.v1 import agent_pb2

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from conftest import AgentProcess, Eventually, FakeAgentService, FakeServer, FakeSession

    StartAgent = Callable[..., Awaitable[AgentProcess]]
    MakeService = Callable[..., FakeAgentService]


def assign(run_id: str, attempt: int = 1, token: str = "engine-secret-123") -> agent_pb2.Assign:
    return agent_pb2.Assign(
        run_id=run_id,
        attempt=attempt,
        deployment_name="dep",
        flow_name="flow",
        base_job_template_json="{}",
        job_variables_json="{}",
        engine_token=token,
    )


def pid_of(infrastructure_id: str) -> int:
    kind, _host, pid = infrastructure_id.split("/")
    assert kind == "process"
    return int(pid)


async def connected(
    fake_server: FakeServer,
    make_service: MakeService,
    start_agent: StartAgent,
    eventually: Eventually,
    **service_options: object,
) -> tuple[FakeAgentService, AgentProcess, FakeSession]:
    service = make_service(**service_options)
    await fake_server.start(service)
    agent = await start_agent(fake_server.address)
    await eventually(lambda: bool(service.sessions), agent, message="the first session")
    return service, agent, service.sessions[0]


async def test_hello_carries_pool_and_capacity_and_gets_welcome(
    fake_server: FakeServer,
    make_service: MakeService,
    start_agent: StartAgent,
    eventually: Eventually,
) -> None:
    _, agent, session = await connected(fake_server, make_service, start_agent, eventually)
    hello = session.hello
    assert hello.pool == "test-pool"
    assert hello.capacity == 3
    assert hello.agent_name == "agent-1"
    assert hello.runtime == "process"
    assert hello.version
    assert list(hello.observed_runs) == []
    await eventually(lambda: "connected to" in agent.log(), agent, message="the connected log line")
    assert "session-0" in agent.log()
    # The agent heartbeats at the interval the Welcome asked for (0.5 s here).
    await eventually(lambda: len(session.of_kind("heartbeat")) >= 2, agent, message="heartbeats")


async def test_assignment_is_accepted_submitted_run_and_credited_back(
    fake_server: FakeServer,
    make_service: MakeService,
    start_agent: StartAgent,
    eventually: Eventually,
) -> None:
    _, agent, session = await connected(fake_server, make_service, start_agent, eventually)
    session.send(assign=assign("exit0-a1"))
    await eventually(
        lambda: session.kinds("exit0-a1") == ["accepted", "submitted", "infra_event", "credit"],
        agent,
        message="accepted, submitted, infra_event, credit",
    )
    accepted = session.of_kind("accepted")[0]
    assert (accepted.run_id, accepted.attempt) == ("exit0-a1", 1)
    assert accepted.HasField("receive_time")
    submitted = session.of_kind("submitted")[0]
    assert submitted.infrastructure_id.startswith("process/")
    event = session.of_kind("infra_event")[0]
    assert event.kind == agent_pb2.INFRA_EVENT_KIND_SUCCEEDED
    assert event.exit_code == 0
    assert event.HasField("observe_time")
    assert "engine output" in event.log_tail
    assert f"FLOWYARD_SERVER={fake_server.address}" in event.log_tail
    assert "FLOWYARD_RUN_ID=exit0-a1" in event.log_tail
    assert "FLOWYARD_RUN_ATTEMPT=1" in event.log_tail
    assert session.of_kind("credit")[0].credits == 1
    log = agent.log()
    assert "assignment received" in log and "submitted" in log and "exited" in log
    assert "engine-secret-123" not in log, "the engine token must never be logged"


async def test_failed_engine_is_reported_with_exit_code_and_log_tail(
    fake_server: FakeServer,
    make_service: MakeService,
    start_agent: StartAgent,
    eventually: Eventually,
) -> None:
    _, agent, session = await connected(fake_server, make_service, start_agent, eventually)
    session.send(assign=assign("exit7-b1", attempt=2))
    await eventually(lambda: bool(session.of_kind("infra_event")), agent, message="the exit")
    event = session.of_kind("infra_event")[0]
    assert (event.run_id, event.attempt) == ("exit7-b1", 2)
    assert event.kind == agent_pb2.INFRA_EVENT_KIND_FAILED
    assert event.exit_code == 7
    assert event.log_tail[-1] == "engine output"


async def test_cancel_stops_the_engine_and_reports_cancelled(
    fake_server: FakeServer,
    make_service: MakeService,
    start_agent: StartAgent,
    eventually: Eventually,
    is_alive: Callable[[int], bool],
) -> None:
    _, agent, session = await connected(fake_server, make_service, start_agent, eventually)
    session.send(assign=assign("sleep-c1"))
    await eventually(lambda: bool(session.of_kind("submitted")), agent, message="Submitted")
    pid = pid_of(session.of_kind("submitted")[0].infrastructure_id)
    assert is_alive(pid)

    session.send(cancel=agent_pb2.Cancel(run_id="sleep-c1", attempt=1, reason="user asked"))
    await eventually(
        lambda: session.kinds("sleep-c1") == ["accepted", "submitted", "cancelled", "credit"],
        agent,
        message="Cancelled then CreditGrant",
    )
    assert not is_alive(pid)
    assert session.of_kind("infra_event") == []
    assert "cancel" in agent.log()


async def test_cancel_of_an_unknown_run_is_answered_at_once(
    fake_server: FakeServer,
    make_service: MakeService,
    start_agent: StartAgent,
    eventually: Eventually,
) -> None:
    _, agent, session = await connected(fake_server, make_service, start_agent, eventually)
    session.send(cancel=agent_pb2.Cancel(run_id="ghost", attempt=4))
    await eventually(lambda: bool(session.of_kind("cancelled")), agent, message="Cancelled")
    cancelled = session.of_kind("cancelled")[0]
    assert (cancelled.run_id, cancelled.attempt) == ("ghost", 4)
    assert session.of_kind("credit") == []


async def test_reconnects_after_a_server_restart_and_reports_what_happened_meanwhile(
    fake_server: FakeServer,
    make_service: MakeService,
    start_agent: StartAgent,
    eventually: Eventually,
    is_alive: Callable[[int], bool],
) -> None:
    _, agent, first = await connected(fake_server, make_service, start_agent, eventually)
    first.send(assign=assign("sleep-d1"))
    first.send(assign=assign("gate-d2"))
    await eventually(lambda: len(first.of_kind("submitted")) == 2, agent, message="two Submitted")
    infra = {s.run_id: s.infrastructure_id for s in first.of_kind("submitted")}

    await fake_server.stop()
    await eventually(lambda: "reconnecting in" in agent.log(), agent, message="a reconnect")
    # While the agent is disconnected, one engine finishes.
    (agent.work_dir / "gate-d2-1" / "release").touch()
    gate_pid = pid_of(infra["gate-d2"])
    await eventually(lambda: not is_alive(gate_pid), agent, message="the gate engine to exit")
    # Let at least one attempt fail against the stopped server, so the backoff is exercised.
    await eventually(lambda: "cannot connect to" in agent.log(), agent, message="a failed attempt")

    second_service = make_service()
    await fake_server.start(second_service)  # same port
    await eventually(lambda: bool(second_service.sessions), agent, message="a new session")
    second = second_service.sessions[0]

    observed = [(r.run_id, r.attempt, r.infrastructure_id) for r in second.hello.observed_runs]
    assert observed == [("sleep-d1", 1, infra["sleep-d1"])]
    # One slot is still taken; the one freed while disconnected is restated here...
    assert second.hello.capacity == 2
    # ...so the exit reported from the outbox comes without a separate credit.
    await eventually(lambda: bool(second.of_kind("infra_event")), agent, message="the outbox")
    event = second.of_kind("infra_event")[0]
    assert (event.run_id, event.kind) == ("gate-d2", agent_pb2.INFRA_EVENT_KIND_SUCCEEDED)
    assert second.of_kind("credit") == []
    assert is_alive(pid_of(infra["sleep-d1"]))


async def test_a_silent_server_is_treated_as_a_broken_stream(
    fake_server: FakeServer,
    make_service: MakeService,
    start_agent: StartAgent,
    eventually: Eventually,
) -> None:
    service, agent, _ = await connected(
        fake_server,
        make_service,
        start_agent,
        eventually,
        heartbeat_interval=0.2,
        send_heartbeats=False,
    )
    await eventually(lambda: len(service.sessions) >= 2, agent, message="a second session")
    assert "silent" in agent.log()


async def test_a_rejected_agent_exits_2_with_the_server_message(
    fake_server: FakeServer, make_service: MakeService, start_agent: StartAgent
) -> None:
    service = make_service(reject=(grpc.StatusCode.NOT_FOUND, "pool 'nope' does not exist"))
    await fake_server.start(service)
    agent = await start_agent(fake_server.address, pool="nope")
    async with asyncio.timeout(20):
        assert await agent.process.wait() == 2
    log = agent.log()
    assert "NOT_FOUND" in log
    assert "pool 'nope' does not exist" in log


async def test_a_name_in_use_is_logged_and_retried_until_the_server_lets_the_agent_in(
    fake_server: FakeServer,
    make_service: MakeService,
    start_agent: StartAgent,
    eventually: Eventually,
) -> None:
    why = "pool 'test-pool' already has a connected agent named 'agent-1' (instance 'pod-a')"
    service = make_service(reject=(grpc.StatusCode.ALREADY_EXISTS, why))
    await fake_server.start(service)
    agent = await start_agent(fake_server.address)
    refused = "refused, this agent's name is in use: " + why
    await eventually(lambda: agent.log().count(refused) >= 2, agent, message="two refusals")
    assert agent.process.returncode is None  # not fatal: the other agent may be on its way out
    service.reject = None  # the other agent's session ended
    await eventually(lambda: bool(service.sessions), agent, message="a session")
    # One process is one instance, across all its attempts.
    instances = {hello.instance_id for hello in service.hellos}
    assert len(instances) == 1 and "" not in instances, instances
    instance = instances.pop()
    # The agent logs its instance once it is welcomed, which may come after the server's
    # session: waited for, not assumed.
    await eventually(lambda: instance in agent.log(), agent, message="the instance in the log")


async def test_sigterm_stops_the_agent_and_leaves_engines_running(
    fake_server: FakeServer,
    make_service: MakeService,
    start_agent: StartAgent,
    eventually: Eventually,
    is_alive: Callable[[int], bool],
) -> None:
    _, agent, session = await connected(fake_server, make_service, start_agent, eventually)
    session.send(assign=assign("sleep-e1"))
    await eventually(lambda: bool(session.of_kind("submitted")), agent, message="Submitted")
    pid = pid_of(session.of_kind("submitted")[0].infrastructure_id)

    assert await agent.stop() == 0
    assert "agent stopped" in agent.log()
    # The stream was closed by the agent, not cut.
    assert session.client_done
    assert is_alive(pid)
    os.killpg(pid, signal.SIGKILL)


async def test_a_missing_engine_command_is_reported_as_submit_failed(
    fake_server: FakeServer,
    make_service: MakeService,
    start_agent: StartAgent,
    eventually: Eventually,
    tmp_path: Path,
) -> None:
    service = make_service()
    await fake_server.start(service)
    missing = tmp_path / "no-such-engine"
    agent = await start_agent(fake_server.address, "--engine-command", str(missing))
    await eventually(lambda: bool(service.sessions), agent, message="the first session")
    session = service.sessions[0]
    session.send(assign=assign("exit0-f1"))
    await eventually(
        lambda: session.kinds("exit0-f1") == ["accepted", "submit_failed", "credit"],
        agent,
        message="accepted, submit_failed, credit",
    )
    reason = session.of_kind("submit_failed")[0].reason
    assert "engine command not found" in reason
    assert str(missing) in reason
