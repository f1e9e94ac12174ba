"""Retries, schedules, priorities and limits end to end: control plane, agent and engine as
real processes, driven through the CLI and the gRPC API."""

from __future__ import annotations

from datetime import datetime

from control_plane.cli.processes import start_server
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2

from .conftest import POOL, System, wait_for

#: Fails until it has failed ``failures`` times (counted in a file beside the flow).
FLAKY = """
from pathlib import Path


def main(failures: int = 2) -> str:
    counter = Path(__file__).with_name("attempts")
    seen = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(seen + 1))
    print(f"attempt number {seen + 1}")
    if seen < failures:
        raise RuntimeError(f"failure {seen + 1}")
    return "finally"
"""

QUICK = """
import time


def main(label: str = "", seconds: float = 0.3) -> str:
    time.sleep(seconds)
    return label
"""


def attempt_headers(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("=== attempt")]


def test_a_flow_that_fails_twice_completes_on_its_third_attempt(system: System) -> None:
    system.start_agent()
    system.deploy("flaky", FLAKY, "main", "--retries", "2", "--retry-delay", "1")
    run_id = system.create_run("flaky")
    run = system.wait_terminal(run_id)
    assert run.state.type == types_pb2.STATE_TYPE_COMPLETED, run.state
    assert (run.attempt, run.max_retries, run.result_summary) == (3, 2, "'finally'")

    logs = system.cli("logs", run_id)
    assert logs.returncode == 0, logs.stderr
    assert attempt_headers(logs.stdout) == [f"=== attempt {n} ===" for n in (1, 2, 3)]
    assert [n for n in (1, 2, 3) if f"attempt number {n}" in logs.stdout] == [1, 2, 3]

    show = system.cli("runs", "show", run_id)
    assert show.returncode == 0, show.stderr
    rows = [line.split() for line in show.stdout.split("Attempts", 1)[1].splitlines()[2:]]
    assert [(row[0], row[3]) for row in rows if row] == [
        ("1", "FAILED"),
        ("2", "FAILED"),
        ("3", "COMPLETED"),
    ]

    # The delay is respected: each retry started at least a second after its attempt failed.
    history = system.stub.GetRun(pb.GetRunRequest(run_id=run_id)).history
    failed = [h.timestamp.ToDatetime() for h in history if h.type == types_pb2.STATE_TYPE_FAILED]
    started = [
        h.timestamp.ToDatetime()
        for h in history
        if h.type == types_pb2.STATE_TYPE_RUNNING and h.attempt > 1
    ]
    assert len(failed) == 2 and len(started) == 2
    assert all((s - f).total_seconds() >= 1.0 for f, s in zip(failed, started, strict=True))


def test_with_one_retry_the_run_ends_failed_at_its_second_attempt(system: System) -> None:
    system.start_agent()
    system.deploy("flaky", FLAKY, "main", "--retries", "1")
    result = system.cli("run", "flaky", "--watch")
    assert result.returncode == 1
    run_id = result.stderr.split()[2]
    run = system.run(run_id)
    assert (run.state.type, run.attempt) == (types_pb2.STATE_TYPE_FAILED, 2)
    assert "failure 2" in run.state.message
    assert attempt_headers(result.stdout) == ["=== attempt 1 ===", "=== attempt 2 ==="]


def scheduled_runs(system: System, deployment: str) -> list[types_pb2.FlowRun]:
    response = system.stub.ListSchedules(pb.ListSchedulesRequest(deployment_name=deployment))
    return [run for status in response.schedules for run in status.scheduled_runs]


def test_schedules_create_runs_ahead_survive_restarts_and_follow_pause_and_resume(
    system: System,
) -> None:
    system.deploy(
        "ticker",
        QUICK,
        "main",
        "--interval",
        "900",
        "--cron",
        "0 6 * * *",
        "--timezone",
        "America/New_York",
    )
    ahead = wait_for(
        lambda: len(scheduled_runs(system, "ticker")) >= 7 and scheduled_runs(system, "ticker"),
        what="runs ahead",
    )
    keys = sorted(r.idempotency_key for r in ahead)

    # Restart the control plane on the same data: the same runs, no duplicates.
    port = int(system.address.rsplit(":", 1)[1])
    system.server.stop()
    system.server = start_server(system.root / "server", port=port)
    again = wait_for(lambda: scheduled_runs(system, "ticker"), what="runs after restart")
    assert sorted(r.idempotency_key for r in again)[: len(keys) - 1] == keys[: len(keys) - 1]
    assert len({r.idempotency_key for r in again}) == len(again)

    listed = system.cli("deployment", "schedule", "ls", "ticker")
    assert listed.returncode == 0, listed.stderr
    assert "cron '0 6 * * *' America/New_York" in listed.stdout
    assert "every 900 s" in listed.stdout

    paused = system.cli("deployment", "pause", "ticker", "--schedule", "interval-0")
    assert paused.returncode == 0, paused.stderr
    assert "Paused schedule 'interval-0' of deployment 'ticker'" in paused.stdout
    names = {r.schedule_name for r in scheduled_runs(system, "ticker")}
    assert names == {"cron-0"}
    assert system.cli("deployment", "pause", "ticker").returncode == 0
    assert scheduled_runs(system, "ticker") == []
    resumed = system.cli("deployment", "resume", "ticker")
    assert resumed.returncode == 0, resumed.stderr
    assert "Resumed deployment 'ticker'" in resumed.stdout
    assert system.cli("deployment", "resume", "ticker", "--schedule", "interval-0").returncode == 0
    wait_for(
        lambda: (
            {r.schedule_name for r in scheduled_runs(system, "ticker")} == {"cron-0", "interval-0"}
        ),
        what="runs created again",
    )
    # 06:00 in New York, whatever the season.
    for run in scheduled_runs(system, "ticker"):
        if run.schedule_name == "cron-0":
            local = run.scheduled_time.ToDatetime().astimezone(_new_york())
            assert (local.hour, local.minute) == (6, 0)


def _new_york() -> object:
    from zoneinfo import ZoneInfo

    return ZoneInfo("America/New_York")


def test_a_high_priority_run_created_later_goes_first(system: System) -> None:
    assert system.cli("pool", "queue", "create", POOL, "urgent", "--priority", "1").returncode == 0
    assert system.cli("pool", "queue", "create", POOL, "default", "--priority", "5").returncode == 0
    listed = system.cli("pool", "queue", "ls", POOL)
    assert listed.stdout.index("urgent") < listed.stdout.index("default")
    system.deploy("quick", QUICK, "main")
    low = system.create_run("quick", label="low")
    high = system.stub.CreateRun(
        pb.CreateRunRequest(
            deployment_name="quick", parameters_json='{"label": "high"}', queue="urgent"
        )
    ).run.id
    system.start_agent(capacity=1)
    for run_id in (low, high):
        assert system.wait_terminal(run_id).state.type == types_pb2.STATE_TYPE_COMPLETED
    assert system.run(high).start_time.ToDatetime() < system.run(low).start_time.ToDatetime()


def max_running_at_once(system: System, run_ids: list[str]) -> int:
    """The most runs RUNNING at the same time, from their state histories."""
    events: list[tuple[datetime, int]] = []
    for run_id in run_ids:
        history = system.stub.GetRun(pb.GetRunRequest(run_id=run_id)).history
        for state in history:
            if state.type == types_pb2.STATE_TYPE_PENDING and state.name == "Assigned":
                events.append((state.timestamp.ToDatetime(), 1))
            if state.type in (
                types_pb2.STATE_TYPE_COMPLETED,
                types_pb2.STATE_TYPE_FAILED,
                types_pb2.STATE_TYPE_CRASHED,
                types_pb2.STATE_TYPE_CANCELLED,
            ):
                events.append((state.timestamp.ToDatetime(), -1))
    running = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        running += delta
        peak = max(peak, running)
    return peak


def test_deployment_queue_and_pool_limits_are_never_exceeded(system: System) -> None:
    system.deploy("limited", QUICK, "main", "--concurrency-limit", "2")
    system.start_agent(capacity=8)
    runs = [system.create_run("limited", label=str(i)) for i in range(6)]

    def waiting_reason() -> str:
        for run_id in runs:
            state = system.run(run_id).state
            if state.name == "AwaitingConcurrencySlot":
                return state.message
        return ""

    reason = wait_for(waiting_reason, what="a run awaiting a slot")
    assert reason.startswith("deployment limited is at its concurrency limit (2 of 2 running: ")
    for run_id in runs:
        assert system.wait_terminal(run_id).state.type == types_pb2.STATE_TYPE_COMPLETED
    assert max_running_at_once(system, runs) == 2

    assert (
        system.cli(
            "pool", "queue", "create", POOL, "default", "--concurrency-limit", "3"
        ).returncode
        == 0
    )
    system.deploy("free", QUICK, "main")
    runs = [system.create_run("free", label=str(i)) for i in range(6)]
    for run_id in runs:
        system.wait_terminal(run_id)
    assert max_running_at_once(system, runs) == 3

    assert (
        system.cli(
            "pool", "queue", "create", POOL, "default", "--concurrency-limit", "0"
        ).returncode
        == 0
    )
    assert system.cli("pool", "set", POOL, "--concurrency-limit", "1").returncode == 0
    runs = [system.create_run("free", label=str(i)) for i in range(4)]
    for run_id in runs:
        system.wait_terminal(run_id)
    assert max_running_at_once(system, runs) == 1


def test_cancel_new_cancels_with_its_reason(system: System) -> None:
    system.deploy(
        "single", QUICK, "main", "--concurrency-limit", "1", "--collision-strategy", "cancel-new"
    )
    system.start_agent(capacity=4)
    first = system.create_run("single", seconds=3)
    wait_for(lambda: system.run(first).state.type == types_pb2.STATE_TYPE_RUNNING, what="running")
    second = system.create_run("single")
    run = system.wait_terminal(second)
    assert run.state.type == types_pb2.STATE_TYPE_CANCELLED
    assert f"deployment single is at its concurrency limit (1 of 1 running: {first})" in (
        run.state.message
    )
    assert system.wait_terminal(first).state.type == types_pb2.STATE_TYPE_COMPLETED


def test_an_agent_started_for_one_queue_takes_only_its_runs(system: System) -> None:
    assert system.cli("pool", "queue", "create", POOL, "gpu").returncode == 0
    system.deploy("quick", QUICK, "main")
    other = system.create_run("quick", label="default")
    mine = system.stub.CreateRun(
        pb.CreateRunRequest(deployment_name="quick", parameters_json="{}", queue="gpu")
    ).run.id
    system.start_agent("gpu-agent", extra_args=["--queue", "gpu"])
    assert system.wait_terminal(mine).state.type == types_pb2.STATE_TYPE_COMPLETED
    assert system.run(other).state.type == types_pb2.STATE_TYPE_SCHEDULED
