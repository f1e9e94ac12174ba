"""The run manager's bookkeeping against a fake runtime: reports, credits, cancels, repeats,
intermediate events and adoption."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from agent.errors import SubmitError
from agent.models import Assignment, InfraEvent, InfraEventKind, InfraExit, RunKey, RunningInfra
from agent.reports import (
    Accepted,
    Cancelled,
    CreditGranted,
    InfraObserved,
    Outbox,
    Report,
    SubmitFailed,
    Submitted,
)
from agent.runs import RunManager
from agent.runtimes.base import EventCallback, Runtime

NOW = datetime(2030, 1, 1, tzinfo=UTC)


class FakeRuntime(Runtime):
    """A runtime whose infrastructure exists only in memory; tests decide when it ends."""

    name = "fake"

    def __init__(self) -> None:
        self.on_event: EventCallback | None = None
        self.running: dict[RunKey, str] = {}
        self.submits: list[RunKey] = []
        self.cancels: list[RunKey] = []
        self.gate: asyncio.Event | None = None
        self.fail_with: str | None = None

    async def start(self, on_event: EventCallback) -> None:
        self.on_event = on_event

    async def submit(self, assignment: Assignment) -> str:
        self.submits.append(assignment.key)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise SubmitError(self.fail_with)
        return self.running.setdefault(assignment.key, f"fake/{assignment.key.run_id}")

    async def cancel(self, key: RunKey) -> bool:
        self.cancels.append(key)
        if key not in self.running:
            return False
        self.end(key, exit_code=143, signal_number=15)
        return True

    def observe(self) -> list[RunningInfra]:
        return [RunningInfra(k, i) for k, i in self.running.items()]

    async def close(self) -> None:
        pass

    def end(self, key: RunKey, exit_code: int = 0, signal_number: int | None = None) -> None:
        infrastructure_id = self.running.pop(key)
        assert self.on_event is not None
        self.on_event(
            InfraExit(
                key, infrastructure_id, exit_code, NOW, ("last line",), signal_number
            ).to_event()
        )

    def emit(self, key: RunKey, kind: InfraEventKind, reason: str, gave_up: bool = False) -> None:
        """Report an event about running infrastructure; an ending one removes it."""
        infrastructure_id = self.running[key]
        event = InfraEvent(key, infrastructure_id, kind, NOW, reason, gave_up=gave_up)
        if event.ends:
            del self.running[key]
        assert self.on_event is not None
        self.on_event(event)


def assignment(run_id: str, attempt: int = 1) -> Assignment:
    return Assignment(RunKey(run_id, attempt), "dep", "flow", "{}", "{}", engine_token="t")


def drain(outbox: Outbox) -> list[Report]:
    reports = list(outbox.pending())
    for report in reports:
        outbox.discard(report)
    return reports


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def outbox() -> Outbox:
    return Outbox()


@pytest.fixture
async def manager(runtime: FakeRuntime, outbox: Outbox) -> AsyncIterator[RunManager]:
    manager = RunManager(runtime, outbox, capacity=2)
    await runtime.start(manager.on_event)
    yield manager
    await manager.close(grace=1.0)


async def settle() -> None:
    """Yield to the loop so background submissions and cancels run.

    The fake runtime never blocks on time, so a few turns of the loop are deterministic.
    """
    for _ in range(5):
        await asyncio.sleep(0)


async def test_assignment_is_accepted_submitted_and_its_exit_reported(
    manager: RunManager, runtime: FakeRuntime, outbox: Outbox
) -> None:
    key = RunKey("r1", 1)
    manager.assign(assignment("r1"), NOW)
    # Accepted goes out before anything is submitted.
    assert outbox.pending() == (Accepted(key, NOW),)
    await settle()
    assert drain(outbox) == [Accepted(key, NOW), Submitted(key, "fake/r1")]
    assert manager.free_slots == 1

    runtime.end(key, exit_code=1)
    reports = drain(outbox)
    assert [type(r) for r in reports] == [InfraObserved, CreditGranted]
    ended = reports[0]
    assert isinstance(ended, InfraObserved)
    assert ended.event.exit_code == 1
    assert ended.event.kind is InfraEventKind.FAILED
    assert manager.free_slots == 2


async def test_failed_submission_reports_the_reason_and_frees_the_slot(
    manager: RunManager, runtime: FakeRuntime, outbox: Outbox
) -> None:
    runtime.fail_with = "engine command not found: 'x'"
    manager.assign(assignment("r1"), NOW)
    await settle()
    key = RunKey("r1", 1)
    assert drain(outbox) == [
        Accepted(key, NOW),
        SubmitFailed(key, "engine command not found: 'x'"),
        CreditGranted(1),
    ]
    assert manager.free_slots == 2


async def test_cancel_of_an_unknown_run_removes_leftovers_and_answers_cancelled(
    manager: RunManager, runtime: FakeRuntime, outbox: Outbox
) -> None:
    manager.cancel(RunKey("ghost", 3), "user asked")
    manager.cancel(RunKey("ghost", 3), "asked again")  # one cleanup at a time
    await settle()
    assert drain(outbox) == [Cancelled(RunKey("ghost", 3))]
    # The runtime is asked, in case infrastructure was left behind (after a restart).
    assert runtime.cancels == [RunKey("ghost", 3)]


async def test_cancel_reports_cancelled_instead_of_the_exit(
    manager: RunManager, runtime: FakeRuntime, outbox: Outbox
) -> None:
    key = RunKey("r1", 1)
    manager.assign(assignment("r1"), NOW)
    await settle()
    drain(outbox)
    manager.cancel(key, "user asked")
    manager.cancel(key, "user asked again")  # idempotent while in progress
    await settle()
    assert runtime.cancels == [key]
    assert drain(outbox) == [Cancelled(key), CreditGranted(1)]
    assert manager.free_slots == 2


async def test_cancel_during_submission_cancels_once_submitted(
    manager: RunManager, runtime: FakeRuntime, outbox: Outbox
) -> None:
    key = RunKey("r1", 1)
    runtime.gate = asyncio.Event()
    manager.assign(assignment("r1"), NOW)
    await settle()
    manager.cancel(key, "too slow")
    assert runtime.cancels == []
    runtime.gate.set()
    await settle()
    assert runtime.cancels == [key]
    assert drain(outbox) == [
        Accepted(key, NOW),
        Submitted(key, "fake/r1"),
        Cancelled(key),
        CreditGranted(1),
    ]


async def test_cancel_during_a_failing_submission_reports_cancelled(
    manager: RunManager, runtime: FakeRuntime, outbox: Outbox
) -> None:
    key = RunKey("r1", 1)
    runtime.gate = asyncio.Event()
    runtime.fail_with = "boom"
    manager.assign(assignment("r1"), NOW)
    await settle()
    manager.cancel(key, "")
    runtime.gate.set()
    await settle()
    assert drain(outbox) == [Accepted(key, NOW), Cancelled(key), CreditGranted(1)]


async def test_repeated_assign_of_a_held_run_is_not_submitted_again(
    manager: RunManager, runtime: FakeRuntime, outbox: Outbox
) -> None:
    key = RunKey("r1", 1)
    manager.assign(assignment("r1"), NOW)
    await settle()
    drain(outbox)
    manager.assign(assignment("r1"), NOW)
    await settle()
    assert runtime.submits == [key]
    # Its credit comes straight back: the repeat took no slot.
    assert drain(outbox) == [Accepted(key, NOW), Submitted(key, "fake/r1"), CreditGranted(1)]
    assert manager.free_slots == 1


async def test_repeated_assign_of_an_ended_run_reports_the_end_again(
    manager: RunManager, runtime: FakeRuntime, outbox: Outbox
) -> None:
    key = RunKey("r1", 1)
    manager.assign(assignment("r1"), NOW)
    await settle()
    runtime.end(key)
    first_round = drain(outbox)
    manager.assign(assignment("r1"), NOW)
    await settle()
    assert runtime.submits == [key]
    assert drain(outbox) == [Accepted(key, NOW), *first_round[1:]]


async def test_hello_restates_free_slots_and_running_infrastructure(
    manager: RunManager, runtime: FakeRuntime, outbox: Outbox
) -> None:
    manager.assign(assignment("r1"), NOW)
    manager.assign(assignment("r2"), NOW)
    await settle()
    runtime.end(RunKey("r2", 1))
    assert CreditGranted(1) in outbox.pending()

    state = manager.hello()
    assert state.capacity == 1
    assert state.slots == 2  # all of them, free or not: what the agent was started with
    assert state.observed == (RunningInfra(RunKey("r1", 1), "fake/r1"),)
    # The freed slot is in capacity now, so its pending grant must not be sent as well.
    assert not any(isinstance(r, CreditGranted) for r in outbox.pending())
    assert any(isinstance(r, InfraObserved) for r in outbox.pending())


async def test_assign_beyond_capacity_still_runs(
    manager: RunManager, runtime: FakeRuntime, outbox: Outbox
) -> None:
    for run_id in ("r1", "r2", "r3"):
        manager.assign(assignment(run_id), NOW)
    await settle()
    assert len(runtime.submits) == 3
    assert manager.free_slots == 0
    drain(outbox)
    # Ending one of three on two slots frees nothing; ending the next one does.
    runtime.end(RunKey("r1", 1))
    assert not any(isinstance(r, CreditGranted) for r in drain(outbox))
    runtime.end(RunKey("r2", 1))
    assert CreditGranted(1) in drain(outbox)


async def test_intermediate_events_are_reported_without_ending_the_run(
    manager: RunManager, runtime: FakeRuntime, outbox: Outbox
) -> None:
    key = RunKey("r1", 1)
    manager.assign(assignment("r1"), NOW)
    await settle()
    drain(outbox)
    runtime.emit(key, InfraEventKind.PENDING, "Pending")
    runtime.emit(key, InfraEventKind.IMAGE_PULL_ERROR, "ErrImagePull")
    reports = drain(outbox)
    assert [r.event.reason for r in reports if isinstance(r, InfraObserved)] == [
        "Pending",
        "ErrImagePull",
    ]
    assert manager.held() == (key,)
    assert manager.free_slots == 1

    runtime.emit(key, InfraEventKind.IMAGE_PULL_ERROR, "ImagePullBackOff", gave_up=True)
    reports = drain(outbox)
    assert [type(r) for r in reports] == [InfraObserved, CreditGranted]
    final = reports[0]
    assert isinstance(final, InfraObserved) and final.event.gave_up and final.event.ends
    assert manager.held() == ()


async def test_an_event_before_the_submission_returns_keeps_submitted_first(
    manager: RunManager, runtime: FakeRuntime, outbox: Outbox
) -> None:
    key = RunKey("r1", 1)
    runtime.gate = asyncio.Event()
    manager.assign(assignment("r1"), NOW)
    await settle()
    runtime.running[key] = "fake/r1"
    runtime.emit(key, InfraEventKind.PENDING, "Pending")
    runtime.gate.set()
    await settle()
    reports = drain(outbox)
    assert [type(r) for r in reports] == [Accepted, Submitted, InfraObserved]


async def test_cancel_waits_for_a_submission_even_after_an_early_event(
    manager: RunManager, runtime: FakeRuntime, outbox: Outbox
) -> None:
    key = RunKey("r1", 1)
    runtime.gate = asyncio.Event()
    manager.assign(assignment("r1"), NOW)
    await settle()
    runtime.running[key] = "fake/r1"
    runtime.emit(key, InfraEventKind.PENDING, "Pending")
    manager.cancel(key, "")
    await settle()
    assert runtime.cancels == []  # the infrastructure may not exist yet
    runtime.gate.set()
    await settle()
    assert runtime.cancels == [key]
    assert drain(outbox)[-2:] == [Cancelled(key), CreditGranted(1)]


async def test_events_of_runs_not_held_are_not_reported(
    manager: RunManager, runtime: FakeRuntime, outbox: Outbox
) -> None:
    runtime.running[RunKey("stranger", 1)] = "fake/stranger"
    runtime.emit(RunKey("stranger", 1), InfraEventKind.FAILED, "Error")
    assert drain(outbox) == []


async def test_hello_adopts_infrastructure_it_did_not_submit(
    manager: RunManager, runtime: FakeRuntime, outbox: Outbox
) -> None:
    key = RunKey("adopted", 2)
    runtime.running[key] = "ns/flowyard-adopted-2"
    state = manager.hello()
    assert state.observed == (RunningInfra(key, "ns/flowyard-adopted-2"),)
    # Held: it takes a slot, and its end is reported like any other.
    assert state.capacity == 1
    assert manager.held() == (key,)
    runtime.end(key, exit_code=0)
    reports = drain(outbox)
    assert [type(r) for r in reports] == [InfraObserved, CreditGranted]
    assert manager.free_slots == 2


async def test_a_repeated_assign_of_an_adopted_run_is_not_submitted(
    manager: RunManager, runtime: FakeRuntime, outbox: Outbox
) -> None:
    key = RunKey("adopted", 1)
    runtime.running[key] = "ns/flowyard-adopted-1"
    manager.hello()
    manager.assign(assignment("adopted"), NOW)
    await settle()
    assert runtime.submits == []
    assert drain(outbox) == [
        Accepted(key, NOW),
        Submitted(key, "ns/flowyard-adopted-1"),
        CreditGranted(1),
    ]


async def test_cancel_of_an_adopted_run_tears_it_down(
    manager: RunManager, runtime: FakeRuntime, outbox: Outbox
) -> None:
    key = RunKey("orphan", 1)
    runtime.running[key] = "ns/flowyard-orphan-1"
    manager.hello()
    manager.cancel(key, "the run is finished or unknown")
    await settle()
    assert runtime.cancels == [key]
    assert drain(outbox) == [Cancelled(key), CreditGranted(1)]
    assert runtime.running == {}
