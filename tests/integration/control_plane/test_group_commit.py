"""Creations that arrive together share a transaction, and each caller still gets its own
answer: its own run, the run its idempotency key already names, or its own error. Units of
work on runs share transactions the same way, in the order of their runs, each seeing what
the units before it wrote; a transaction's history rows go in together at its end."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.models import Run
from control_plane.orchestration import clock
from control_plane.states import State, StateType
from control_plane.store import runs as runs_repo
from control_plane.store.db import Database, GroupCommit
from flowyard.v1 import control_plane_pb2 as pb
from tests.waiting import eventually

from .conftest import Plane

BURST = 120


def keyed(index: int) -> bool:
    return index % 3 == 0


def invalid(index: int) -> bool:
    # Not keyed: a key already taken answers with its run, whatever the parameters.
    return index % 10 == 1 and not keyed(index)


async def test_a_burst_of_creates_answers_each_caller_with_its_own_run(ready: Plane) -> None:
    async def create(index: int) -> pb.CreateRunResponse | grpc.StatusCode:
        # Every third call shares one of five keys; some have a parameter of the wrong type.
        name = str(index) if invalid(index) else f'"n{index}"'
        request = pb.CreateRunRequest(
            deployment_name="hello",
            parameters_json=f'{{"name": {name}}}',
            idempotency_key=f"key-{index % 5}" if keyed(index) else "",
        )
        try:
            response: pb.CreateRunResponse = await ready.control.CreateRun(request)
            return response
        except grpc.aio.AioRpcError as error:
            return error.code()

    answers = await asyncio.gather(*(create(i) for i in range(BURST)))
    refused = [i for i, a in enumerate(answers) if isinstance(a, grpc.StatusCode)]
    assert refused == [i for i in range(BURST) if invalid(i)]
    assert {answers[i] for i in refused} == {grpc.StatusCode.INVALID_ARGUMENT}
    by_key: dict[str, set[str]] = {}
    created = Counter[str]()
    plain = set()
    for index, answer in enumerate(answers):
        if isinstance(answer, grpc.StatusCode):
            continue
        if keyed(index):
            by_key.setdefault(f"key-{index % 5}", set()).add(answer.run.id)
            created[f"key-{index % 5}"] += answer.created
        else:
            assert answer.created
            assert answer.run.parameters_json.replace(" ", "") == f'{{"name":"n{index}"}}'
            plain.add(answer.run.id)
    # One run per key, created by exactly one of its callers.
    assert all(len(ids) == 1 for ids in by_key.values()), by_key
    assert created == Counter({key: 1 for key in by_key})
    stored = len(plain) + len(by_key)
    assert ready.count_rows("flow_runs") == stored
    assert ready.count_rows("run_states") == stored


async def test_an_item_that_cannot_be_stored_fails_only_its_own_caller(tmp_path: Path) -> None:
    db = await Database.open(f"sqlite:///{tmp_path / 'group.db'}")
    async with db.write() as conn:
        await conn.execute(text("CREATE TABLE items (n INTEGER PRIMARY KEY)"))

    async def store(conn: AsyncConnection, items: Sequence[int]) -> list[int]:
        for item in items:
            await conn.execute(text("INSERT INTO items VALUES (:n)"), {"n": item})
            if item == 7:
                raise ValueError("seven cannot be stored")
        return list(items)

    group = GroupCommit(db, store)
    try:
        outcomes = await asyncio.gather(
            *(group.submit(i) for i in range(20)), return_exceptions=True
        )
        # Admission control weighs what waits in a group: nothing once all are answered.
        assert db.in_flight == 0
        async with db.read() as conn:
            stored = sorted((await conn.execute(text("SELECT n FROM items"))).scalars())
    finally:
        await db.close()
    assert isinstance(outcomes[7], ValueError)
    assert [o for o in outcomes if isinstance(o, Exception)] == [outcomes[7]]
    expected = [i for i in range(20) if i != 7]
    assert [o for o in outcomes if not isinstance(o, Exception)] == expected
    # Seven's row went with its transaction; every other caller's row is stored, once.
    assert stored == expected


async def test_a_burst_for_a_deployment_that_is_not_there_is_refused_by_each_call(
    ready: Plane,
) -> None:
    async def create() -> grpc.aio.AioRpcError:
        request = pb.CreateRunRequest(deployment_name="nope", parameters_json='{"name": "x"}')
        try:
            await ready.control.CreateRun(request)
        except grpc.aio.AioRpcError as error:
            return error
        raise AssertionError("a run of a deployment that does not exist was created")

    errors = await asyncio.gather(*(create() for _ in range(50)))
    assert {(e.code(), e.details()) for e in errors} == {
        (grpc.StatusCode.NOT_FOUND, "deployment 'nope' not found")
    }
    assert ready.count_rows("flow_runs") == 0


async def test_an_item_refused_by_its_outcome_does_not_undo_the_others(tmp_path: Path) -> None:
    db = await Database.open(f"sqlite:///{tmp_path / 'group.db'}")
    async with db.write() as conn:
        await conn.execute(text("CREATE TABLE items (n INTEGER PRIMARY KEY)"))

    async def store(conn: AsyncConnection, items: Sequence[int]) -> list[int | Exception]:
        outcomes: list[int | Exception] = []
        for item in items:
            if item % 4 == 0:
                outcomes.append(PermissionError(f"{item} is refused"))
                continue
            await conn.execute(text("INSERT INTO items VALUES (:n)"), {"n": item})
            outcomes.append(item)
        return outcomes

    group = GroupCommit(db, store)
    try:
        outcomes = await asyncio.gather(
            *(group.submit(i) for i in range(12)), return_exceptions=True
        )
        async with db.read() as conn:
            stored = sorted((await conn.execute(text("SELECT n FROM items"))).scalars())
    finally:
        await db.close()
    assert [str(o) for o in outcomes if isinstance(o, PermissionError)] == [
        "0 is refused",
        "4 is refused",
        "8 is refused",
    ]
    assert (
        stored
        == [o for o in outcomes if not isinstance(o, Exception)]
        == [i for i in range(12) if i % 4]
    )


async def test_what_follows_a_commit_runs_at_once_even_for_callers_that_left(
    tmp_path: Path,
) -> None:
    """``committed`` sees each committed transaction's items and outcomes before any caller
    is answered (and before any other task runs), including items whose caller has gone, and
    never items whose transaction rolled back."""
    db = await Database.open(f"sqlite:///{tmp_path / 'group.db'}")
    async with db.write() as conn:
        await conn.execute(text("CREATE TABLE items (n INTEGER PRIMARY KEY)"))
    seen: list[tuple[int, int | Exception]] = []
    answered: list[int] = []

    async def store(conn: AsyncConnection, items: Sequence[int]) -> list[int | Exception]:
        for item in items:
            await conn.execute(text("INSERT INTO items VALUES (:n)"), {"n": item})
            if item == 7:
                raise ValueError("seven cannot be stored")
        return [ValueError("odd") if item % 2 else item for item in items]

    def committed(items: Sequence[int], outcomes: Sequence[int | Exception]) -> None:
        # No caller has its answer yet, nor has anything else run since the commit.
        assert not set(items) & set(answered)
        seen.extend(zip(items, outcomes, strict=True))

    async def submit(item: int) -> None:
        with contextlib.suppress(ValueError):  # odd items, and seven
            await group.submit(item)
        answered.append(item)

    group = GroupCommit(db, store, committed=committed)
    try:
        callers = [asyncio.ensure_future(submit(i)) for i in range(10)]
        await asyncio.sleep(0)  # every caller has submitted its item
        callers[4].cancel()  # its item is stored all the same
        await asyncio.gather(*callers, return_exceptions=True)
        await eventually(lambda: db.in_flight == 0, what="every item stored")
    finally:
        await db.close()
    assert sorted(item for item, _ in seen) == [i for i in range(10) if i != 7]
    assert all(isinstance(outcome, ValueError) == bool(item % 2) for item, outcome in seen)


async def test_units_that_share_a_transaction_run_in_the_order_of_their_runs(
    tmp_path: Path,
) -> None:
    # As every transaction that locks several runs does, so that on PostgreSQL two never
    # wait for each other; the units of one run keep the order they came in.
    db = await Database.open(f"sqlite:///{tmp_path / 'units.db'}")
    order: list[str] = []

    def unit(name: str) -> Callable[[AsyncConnection], Awaitable[str]]:
        async def work(conn: AsyncConnection) -> str:
            await conn.execute(text("SELECT 1"))
            order.append(name)
            return name

        return work

    submitted = [
        ("run-c", "c1"),
        ("run-a", "a1"),
        ("run-c", "c2"),
        ("run-b", "b1"),
        ("run-a", "a2"),
    ]
    try:
        # Submitted together: one transaction.
        outcomes = await asyncio.gather(*(db.unit(run, unit(name)) for run, name in submitted))
    finally:
        await db.close()
    assert outcomes == [name for _, name in submitted]  # each caller gets its own answer
    assert order == ["a1", "a2", "b1", "c1", "c2"]


async def test_a_unit_writes_on_the_run_as_an_earlier_unit_of_its_transaction_left_it(
    ready: Plane,
) -> None:
    # Both remember the run from before either; the second is not refused for the first's
    # change (its compare-and-set names the version the first wrote).
    run_id = (await ready.run()).id
    async with ready.app.db.read() as conn:
        run = await runs_repo.get_run(conn, run_id)
    assert run is not None

    async def first(conn: AsyncConnection) -> Run | None:
        return await runs_repo.set_columns(conn, runs_repo.as_written(conn, run), agent_name="a")

    async def second(conn: AsyncConnection) -> Run | None:
        return await runs_repo.set_columns(
            conn, runs_repo.as_written(conn, run), result_summary="b"
        )

    one, two = await asyncio.gather(
        ready.app.db.unit(run_id, first), ready.app.db.unit(run_id, second)
    )
    assert one is not None and two is not None
    assert two.version == run.version + 2
    async with ready.app.db.read() as conn:
        stored = await runs_repo.get_run(conn, run_id)
    assert stored is not None
    assert (stored.version, stored.agent_name, stored.result_summary) == (run.version + 2, "a", "b")


async def test_history_a_transaction_adds_goes_in_at_its_end_and_is_read_in_it_before(
    ready: Plane,
) -> None:
    run_id = (await ready.run()).id
    added = [State(StateType.SCHEDULED, "Late", f"note {n}") for n in range(3)]
    async with ready.app.db.write() as conn:
        for state in added[:2]:
            await runs_repo.record_history(conn, run_id, 1, state, clock.now())
        seen = [record.message for record in await runs_repo.history(conn, run_id)]
        await runs_repo.record_history(conn, run_id, 1, added[2], clock.now())
    assert seen[-2:] == ["note 0", "note 1"]
    async with ready.app.db.read() as conn:
        stored = [record.message for record in await runs_repo.history(conn, run_id)]
    assert stored[-3:] == ["note 0", "note 1", "note 2"]

    # A transaction that fails adds none.
    with contextlib.suppress(RuntimeError):
        async with ready.app.db.write() as conn:
            await runs_repo.record_history(conn, run_id, 1, added[0], clock.now())
            raise RuntimeError("the work failed")
    async with ready.app.db.read() as conn:
        assert len(await runs_repo.history(conn, run_id)) == len(stored)


async def test_a_unit_writes_on_the_run_as_this_process_last_committed_it(ready: Plane) -> None:
    # The run it remembers is out of date: a transaction of this process changed it since.
    run_id = (await ready.run()).id
    async with ready.app.db.read() as conn:
        run = await runs_repo.get_run(conn, run_id)
    assert run is not None
    async with ready.app.db.write() as conn:
        assert await runs_repo.set_columns(conn, run, agent_name="a") is not None

    async def later(conn: AsyncConnection) -> Run | None:
        return await runs_repo.set_columns(
            conn, runs_repo.as_written(conn, run), result_summary="b"
        )

    written = await ready.app.db.unit(run_id, later)
    assert written is not None
    assert (written.version, written.agent_name, written.result_summary) == (
        run.version + 2,
        "a",
        "b",
    )
