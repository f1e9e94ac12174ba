"""The ``flowyard`` command as a tool: text printed literally, whole ids in piped output, JSON
and YAML for scripts, run id prefixes, and what Ctrl-C and ``logs --follow`` say.

Every command here runs as a real process against a real control plane, with stdout a pipe
and no ``COLUMNS`` in its environment (the case of ``flowyard runs ls | cat``), unless a test
gives it a terminal.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import re
import signal
import sqlite3
import struct
import subprocess
import termios
from datetime import datetime
from typing import Any

import grpc
import pytest
import yaml

from control_plane.cli.processes import script
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2
from tests.codesources import serve_files, tar_gz

from .conftest import DEADLINE, POOL, System, wait_for

S = types_pb2.StateType

BRACKETS = "[red]x [numkMGTPE] :smile: [/]"

SHOUTING = f"""
import logging

def main():
    print({BRACKETS!r})
    logging.getLogger("flow").warning("unit must match [numkMGTPE]")
    raise ValueError("bad unit [bold]y[/bold] in [numkMGTPE]")
"""

SLEEPER = """
import time

def main(seconds: float = 60):
    print("started", flush=True)
    time.sleep(seconds)
    return "slept"
"""


def flowyard(
    system: System, *args: str, timeout: float = DEADLINE
) -> subprocess.CompletedProcess[str]:
    """Run the CLI with stdout and stderr as pipes and no terminal width in the environment."""
    return subprocess.run(
        [*script("flowyard"), "--server", system.address, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_environment(system),
    )


def _environment(system: System) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["FLOWYARD_TOKEN"] = system.admin_token
    return env


def document(system: System, *args: str) -> Any:
    """The JSON a command prints with ``-o json``, checked to equal its ``-o yaml``."""
    as_json = flowyard(system, *args, "-o", "json")
    assert as_json.returncode == 0, as_json.stderr
    as_yaml = flowyard(system, *args, "-o", "yaml")
    assert as_yaml.returncode == 0, as_yaml.stderr
    parsed = json.loads(as_json.stdout)
    assert yaml.safe_load(as_yaml.stdout) == parsed
    return parsed


def rfc3339(value: str) -> datetime:
    """A UTC time as the JSON output writes it: RFC 3339 with a ``Z``."""
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value)


# Item 12: text in square brackets.


def test_user_and_server_text_prints_literally_with_one_error_prefix(system: System) -> None:
    system.start_agent()
    system.deploy("brackets", SHOUTING, "main", "--description", "[b]old")
    redeployed = flowyard(
        system,
        "deploy",
        "flow.py:main",
        "--name",
        "brackets",
        "--pool",
        POOL,
        "--source",
        str(system.root / "flows" / "brackets"),
        "--description",
        "[i]new",
    )
    assert redeployed.returncode == 0, redeployed.stderr
    assert "  description: '[b]old' → '[i]new'" in redeployed.stdout.splitlines()

    watched = flowyard(system, "run", "brackets", "--watch")
    assert watched.returncode == 1, watched.stderr
    assert BRACKETS in watched.stdout
    assert "unit must match [numkMGTPE]" in watched.stdout
    final = watched.stdout.splitlines()[-1]
    assert final == "FAILED - ValueError: bad unit [bold]y[/bold] in [numkMGTPE]", final
    run_id = watched.stderr.split()[2]

    logs = flowyard(system, "logs", run_id)
    assert BRACKETS in logs.stdout, logs.stdout
    shown = flowyard(system, "runs", "show", run_id)
    assert "ValueError: bad unit [bold]y[/bold] in [numkMGTPE]" in shown.stdout, shown.stdout

    # A server error that quotes what was sent, and a usage error of click's: one prefix.
    refused = flowyard(system, "runs", "ls", "--deployment", "[red]x")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: deployment_name: '[red]x' is not a valid"), (
        refused.stderr
    )
    assert refused.stderr.rstrip().endswith("(INVALID_ARGUMENT)")
    usage = flowyard(system, "runs", "ls", "--limit", "0")
    assert usage.returncode == 2
    assert "error: Invalid value for '--limit'" in usage.stderr, usage.stderr
    assert "Error:" not in usage.stderr


# Item 13: piped tables, JSON and YAML.


def test_piped_tables_never_cut_ids_hashes_or_times(system: System) -> None:
    system.start_agent()
    archive = tar_gz({"app/report.py": "def build() -> str:\n    return 'report ok'\n"})
    digest = hashlib.sha256(archive).hexdigest()
    long_name = "quarterly-revenue-reconciliation-for-all-regions"
    with serve_files({"report.tar.gz": archive}) as files:
        system.stub.UpsertDeployment(
            pb.UpsertDeploymentRequest(
                deployment=types_pb2.Deployment(
                    name=long_name,
                    entrypoint="report.py:build",
                    pool=POOL,
                    source=types_pb2.Source(
                        archive=types_pb2.ArchiveSource(
                            url=files.url("report.tar.gz"), sha256=digest, subdirectory="app"
                        )
                    ),
                )
            )
        )
        run_id = system.create_run(long_name)
        done = system.wait_terminal(run_id)
    assert done.state.type == S.STATE_TYPE_COMPLETED, done.state.message

    listed = flowyard(system, "runs", "ls")
    assert listed.returncode == 0, listed.stderr
    assert "…" not in listed.stdout, listed.stdout
    row = listed.stdout.splitlines()[1].split()
    assert row[:3] == [run_id, long_name, "COMPLETED"], listed.stdout
    created = datetime.fromisoformat(f"{row[4]}T{row[5]}")
    assert created.year >= 2026

    shown = flowyard(system, "runs", "show", run_id)
    assert shown.returncode == 0, shown.stderr
    assert "…" not in shown.stdout, shown.stdout
    assert digest in shown.stdout.split(), shown.stdout

    tokens = flowyard(system, "token", "ls")
    ids = {info.id for info in system.stub.ListTokens(pb.ListTokensRequest()).tokens}
    assert ids and all(token_id in tokens.stdout.split() for token_id in ids), tokens.stdout


def test_a_narrow_terminal_wraps_other_columns_but_never_cuts_an_id(system: System) -> None:
    system.deploy("x-" + "very-long-deployment-name-" * 3, "def main():\n    pass\n")
    run_id = system.create_run("x-" + "very-long-deployment-name-" * 3)
    screen = _on_terminal(system, 50, "runs", "ls")
    assert run_id in screen, screen
    assert "…" not in screen, screen


def _on_terminal(system: System, columns: int, *args: str) -> str:
    """What a command prints on a terminal ``columns`` wide."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = _environment(system)
    env["TERM"] = "xterm"
    process = subprocess.Popen(
        [*script("flowyard"), "--server", system.address, *args],
        stdout=follower,
        stderr=follower,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the command ended and closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=DEADLINE) == 0, b"".join(chunks)
    # Drop colours and the terminal's line ends, keep the text.
    text = b"".join(chunks).decode().replace("\r", "")
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_every_listing_and_show_prints_json_and_yaml(system: System) -> None:
    system.start_agent()
    system.stub.UpsertQueue(
        pb.UpsertQueueRequest(
            pool=POOL, queue=types_pb2.WorkQueue(name="urgent", priority=1, concurrency_limit=2)
        )
    )
    system.deploy("every", "def main(n: int = 1):\n    return n\n", "main", "--cron", "0 6 * * *")
    run_id = system.create_run("every", n=3)
    system.wait_terminal(run_id)

    pools = document(system, "pool", "ls")
    (pool,) = pools["pools"]
    assert pool["name"] == POOL and pool["type"] == "process"
    assert pool["concurrency_limit"] is None and pool["paused"] is False
    assert pool["connected_agents"] == 1
    rfc3339(pool["create_time"])

    queues = document(system, "pool", "queue", "ls", POOL)
    assert [q["name"] for q in queues["queues"]] == ["urgent", "default"]
    assert queues["queues"][0] == {
        "name": "urgent",
        "priority": 1,
        "concurrency_limit": 2,
        "paused": False,
    }

    deployments = document(system, "deployment", "ls")
    (deployment,) = deployments["deployments"]
    assert deployment["name"] == "every" and deployment["entrypoint"] == "flow.py:main"
    assert deployment["source"] == {"local": {"path": str(system.root / "flows" / "every")}}
    assert deployment["parameters"] == {} and deployment["retries"] == 0
    assert deployment["collision_strategy"] == "ENQUEUE"

    schedules = document(system, "deployment", "schedule", "ls", "every", "--upcoming", "2")
    assert schedules["deployment"] == "every" and schedules["deployment_paused"] is False
    (status,) = schedules["schedules"]
    assert status["schedule"]["cron"] == {"expression": "0 6 * * *", "timezone": "UTC"}
    assert len(status["next_times"]) == 2
    assert all(rfc3339(t).hour == 6 for t in status["next_times"])

    runs = document(system, "runs", "ls")
    # The cron schedule created runs ahead of time too.
    run = next(r for r in runs["runs"] if r["id"] == run_id)
    assert all(len(r["id"]) == 32 for r in runs["runs"])
    assert run["id"] == run_id and len(run["id"]) == 32
    assert run["deployment"] == "every" and run["state"]["type"] == "COMPLETED"
    assert run["parameters"] == {"n": 3} and run["result"] == "3"
    assert rfc3339(run["end_time"]) >= rfc3339(run["start_time"]) >= rfc3339(run["create_time"])

    shown = document(system, "runs", "show", run_id)
    assert {k: v for k, v in shown.items() if k not in ("history", "task_runs", "children")} == run
    assert shown["task_runs"] == {}  # a plain function: no task runs
    assert shown["children"] == [] and run["parent_run_id"] is None and run["subflow"] is False
    assert [h["type"] for h in shown["history"]][-2:] == ["RUNNING", "COMPLETED"]
    assert all(h["attempt"] == 1 for h in shown["history"])

    tokens = document(system, "token", "ls")
    kinds = sorted(t["kind"] for t in tokens["tokens"])
    assert kinds == ["admin", "agent"]
    agent_token = next(t for t in tokens["tokens"] if t["kind"] == "agent")
    assert agent_token["pool"] == POOL and agent_token["expire_time"] is None


# Item 14: run id prefixes.


def test_a_unique_run_id_prefix_works_wherever_a_run_id_is_taken(system: System) -> None:
    system.deploy("later", "def main():\n    return 1\n")
    run_id = system.create_run("later")  # no agent: it stays SCHEDULED

    shown = flowyard(system, "runs", "show", run_id[:6], "-o", "json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == run_id
    logs = flowyard(system, "logs", run_id[:8].upper())
    assert logs.returncode == 0, logs.stderr
    cancelled = flowyard(system, "cancel", run_id[:5])
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"Run {run_id}: CANCELLED"

    # A second run whose id shares all but the last character with the first.
    twin = run_id[:-1] + ("0" if run_id[-1] != "0" else "1")
    _copy_run(system, run_id, twin)
    ambiguous = flowyard(system, "runs", "show", run_id[:10])
    assert ambiguous.returncode == 1
    assert ambiguous.stderr.startswith(f"error: run id prefix '{run_id[:10]}' is ambiguous"), (
        ambiguous.stderr
    )
    assert run_id in ambiguous.stderr and twin in ambiguous.stderr
    exact = flowyard(system, "runs", "show", twin, "-o", "json")
    assert json.loads(exact.stdout)["id"] == twin

    unknown = "".join("0123456789abcdef"[(int(c, 16) + 1) % 16] for c in run_id[:8])
    missing = flowyard(system, "logs", unknown)
    assert missing.returncode == 1
    assert missing.stderr == f"error: no run id starts with '{unknown}' (NOT_FOUND)\n"
    short = flowyard(system, "cancel", run_id[:3])
    assert short.returncode == 2
    assert "at least 4" in short.stderr, short.stderr

    # The server filters by prefix itself, so any client can resolve one.
    found = system.stub.ListRuns(pb.ListRunsRequest(run_id_prefix=run_id[:12]))
    assert sorted(r.id for r in found.runs) == sorted([run_id, twin])
    for bad in ("abc", "xyz123", run_id + "0"):
        with pytest.raises(grpc.RpcError) as refused:
            system.stub.ListRuns(pb.ListRunsRequest(run_id_prefix=bad))
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "run_id_prefix" in (refused.value.details() or "")


def _copy_run(system: System, run_id: str, new_id: str) -> None:
    """Store a copy of a run under another id (what two runs with a common prefix look like)."""
    with sqlite3.connect(system.root / "server" / "flowyard.db", timeout=30) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(flow_runs)")]
        chosen = ["?" if c == "id" else "NULL" if c == "idempotency_key" else c for c in columns]
        db.execute(
            f"INSERT INTO flow_runs ({', '.join(columns)}) "
            f"SELECT {', '.join(chosen)} FROM flow_runs WHERE id = ?",
            (new_id, run_id),
        )


# Item 15a: Ctrl-C under --watch, and how logs --follow ends.


def test_interrupted_watch_says_the_run_goes_on_and_how_to_follow_it(system: System) -> None:
    system.start_agent()
    system.deploy("sleeper", SLEEPER)
    out, err = system.root / "watch.out", system.root / "watch.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        watch = subprocess.Popen(
            [*script("flowyard"), "--server", system.address, "run", "sleeper", "--watch"],
            stdout=stdout,
            stderr=stderr,
            env=_environment(system),
            # As in a terminal: a test runner started in the background inherits SIGINT
            # ignored, and a Python child would then never see the Ctrl-C sent below.
            preexec_fn=_sigint_default,
        )
    try:
        try:
            wait_for(lambda: "started" in out.read_text(), what="the flow's first line")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nstdout: {out.read_text()!r}\nstderr: {err.read_text()!r}"
            ) from None
        # Found by what the CLI says, not by position: gRPC's own runtime may log to stderr
        # before it (seen on a loaded machine: an epoll_wait warning).
        found = re.search(r"^Created run ([0-9a-f]{32}) ", err.read_text(), re.MULTILINE)
        assert found, err.read_text()
        run_id = found.group(1)
        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=DEADLINE) == 130
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    try:
        _follow_again(system, run_id, err.read_text())
    finally:
        # Whatever failed, the flow's process must not outlive the test.
        if system.run(run_id).state.type not in (S.STATE_TYPE_CANCELLED, S.STATE_TYPE_CANCELLING):
            system.stub.CancelRun(pb.CancelRunRequest(run_id=run_id))
        system.wait_terminal(run_id)


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _follow_again(system: System, run_id: str, said: str) -> None:
    assert f"run {run_id} goes on" in said, said
    assert f"flowyard logs {run_id} --follow" in said, said
    assert "Traceback" not in said
    assert system.run(run_id).state.type == S.STATE_TYPE_RUNNING

    # Following again: the run is cancelled meanwhile, and the follow ends saying so.
    follow = subprocess.Popen(
        [*script("flowyard"), "--server", system.address, "logs", run_id[:8], "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(system),
    )
    system.stub.CancelRun(pb.CancelRunRequest(run_id=run_id, reason="enough"))
    followed, errors = follow.communicate(timeout=DEADLINE)
    assert follow.returncode == 1, errors
    assert "started" in followed
    assert followed.splitlines()[-1].startswith("CANCELLED"), followed


def test_logs_follow_of_a_completed_run_ends_with_its_state_and_exit_0(system: System) -> None:
    system.start_agent()
    system.deploy("quick", SLEEPER)
    run_id = system.create_run("quick", seconds=0)
    followed = flowyard(system, "logs", run_id, "--follow")
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout.splitlines()[-1] == "COMPLETED", followed.stdout
    # Without --follow: the lines only, as before.
    plain = flowyard(system, "logs", run_id)
    assert plain.returncode == 0 and "COMPLETED" not in plain.stdout
    as_json = flowyard(system, "logs", run_id[:6], "--follow", "-o", "json")
    assert as_json.returncode == 0, as_json.stderr
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [line["seq"] for line in lines] == sorted(line["seq"] for line in lines)
    started = next(line for line in lines if line["text"] == "started")
    assert started["stream"] == "stdout" and started["attempt"] == 1
    rfc3339(started["time"])


# What a repeated idempotency key says.


def test_a_run_with_a_taken_idempotency_key_says_it_exists_and_kept_its_parameters(
    system: System,
) -> None:
    system.deploy("greet", "def main(name: str = 'x'):\n    return name\n")
    first = flowyard(system, "run", "greet", "--idempotency-key", "k1", "--param", "name=Ada")
    assert first.returncode == 0, first.stderr
    run_id = first.stdout.strip()
    assert first.stderr == f"Created run {run_id} of 'greet'\n"

    again = flowyard(system, "run", "greet", "--idempotency-key", "k1", "--param", "name=Bob")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == run_id
    assert again.stderr == (
        f"Run {run_id} of 'greet' already exists for idempotency key 'k1' "
        "(its parameters are those it was created with)\n"
    )
    assert json.loads(system.run(run_id).parameters_json) == {"name": "Ada"}
