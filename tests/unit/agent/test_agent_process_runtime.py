"""The process runtime against a fake engine script: start, exit, cancel, deduplicate."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent.errors import ConfigurationError, SubmitError
from agent.models import Assignment, InfraEvent, InfraEventKind, RunKey, RunningInfra
from agent.runtimes.process import ProcessRuntime, read_tail
from agent.settings import ProcessSettings
from tests.waiting import wait_for

SERVER = "cp.example:7700"


class Exits:
    """Collects what the runtime reports through its exit callback."""

    def __init__(self) -> None:
        self.items: list[InfraEvent] = []

    def __call__(self, ended: InfraEvent) -> None:
        # The process runtime reports only ends: succeeded or failed.
        assert ended.ends and ended.kind in (InfraEventKind.SUCCEEDED, InfraEventKind.FAILED)
        self.items.append(ended)

    def of(self, key: RunKey) -> InfraEvent | None:
        return next((e for e in self.items if e.key == key), None)


def assignment(run_id: str, attempt: int = 1, token: str = "tok-123") -> Assignment:
    return Assignment(
        key=RunKey(run_id, attempt),
        deployment_name="dep",
        flow_name="flow",
        base_job_template_json="{}",
        job_variables_json="{}",
        engine_token=token,
    )


@pytest.fixture
def exits() -> Exits:
    return Exits()


@pytest.fixture
def make_runtime(
    fake_engine: tuple[str, ...], work_dir: Path, exits: Exits
) -> Callable[..., ProcessRuntime]:
    def make(
        cancel_grace: float = 5.0, engine_command: tuple[str, ...] = fake_engine
    ) -> ProcessRuntime:
        settings = ProcessSettings(
            engine_command=engine_command, work_dir=work_dir, cancel_grace=cancel_grace
        )
        return ProcessRuntime(settings, server=SERVER, hostname="host-1")

    return make


@pytest.fixture
async def runtime(
    make_runtime: Callable[..., ProcessRuntime], exits: Exits
) -> AsyncIterator[ProcessRuntime]:
    runtime = make_runtime()
    await runtime.start(exits)
    yield runtime
    await runtime.close()


def pid_of(infrastructure_id: str) -> int:
    prefix, host, pid = infrastructure_id.split("/")
    assert (prefix, host) == ("process", "host-1")
    return int(pid)


async def test_submit_runs_the_engine_and_reports_its_exit(
    runtime: ProcessRuntime, exits: Exits, work_dir: Path, eventually
) -> None:
    key = RunKey("exit3-a", 2)
    infrastructure_id = await runtime.submit(assignment("exit3-a", 2))
    pid = pid_of(infrastructure_id)
    await eventually(lambda: exits.of(key) is not None, message="the exit")

    ended = exits.of(key)
    assert ended is not None
    assert ended.infrastructure_id == infrastructure_id
    assert ended.exit_code == 3
    assert ended.kind is InfraEventKind.FAILED
    assert ended.reason == "Error"
    assert ended.message == "the engine exited with code 3"
    assert ended.observe_time.tzinfo is not None
    tail = list(ended.log_tail)
    # The engine's stdout and stderr both land in the per-run log file.
    assert tail[-3:] == ["working", "stderr says hello", "bye"]
    assert "FLOWYARD_SERVER=cp.example:7700" in tail
    assert "FLOWYARD_RUN_ID=exit3-a" in tail
    assert "FLOWYARD_RUN_ATTEMPT=2" in tail
    assert "FLOWYARD_RUN_TOKEN=tok-123" in tail
    assert f"cwd={work_dir / 'exit3-a-2'}" in tail
    # Its own process group, led by the engine.
    assert f"pgid={pid}" in tail
    assert (work_dir / "exit3-a-2.log").read_text().splitlines() == tail
    assert runtime.observe() == []


async def test_successful_exit(runtime: ProcessRuntime, exits: Exits, eventually) -> None:
    await runtime.submit(assignment("exit0-b"))
    await eventually(lambda: bool(exits.items))
    assert exits.items[0].exit_code == 0
    assert exits.items[0].kind is InfraEventKind.SUCCEEDED
    assert exits.items[0].reason == "Completed"


async def test_log_tail_is_the_last_50_lines(
    runtime: ProcessRuntime, exits: Exits, eventually
) -> None:
    await runtime.submit(assignment("lines120-c"))
    await eventually(lambda: bool(exits.items))
    assert exits.items[0].log_tail == tuple(f"line {i}" for i in range(70, 120))


async def test_cancel_kills_the_whole_process_group(
    runtime: ProcessRuntime, exits: Exits, work_dir: Path, eventually, alive
) -> None:
    key = RunKey("tree-d", 1)
    pid = pid_of(await runtime.submit(assignment("tree-d")))
    child_pid_file = work_dir / "tree-d-1" / "child.pid"
    await eventually(child_pid_file.exists, message="the grandchild")
    child = int(child_pid_file.read_text())
    assert alive(pid) and alive(child)

    assert await runtime.cancel(key) is True

    # SIGTERM alone stopped the group: no escalation to SIGKILL (see the exit below).
    assert not alive(pid)
    assert not alive(child)
    ended = exits.of(key)
    assert ended is not None
    assert ended.exit_code == 128 + 15
    assert ended.reason == "Signaled"
    assert ended.message == "the engine was killed by SIGTERM"
    assert runtime.observe() == []


async def test_cancel_escalates_to_sigkill_after_the_grace_period(
    make_runtime: Callable[..., ProcessRuntime], exits: Exits, work_dir: Path, eventually, alive
) -> None:
    runtime = make_runtime(cancel_grace=0.5)
    await runtime.start(exits)
    try:
        key = RunKey("stubborn-e", 1)
        pid = pid_of(await runtime.submit(assignment("stubborn-e")))
        child_pid_file = work_dir / "stubborn-e-1" / "child.pid"
        await eventually(child_pid_file.exists, message="the grandchild")
        child = int(child_pid_file.read_text())

        started = time.monotonic()
        await runtime.cancel(key)

        # It waited out the grace period (a lower bound, which load cannot break) and then
        # killed: the exit below is SIGKILL's.
        assert time.monotonic() - started >= 0.5
        assert not alive(pid)
        assert not alive(child)
        ended = exits.of(key)
        assert ended is not None and ended.exit_code == 128 + 9
        assert ended.message == "the engine was killed by SIGKILL"
    finally:
        await runtime.close()


async def test_duplicate_submit_does_not_start_a_second_process(
    runtime: ProcessRuntime, work_dir: Path, eventually
) -> None:
    key = RunKey("sleep-f", 1)
    first, second, third = await asyncio.gather(
        runtime.submit(assignment("sleep-f")),
        runtime.submit(assignment("sleep-f")),
        runtime.submit(assignment("sleep-f")),
    )
    again = await runtime.submit(assignment("sleep-f"))
    assert first == second == third == again
    pid_file = work_dir / "sleep-f-1" / "engine.pid"
    await eventually(pid_file.exists, message="the engine")
    assert int(pid_file.read_text()) == pid_of(first)
    assert runtime.observe() == [RunningInfra(key, first)]
    # The log shows one engine start, not several.
    await eventually(lambda: "pgid=" in (work_dir / "sleep-f-1.log").read_text())
    assert (work_dir / "sleep-f-1.log").read_text().count("FLOWYARD_RUN_ID=") == 1
    await runtime.cancel(key)


async def test_another_attempt_is_another_process(runtime: ProcessRuntime) -> None:
    one = await runtime.submit(assignment("sleep-g", 1))
    two = await runtime.submit(assignment("sleep-g", 2))
    assert one != two
    assert {r.key.attempt for r in runtime.observe()} == {1, 2}
    await asyncio.gather(runtime.cancel(RunKey("sleep-g", 1)), runtime.cancel(RunKey("sleep-g", 2)))


async def test_cancel_of_an_unknown_run_returns_false(runtime: ProcessRuntime) -> None:
    assert await runtime.cancel(RunKey("nothing", 1)) is False


async def test_missing_engine_command_is_a_clear_submit_error(
    make_runtime: Callable[..., ProcessRuntime], exits: Exits, tmp_path: Path
) -> None:
    runtime = make_runtime(engine_command=(str(tmp_path / "no-such-engine"),))
    await runtime.start(exits)
    try:
        with pytest.raises(SubmitError, match="engine command not found"):
            await runtime.submit(assignment("exit0-h"))
        assert runtime.observe() == []
    finally:
        await runtime.close()


@pytest.mark.parametrize("run_id", ["../escape", "", ".hidden", "a/b", "x" * 300])
async def test_unsafe_run_ids_are_refused(runtime: ProcessRuntime, run_id: str) -> None:
    with pytest.raises(SubmitError, match="invalid run id"):
        await runtime.submit(assignment(run_id))


async def test_close_leaves_engines_running(
    make_runtime: Callable[..., ProcessRuntime], exits: Exits, alive
) -> None:
    runtime = make_runtime()
    await runtime.start(exits)
    pid = pid_of(await runtime.submit(assignment("sleep-i")))
    await runtime.close()
    try:
        assert alive(pid)
        assert exits.items == []
    finally:
        os.killpg(pid, 9)
        # SIGKILL is delivered, not done, when kill() returns: a loaded machine shows it.
        wait_for(lambda: not alive(pid), 10.0, "the killed engine to be gone")


async def test_default_work_dir_is_a_new_temporary_directory(
    fake_engine: tuple[str, ...], exits: Exits
) -> None:
    runtime = ProcessRuntime(ProcessSettings(engine_command=fake_engine), server=SERVER)
    await runtime.start(exits)
    try:
        assert runtime.work_dir.is_dir()
        assert runtime.work_dir.name.startswith("flowyard-agent-")
    finally:
        await runtime.close()
        runtime.work_dir.rmdir()


async def test_infrastructure_id_uses_the_host_name(
    fake_engine: tuple[str, ...], exits: Exits, work_dir: Path, eventually
) -> None:
    runtime = ProcessRuntime(
        ProcessSettings(engine_command=fake_engine, work_dir=work_dir), server=SERVER
    )
    await runtime.start(exits)
    try:
        infrastructure_id = await runtime.submit(assignment("exit0-j"))
        assert infrastructure_id.startswith(f"process/{socket.gethostname()}/")
        await eventually(lambda: bool(exits.items))
    finally:
        await runtime.close()


async def test_unusable_work_dir_is_a_configuration_error(
    fake_engine: tuple[str, ...], tmp_path: Path, exits: Exits
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    runtime = ProcessRuntime(
        ProcessSettings(engine_command=fake_engine, work_dir=blocker / "sub"), server=SERVER
    )
    with pytest.raises(ConfigurationError, match="work directory"):
        await runtime.start(exits)


def test_read_tail(tmp_path: Path) -> None:
    path = tmp_path / "log"
    assert read_tail(path, 50) == ()
    path.write_text("".join(f"row {i}\n" for i in range(10)))
    assert read_tail(path, 3) == ("row 7", "row 8", "row 9")
    assert read_tail(path, 50) == tuple(f"row {i}" for i in range(10))
    assert read_tail(path, 0) == ()
    path.write_bytes(b"ok\n\xff\xfe broken utf-8\n")
    assert read_tail(path, 5) == ("ok", "\ufffd\ufffd broken utf-8")


def test_read_tail_of_a_huge_file_reads_only_its_end(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_text("x" * 1_000_000 + "\n" + "".join(f"end {i}\n" for i in range(60)))
    assert read_tail(path, 50) == tuple(f"end {i}" for i in range(10, 60))
