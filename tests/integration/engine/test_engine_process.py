"""The real engine process against a fake EngineService."""

from __future__ import annotations

import asyncio
import signal
import socket
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from flowyard.v1 import types_pb2

if TYPE_CHECKING:  # conftest is not importable at run time under --import-mode=importlib
    from conftest import EngineHarness

LOGGER = types_pb2.LOG_STREAM_LOGGER
STDOUT = types_pb2.LOG_STREAM_STDOUT
SYSTEM = types_pb2.LOG_STREAM_SYSTEM
RUNNING = types_pb2.STATE_TYPE_RUNNING
COMPLETED = types_pb2.STATE_TYPE_COMPLETED
FAILED = types_pb2.STATE_TYPE_FAILED
CANCELLED = types_pb2.STATE_TYPE_CANCELLED


def write_flow(directory: Path, code: str, name: str = "flow.py") -> None:
    (directory / name).write_text(textwrap.dedent(code))


def assert_contiguous(engine: EngineHarness, first: int = 1) -> None:
    seqs = sorted(engine.fake.lines)
    assert seqs == list(range(first, first + len(seqs))), "gap or unexpected seq"


LOGGING_FLOW = """
    import logging
    import time

    log = logging.getLogger("demo")

    def main(n: int, name: str = "world", pause: float = 0.0):
        for i in range(n):
            log.info("log %d", i)
            print(f"print {i}")
            if pause:
                time.sleep(pause)
        return f"hi {name}"
"""


async def test_completed_flow_reports_every_line_before_completed(
    engine: EngineHarness, flow_dir: Path
) -> None:
    write_flow(flow_dir, LOGGING_FLOW)
    engine.fake.parameters_json = '{"n": 300, "name": "yard"}'

    result = await engine.run()

    assert result.returncode == 0, result.stderr
    fake = engine.fake
    assert fake.proposed_types() == [RUNNING, COMPLETED]
    completed = fake.last_proposal(COMPLETED)
    assert completed.result_summary == "'hi yard'"
    assert_contiguous(engine)
    assert fake.texts(LOGGER) == [f"log {i}" for i in range(300)]
    assert fake.texts(STDOUT) == [f"print {i}" for i in range(300)]
    assert {line.logger for line in fake.lines.values() if line.stream == LOGGER} == {"demo"}
    # Every line was stored before COMPLETED was proposed.
    assert fake.lines_at_proposal[completed.transition_id] == len(fake.lines)
    system = fake.texts(SYSTEM)
    assert f"Fetched code from {flow_dir}" in system
    assert "Running main(n=300, name='yard')" in system
    assert "Flow returned 'hi yard'" in system
    # Still visible in the process's own output.
    assert "print 299" in result.stdout


async def test_raising_flow_proposes_failed_with_the_exception(
    engine: EngineHarness, flow_dir: Path
) -> None:
    write_flow(
        flow_dir,
        """
        def divide(a, b):
            return a / b

        def main():
            print("about to fail", end="")
            return divide(1, 0)
        """,
    )

    result = await engine.run()

    assert result.returncode == 1, result.stderr
    fake = engine.fake
    assert fake.proposed_types() == [RUNNING, FAILED]
    message = fake.last_proposal(FAILED).message
    assert message.startswith("ZeroDivisionError: division by zero\n\nTraceback")
    assert "in divide" in message and "flow.py" in message
    assert "engine/" not in message, "the engine's own frames leak into the traceback"
    assert "flowyard_sdk" not in message, "the SDK's frames leak into the traceback"
    # The partial line without newline was flushed at the end, before FAILED.
    assert "about to fail" in fake.texts(STDOUT)
    assert any(t.startswith("Flow raised ZeroDivisionError") for t in fake.texts(SYSTEM))
    assert_contiguous(engine)


async def test_missing_parameter_fails_clearly_without_running(
    engine: EngineHarness, flow_dir: Path
) -> None:
    write_flow(flow_dir, LOGGING_FLOW)
    engine.fake.parameters_json = '{"name": "x"}'

    result = await engine.run()

    assert result.returncode == 1, result.stderr
    assert engine.fake.proposed_types() == [FAILED]
    message = engine.fake.last_proposal(FAILED).message
    assert message == (
        "missing required parameter 'n' for main(); accepted parameters: n, name, pause"
    )


async def test_missing_function_fails_clearly(engine: EngineHarness, flow_dir: Path) -> None:
    write_flow(flow_dir, "def other():\n    pass\n")
    engine.fake.entrypoint = "flow.py:main"

    result = await engine.run()

    assert result.returncode == 1
    message = engine.fake.last_proposal(FAILED).message
    assert message == "function 'main' not found in file 'flow.py' (functions defined there: other)"


async def test_lines_survive_a_broken_stream_exactly_once(
    engine: EngineHarness, flow_dir: Path
) -> None:
    write_flow(flow_dir, LOGGING_FLOW)
    engine.fake.parameters_json = '{"n": 200, "pause": 0.002}'
    engine.fake.break_after_lines = 60

    result = await engine.run()

    assert result.returncode == 0, result.stderr
    fake = engine.fake
    assert fake.broken and fake.opens >= 2
    assert_contiguous(engine)
    assert fake.texts(LOGGER) == [f"log {i}" for i in range(200)]
    assert fake.texts(STDOUT) == [f"print {i}" for i in range(200)]
    assert fake.proposed_types() == [RUNNING, COMPLETED]
    assert "reconnecting" in result.stderr


async def test_cancel_flow_interrupts_a_sleeping_flow(
    engine: EngineHarness, flow_dir: Path
) -> None:
    write_flow(
        flow_dir,
        """
        import time

        def main():
            print("sleeping")
            time.sleep(120)
            print("woke up")
        """,
    )
    process = await engine.start()
    fake = engine.fake
    await fake.wait_for(lambda: fake.state == RUNNING and "sleeping" in fake.texts(STDOUT))
    # The engine keeps heartbeating while the flow blocks the main thread.
    await fake.wait_for(lambda: fake.heartbeats >= 3)

    await fake.cancel("stop it")
    # Within the deadline and by SIGTERM (143): the cancel interrupted the two-minute sleep.
    result = await engine.finish(process, within=15)

    assert result.returncode == 143, result.stderr
    assert fake.proposed_types() == [RUNNING, CANCELLED]
    assert fake.state == CANCELLED
    assert any(t.startswith("Run cancelled") for t in fake.texts(SYSTEM))
    assert "woke up" not in fake.texts(STDOUT)
    assert_contiguous(engine)


async def test_sigterm_ends_the_flow_with_exit_143(engine: EngineHarness, flow_dir: Path) -> None:
    write_flow(
        flow_dir,
        """
        import time

        def main():
            print("sleeping")
            time.sleep(120)
        """,
    )
    process = await engine.start()
    fake = engine.fake
    await fake.wait_for(lambda: "sleeping" in fake.texts(STDOUT))

    process.send_signal(signal.SIGTERM)
    result = await engine.finish(process, within=15)

    assert result.returncode == 143, result.stderr
    # The run is not CANCELLING, so CANCELLED is refused: the infrastructure report decides.
    assert fake.proposed_types() == [RUNNING, CANCELLED]
    assert fake.state == RUNNING
    assert any(t.startswith("Run cancelled") for t in fake.texts(SYSTEM))


async def test_stale_attempt_exits_3_without_running(engine: EngineHarness, flow_dir: Path) -> None:
    write_flow(flow_dir, "def main():\n    print('ran')\n")
    engine.fake.start_run_error = grpc.StatusCode.FAILED_PRECONDITION

    result = await engine.run()

    assert result.returncode == 3
    assert engine.fake.proposals == []
    assert "ran" not in result.stdout
    assert "the attempt is not the run's current one" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


async def test_a_restarted_engine_continues_after_the_stored_seq(
    engine: EngineHarness, flow_dir: Path
) -> None:
    write_flow(flow_dir, "def main():\n    print('second engine')\n")
    fake = engine.fake
    for seq in range(1, 6):
        fake.lines[seq] = types_pb2.LogLine(seq=seq, text=f"earlier {seq}")
    fake.acked = 5

    result = await engine.run()

    assert result.returncode == 0, result.stderr
    assert_contiguous(engine)
    assert fake.texts()[:5] == [f"earlier {seq}" for seq in range(1, 6)]
    assert "second engine" in fake.texts(STDOUT)
    assert fake.duplicates == 0


async def test_async_flow_and_module_entrypoint(engine: EngineHarness, flow_dir: Path) -> None:
    package = flow_dir / "pipelines"
    package.mkdir()
    (package / "__init__.py").write_text("")
    write_flow(
        package,
        """
        import asyncio
        import logging

        async def nightly(days: float, tags: tuple = ()):
            await asyncio.sleep(0.01)
            logging.getLogger("pipelines").warning("days=%r tags=%r", days, tags)
            return {"days": days}
        """,
        name="etl.py",
    )
    engine.fake.entrypoint = "pipelines.etl:nightly"
    engine.fake.parameters_json = '{"days": 3, "tags": ["a", "b"]}'

    result = await engine.run()

    assert result.returncode == 0, result.stderr
    assert engine.fake.texts(LOGGER) == ["days=3.0 tags=('a', 'b')"]
    assert engine.fake.last_proposal(COMPLETED).result_summary == "{'days': 3.0}"


async def test_a_refused_token_exits_3_with_one_clear_line(
    engine: EngineHarness, flow_dir: Path
) -> None:
    write_flow(flow_dir, "def main():\n    print('ran')\n")

    result = await engine.run(FLOWYARD_RUN_TOKEN="not-the-token")

    assert result.returncode == 3
    assert engine.fake.proposals == [] and engine.fake.opens == 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("flowyard-engine: cannot run ")
    assert "UNAUTHENTICATED" in last_line


async def test_a_thread_left_running_by_the_flow_does_not_keep_the_process_alive(
    engine: EngineHarness, flow_dir: Path
) -> None:
    write_flow(
        flow_dir,
        """
        import threading
        import time

        def main():
            threading.Thread(target=time.sleep, args=(600,), name="forgotten").start()
            return "done"
        """,
    )

    result = await engine.run(within=30)

    assert result.returncode == 0, result.stderr
    assert engine.fake.proposed_types() == [RUNNING, COMPLETED]
    assert "exiting despite running threads: forgotten" in result.stderr


async def test_sigterm_while_the_control_plane_is_unreachable_exits_at_once(
    engine: EngineHarness, flow_dir: Path
) -> None:
    write_flow(flow_dir, "def main():\n    print('ran')\n")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{probe.getsockname()[1]}"
    process = await engine.start(FLOWYARD_SERVER=nowhere)
    assert process.stderr is not None
    # Waiting for the control plane (it retries with backoff), as an engine of an attempt
    # handed back during an outage does.
    while b"reconnecting" not in await asyncio.wait_for(process.stderr.readline(), 30):
        pass
    process.send_signal(signal.SIGTERM)
    # Within 15 s, not after the 60 s connect timeout.
    result = await engine.finish(process, within=15)
    assert result.returncode == 143, result.stderr
    assert "nothing ran" in result.stderr
    assert "ran" not in result.stdout


TASKS_FLOW = """
    from flowyard import flow, task

    @task(retries=1, tags=["io"])
    def extract(rows):
        print(f"extracting {rows}")
        if extract_calls.append(1) or len(extract_calls) == 1:
            raise ConnectionError("busy")
        return list(range(rows))

    @task
    def check(values):
        raise ValueError(f"{len(values)} values are too many")

    extract_calls = []

    @flow
    def main():
        print("outside any task")
        return check(extract(3))
"""


async def test_task_runs_travel_as_lines_that_carry_their_changes(
    engine: EngineHarness, flow_dir: Path
) -> None:
    write_flow(flow_dir, TASKS_FLOW)

    result = await engine.run()

    assert result.returncode == 1, result.stderr
    fake = engine.fake
    assert_contiguous(engine)
    lines = [line for _, line in sorted(fake.lines.items())]
    changes = [
        (line.task_run_event.name, types_pb2.TaskRunState.Name(line.task_run_event.state))
        for line in lines
        if line.HasField("task_run_event")
    ]
    assert changes == [
        ("extract-0", "TASK_RUN_STATE_RUNNING"),
        ("extract-0", "TASK_RUN_STATE_RETRYING"),
        ("extract-0", "TASK_RUN_STATE_RUNNING"),
        ("extract-0", "TASK_RUN_STATE_COMPLETED"),
        ("check-0", "TASK_RUN_STATE_RUNNING"),
        ("check-0", "TASK_RUN_STATE_FAILED"),
    ]
    events = [line.task_run_event for line in lines if line.HasField("task_run_event")]
    first, retrying, second = events[0], events[1], events[2]
    assert first.attempt == 1 and second.attempt == 2
    assert first.task_run_id == retrying.task_run_id == second.task_run_id
    assert (first.inputs, list(first.tags)) == ("3", ["io"])
    assert (retrying.error_type, retrying.error_message) == ("ConnectionError", "busy")
    assert events[-1].error_message == "3 values are too many"
    # What the flow prints is the task run's inside a task, nobody's outside.
    printed = {line.text: line.task_run for line in lines if line.stream == STDOUT}
    assert printed == {"extracting 3": "extract-0", "outside any task": ""}
    # The failure's traceback shows the flow and the task, not the SDK between them.
    message = fake.last_proposal(FAILED).message
    assert "in main" in message and "in check" in message, message
    assert "flowyard_sdk" not in message, message
