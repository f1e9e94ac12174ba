"""Child runs: the runs a flow starts from inside its run, through its engine.

Two kinds, both recorded with the parent's id and attempt:

- **Subflows** (a ``@flow`` called inside a flow) run in the parent's engine. Their run is
  stored RUNNING at once, never dispatched and not counted against concurrency limits; their
  log lines travel on the parent's stream and are stored with the parent's attempt
  (``log_batches.subflow_run``); the engine ends them (``end_subflow``) and, if it cannot, the
  parent's ending attempt does (``store.runs.end_subflows``).
- **Deployment runs** (``run_deployment``) are ordinary runs created through
  :meth:`Runs.create`; the one the parent waits on is cancelled with it (``cancel_with_parent``).

Each call names a key; the same key within the attempt returns the same child, so an engine
that retries a call after a lost answer never starts a second one.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.errors import FailedPrecondition, InvalidArgument, NotFound
from control_plane.models import Run
from control_plane.orchestration import clock, validation
from control_plane.orchestration.changes import Notifier, claimed, retrying
from control_plane.orchestration.runs import RunRequest, Runs
from control_plane.states import Actor, State, StateType
from control_plane.store import runs as repo
from control_plane.store.db import Database

MAX_CHILD_KEY_CHARS = 100
#: How deep runs started by flows may nest (a run, its child, the child's child...).
MAX_DEPTH = 20
MAX_MESSAGE_CHARS = 100_000
MAX_SUMMARY_CHARS = 2000
_SUBFLOW_ENDS = frozenset({StateType.COMPLETED, StateType.FAILED})


class ChildRuns:
    """Starting, ending and finding the child runs of an engine's attempt."""

    def __init__(self, db: Database, notifier: Notifier, runs: Runs) -> None:
        self._db = db
        self._notifier = notifier
        self._runs = runs

    async def start_deployment_run(
        self,
        engine_run: Run,
        within: str,
        key: str,
        deployment_name: str,
        parameters_json: str,
        cancel_with_parent: bool,
    ) -> Run:
        """Create a run of a deployment as a child of ``engine_run``'s current attempt, or of
        its subflow ``within``."""
        key = _key(key)
        _check_not_cancelling(engine_run)
        parent = await self._parent(engine_run, within)
        await self._check_depth(parent)
        run, _ = await self._runs.create(
            RunRequest(
                deployment_name=deployment_name,
                parameters_json=parameters_json,
                idempotency_key=f"child:{parent.id}:{parent.attempt}:{key}",
                parent_run_id=parent.id,
                parent_attempt=parent.attempt,
                cancel_with_parent=cancel_with_parent,
            )
        )
        if run.parent_run_id != parent.id:
            raise FailedPrecondition(
                f"key {key!r} names run {run.id}, which is not a child of run {parent.id}"
            )
        return run

    async def start_subflow(
        self, engine_run: Run, within: str, key: str, name: str, parameters_json: str
    ) -> Run:
        """Record a subflow run (RUNNING) of ``engine_run``'s current attempt, or of its
        subflow ``within``."""
        key = _key(key)
        _check_not_cancelling(engine_run)
        parent = await self._parent(engine_run, within)
        await self._check_depth(parent)
        name = validation.text(name, "subflow_name", 200, required=True)
        parameters = validation.json_object(parameters_json, "parameters_json")
        now = clock.now()
        values: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "deployment_id": parent.deployment_id,
            "pool_id": parent.pool_id,
            "flow_name": name,
            "parameters": parameters,
            "job_variables": {},
            "idempotency_key": f"subflow:{parent.id}:{parent.attempt}:{key}",
            "state_type": StateType.RUNNING.value,
            "state_name": "Running",
            "state_message": f"Subflow of run {parent.id}",
            "state_time": now,
            "version": 1,
            "last_transition_id": None,
            "attempt": 1,
            "scheduled_at": now,
            "created_at": now,
            "started_at": now,
            "agent_session_id": None,
            "agent_name": "",
            "infrastructure_id": parent.infrastructure_id,
            "result_summary": "",
            "queue_id": parent.queue_id,
            "max_retries": 0,
            "schedule_name": "",
            "parent_run_id": parent.id,
            "parent_attempt": parent.attempt,
            "subflow": True,
            "cancel_with_parent": True,
            "has_subflows": False,
        }
        async with self._db.write() as conn:
            if not parent.has_subflows:
                await repo.mark_has_subflows(conn, parent.id)
            run = await repo.insert_subflow(conn, values, self._db.dialect)
        if run.parent_run_id != parent.id:
            raise FailedPrecondition(
                f"key {key!r} names run {run.id}, which is not a subflow of run {parent.id}"
            )
        self._notifier.changed(run)
        return run

    async def end_subflow(
        self, engine_run: Run, subflow_id: str, state: StateType, message: str, summary: str
    ) -> Run:
        """End a subflow of ``engine_run``'s current attempt as COMPLETED or FAILED."""
        validation.run_id(subflow_id, "subflow_run_id")
        if state not in _SUBFLOW_ENDS:
            raise InvalidArgument(
                f"type: a subflow ends COMPLETED or FAILED, not {state.value} (a cancelled "
                "subflow ends with its parent)"
            )

        async def apply() -> Run:
            async with self._db.write() as conn:
                run = await repo.get_run(conn, subflow_id)
                if run is None or not run.subflow:
                    raise NotFound(f"run {subflow_id} is not a subflow run")
                if not await _runs_subflow(conn, engine_run, run):
                    raise FailedPrecondition(
                        f"subflow run {subflow_id} is not run by run {engine_run.id} attempt "
                        f"{engine_run.attempt}"
                    )
                if run.is_terminal:
                    if run.state_type is state:
                        return run  # a repeat of an accepted end
                    raise FailedPrecondition(
                        f"subflow run {subflow_id} is already {run.state_type.value}"
                    )
                columns = {"result_summary": summary[:MAX_SUMMARY_CHARS]}
                updated = await repo.compare_and_set(
                    conn,
                    run,
                    State(state, message=message[:MAX_MESSAGE_CHARS]),
                    actor=Actor.ENGINE,
                    now=clock.now(),
                    **columns,
                )
                return claimed(updated)

        run = await retrying(apply)
        self._notifier.changed(run)
        return run

    async def child(self, engine_run: Run, child_id: str) -> Run:
        """A run started by ``engine_run``'s flow (from the flow itself or from one of its
        subflows, in any attempt); NOT_FOUND for any other run."""
        validation.run_id(child_id, "child_run_id")
        async with self._db.read() as conn:
            run = await repo.get_run(conn, child_id)
            parent = (
                await repo.get_run(conn, run.parent_run_id) if run and run.parent_run_id else None
            )
            started_by = await repo.engine_run_of(conn, parent) if parent else None
        if run is None or started_by is None or started_by[0] != engine_run.id:
            raise NotFound(f"run {child_id} is not a child run of run {engine_run.id}")
        return run

    async def _parent(self, engine_run: Run, within: str) -> Run:
        """The parent of a new child: the engine's run, or its live subflow ``within``."""
        if not within:
            return engine_run
        validation.run_id(within, "within_run_id")
        async with self._db.read() as conn:
            run = await repo.get_run(conn, within)
            runs_it = await _runs_subflow(conn, engine_run, run)
        if run is None or not runs_it:
            raise NotFound(
                f"within_run_id: {within} is not a subflow run of run {engine_run.id} "
                f"attempt {engine_run.attempt}"
            )
        if run.is_terminal:
            raise FailedPrecondition(f"within_run_id: subflow run {within} has ended")
        return run

    async def _check_depth(self, parent: Run) -> None:
        """FAILED_PRECONDITION if a child of ``parent`` would nest deeper than MAX_DEPTH: a
        flow that starts its own deployment (or calls itself as a subflow) would otherwise
        start runs without end."""
        depth, ancestor = 1, parent.parent_run_id
        async with self._db.read() as conn:
            while ancestor is not None:
                depth += 1
                if depth >= MAX_DEPTH:
                    raise FailedPrecondition(
                        f"run {parent.id} is {depth} levels deep in runs started by flows "
                        f"(at most {MAX_DEPTH}): does a flow start its own deployment, or "
                        "call itself as a subflow?"
                    )
                run = await repo.get_run(conn, ancestor)
                ancestor = run.parent_run_id if run is not None else None

    async def check_subflows(self, engine_run: Run, ids: set[str]) -> None:
        """INVALID_ARGUMENT unless every id is a subflow run by ``engine_run``'s current
        attempt (at any depth)."""
        async with self._db.read() as conn:
            for subflow_id in sorted(ids):
                validation.run_id(subflow_id, "log_batch.lines.subflow_run")
                if not await _runs_subflow(conn, engine_run, await repo.get_run(conn, subflow_id)):
                    raise InvalidArgument(
                        f"log_batch.lines.subflow_run: {subflow_id} is not a subflow run of "
                        f"run {engine_run.id} attempt {engine_run.attempt}"
                    )


async def _runs_subflow(conn: AsyncConnection, engine_run: Run, run: Run | None) -> bool:
    """Whether ``run`` is a subflow run by ``engine_run``'s current attempt (at any depth)."""
    return (
        run is not None
        and run.subflow
        and await repo.engine_run_of(conn, run) == (engine_run.id, engine_run.attempt)
    )


def _key(key: str) -> str:
    return validation.text(key, "key", MAX_CHILD_KEY_CHARS, required=True)


def _check_not_cancelling(parent: Run) -> None:
    # Its waited-on children were cancelled with it: one started now would be left behind.
    if parent.state_type is StateType.CANCELLING:
        raise FailedPrecondition(
            f"run {parent.id} is being cancelled: it starts no more child runs"
        )
