"""Tasks as a flow author uses them, run locally (no server): retries, timeouts, futures, map."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading

import pytest

from flowyard import (
    TaskTimeoutError,
    UpstreamTaskFailed,
    flow,
    runtime,
    task,
    unmapped,
)

WAIT = 10.0  # seconds a test waits on an event before it fails


def test_a_task_that_fails_twice_then_succeeds_returns_with_three_attempts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempts: list[int | None] = []

    @task(retries=3, retry_delay_seconds=[0.01, 0.02])
    def flaky(x: int) -> int:
        attempts.append(runtime.task_run.attempt)
        if len(attempts) < 3:
            raise ConnectionError(f"try {len(attempts)}")
        return x * 2

    with caplog.at_level(logging.WARNING, logger="flowyard.tasks"):
        assert flaky(21) == 42
    assert attempts == [1, 2, 3]
    retries = [r.getMessage() for r in caplog.records]
    assert retries == [
        "Task run flaky-0 failed (attempt 1 of 4): ConnectionError: try 1; retrying in 0.01 s",
        "Task run flaky-0 failed (attempt 2 of 4): ConnectionError: try 2; retrying in 0.02 s",
    ]


def test_retries_end_with_the_last_error_and_only_listed_errors_are_retried() -> None:
    calls = []

    @task(retries=2, retry_on=ConnectionError)
    def always(kind: type[Exception]) -> None:
        calls.append(kind)
        raise kind("nope")

    with pytest.raises(ConnectionError, match="nope"):
        always(ConnectionError)
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(KeyError):
        always(KeyError)
    assert len(calls) == 1  # not one of retry_on: final at once


def test_a_sync_attempt_past_its_timeout_raises_and_is_retried() -> None:
    release = threading.Event()
    attempts = []

    @task(timeout_seconds=0.05, retries=1)
    def stuck() -> str:
        attempts.append(runtime.task_run.attempt)
        if len(attempts) == 1:
            release.wait(WAIT)
        return "second try"

    try:
        assert stuck() == "second try"
    finally:
        release.set()
    assert attempts == [1, 2]

    @task(timeout_seconds=0.05)
    def stuck_for_good() -> None:
        release.clear()
        release.wait(WAIT)

    try:
        with pytest.raises(TaskTimeoutError, match=r"did not finish within 0\.05 s"):
            stuck_for_good()
    finally:
        release.set()


async def test_an_async_attempt_past_its_timeout_is_cancelled() -> None:
    cancelled = asyncio.Event()

    @task(timeout_seconds=0.05)
    async def slow() -> None:
        try:
            await asyncio.sleep(WAIT)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TaskTimeoutError):
        await slow()
    assert cancelled.is_set()


def test_map_runs_items_concurrently_on_the_flows_workers() -> None:
    # Four calls meet at the barrier only if four run at once.
    meeting = threading.Barrier(4, timeout=WAIT)
    threads = set()

    @task
    def meet(item: int, offset: int) -> int:
        threads.add(threading.get_ident())
        meeting.wait()
        return item + offset

    @flow(max_workers=4)
    def fan_out() -> list[int]:
        return meet.map(range(8), offset=unmapped(100)).result()

    assert fan_out() == [100 + i for i in range(8)]
    assert len(threads) == 4


def test_max_concurrency_bounds_a_task_across_submits() -> None:
    lock = threading.Lock()
    running = 0
    most = 0
    pair = threading.Barrier(2, timeout=WAIT)

    @task(max_concurrency=2)
    def limited(_: int) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        pair.wait()  # two at once, never more: a third would find the barrier broken or full
        with lock:
            running -= 1

    @flow(max_workers=6)
    def many() -> None:
        limited.map(range(6)).result()

    many()
    assert most == 2


def test_futures_as_arguments_are_waited_for_at_any_depth() -> None:
    @task
    def number(x: int) -> int:
        return x

    @task
    def total(values: list[int], extra: dict[str, int]) -> int:
        return sum(values) + sum(extra.values())

    @flow
    def sums() -> int:
        firsts = number.map([1, 2, 3])
        return total(list(firsts), {"four": number.submit(4)})

    assert sums() == 10


def test_a_task_given_a_failed_future_does_not_run() -> None:
    ran = []

    @task
    def broken() -> int:
        raise ValueError("bad input")

    @task
    def after(x: int) -> int:
        ran.append(x)
        return x

    @flow
    def chain() -> int:
        return after(broken.submit())

    with pytest.raises(UpstreamTaskFailed, match=r"upstream task run broken-0 failed: ValueError"):
        chain()
    assert ran == []


def test_a_flow_waits_for_what_it_submitted_and_ignores_failures_it_never_looked_at() -> None:
    started = threading.Event()
    release = threading.Event()
    done = []

    @task
    def background() -> None:
        started.set()
        release.wait(WAIT)
        done.append("background")

    @task
    def fails() -> None:
        raise RuntimeError("nobody looks")

    @flow
    def fire_and_forget() -> str:
        background.submit()
        fails.submit()
        started.wait(WAIT)
        release.set()
        return "returned"

    assert fire_and_forget() == "returned"
    assert done == ["background"]


def test_a_failing_flow_stops_its_tasks() -> None:
    started = threading.Event()
    saw_stop = threading.Event()
    queued_ran = []

    @task
    def long_job() -> None:
        started.set()
        for _ in range(int(WAIT / 0.01)):
            if runtime.cancel_requested:
                saw_stop.set()
                return
            threading.Event().wait(0.01)

    @task
    def queued() -> None:
        queued_ran.append(True)

    @flow(max_workers=1)
    def doomed() -> None:
        long_job.submit()
        queued.submit()  # waits for the only worker
        started.wait(WAIT)
        raise ValueError("the flow gives up")

    with pytest.raises(ValueError, match="gives up"):
        doomed()
    assert saw_stop.wait(WAIT)
    assert queued_ran == []


def test_runtime_answers_none_outside_a_run_and_names_task_runs_inside() -> None:
    assert runtime.flow_run.id is None
    assert runtime.flow_run.parameters == {}
    assert runtime.task_run.name is None
    assert not runtime.cancel_requested

    @task(name="step", tags=["io"])
    def step() -> tuple[str | None, str | None, int | None, frozenset[str]]:
        info = runtime.task_run
        return info.name, info.task_name, info.attempt, info.tags

    @flow
    def named() -> list[tuple[str | None, str | None, int | None, frozenset[str]]]:
        return [step(), step.submit().result()]

    assert named() == [
        ("step-0", "step", 1, frozenset({"io"})),
        ("step-1", "step", 1, frozenset({"io"})),
    ]


async def test_async_flows_submit_map_and_await_async_tasks() -> None:
    @task
    async def square(x: int) -> int:
        await asyncio.sleep(0)
        return x * x

    @task
    def plus_one(x: int) -> int:
        return x + 1

    @flow
    async def squares() -> list[int]:
        futures = square.map(range(4))
        one = await square(5)
        sync = await plus_one.submit(futures[3])  # a sync task's future awaited on the loop
        return [*[await f for f in futures], one, sync]

    assert await squares() == [0, 1, 4, 9, 25, 10]


def test_a_sync_flow_submits_an_async_task() -> None:
    @task
    async def hello(name: str) -> str:
        await asyncio.sleep(0)
        return f"hello {name}"

    @flow
    def greet() -> str:
        return hello.submit("world").result(WAIT)

    assert greet() == "hello world"


def test_a_flow_called_inside_a_flow_is_a_subflow(caplog: pytest.LogCaptureFixture) -> None:
    @task
    def step() -> str | None:
        return runtime.task_run.name

    @flow(name="child", task_retries=2)
    def child() -> list[str | None]:
        return [step(), step()]

    @flow(name="parent")
    def parent() -> list[str | None]:
        return [step(), *child()]

    with caplog.at_level(logging.INFO, logger="flowyard.flows"):
        assert parent() == ["step-0", "step-0", "step-1"]  # the subflow numbers its own
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "Subflow child started"
    assert messages[1].startswith("Subflow child finished in ")


def test_flow_defaults_apply_to_tasks_that_do_not_set_their_own() -> None:
    attempts: list[int | None] = []

    @task
    def flaky() -> None:
        attempts.append(runtime.task_run.attempt)
        raise OSError("down")

    @task(retries=0)
    def once() -> None:
        attempts.append(runtime.task_run.attempt)
        raise OSError("down")

    @flow(task_retries=2, task_retry_delay_seconds=0)
    def defaults() -> None:
        with pytest.raises(OSError):
            flaky()
        with pytest.raises(OSError):
            once()

    defaults()
    assert attempts == [1, 2, 3, 1]


def test_map_and_settings_refuse_what_cannot_work() -> None:
    @task
    def pair(a: int, b: int) -> int:
        return a + b

    with pytest.raises(ValueError, match=r"differ in length \(argument 1 has 2, b has 3\)"):
        pair.map([1, 2], b=[1, 2, 3])
    with pytest.raises(TypeError, match="at least one iterable"):
        pair.map(1, b=2)
    with pytest.raises(ValueError, match="retries must be a whole number"):
        task(retries=-1)(pair.fn)
    with pytest.raises(ValueError, match="timeout_seconds must be > 0"):
        task(timeout_seconds=0)(pair.fn)
    with pytest.raises(TypeError, match="retry_on takes exception classes"):
        task(retry_on=[ValueError, "oops"])(pair.fn)  # type: ignore[list-item]


def test_a_decorated_function_keeps_its_name_doc_and_signature() -> None:
    @task
    def documented(x: int, y: str = "a") -> str:
        """Says so."""
        return y * x

    @flow
    def entry(n: int = 1) -> str:
        """The flow."""
        return documented(n)

    assert documented.__name__ == "documented" and documented.__doc__ == "Says so."
    assert list(inspect.signature(documented).parameters) == ["x", "y"]
    assert inspect.signature(entry).parameters["n"].default == 1
    assert entry(3) == "aaa"
